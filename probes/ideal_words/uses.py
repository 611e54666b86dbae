"""Uses of ideal words: compositional zero-shot classification and debiasing (Trager et al. Sec. 5).

Image embeddings and labels come from the user (an ``.npy``/``.npz``/``.pt`` file, or computed by the CLI
from an image folder); labels are one value per factor per image. Everything is scored by cosine
similarity (image embeddings are L2-normalised here; text vectors come from
:class:`probes.ideal_words.analysis.ConceptEmbeddings`).
"""

from __future__ import annotations

from interp.errors import ClipInterpError

import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from probes.concepts import ConceptSet
from probes.embeddings import unit
from probes.ideal_words.decomposition import decompose
from probes.ideal_words.analysis import ConceptEmbeddings

log = logging.getLogger(__name__)

IMAGE_COLUMN = "image"


class LabelError(ClipInterpError, ValueError):
    """Image labels do not match the images or the concept set."""


def load_image_embeddings(path: str | Path) -> tuple[Tensor, list[str] | None]:
    """Read ``[n, d]`` image embeddings (and image ids when the file has them).

    ``.npy``: a plain array (rows in label-file order). ``.npz``: arrays ``embeddings`` and optional
    ``ids``. ``.pt``: a tensor, or a dict with ``embeddings`` and optional ``ids``.
    """
    path = Path(path)
    if not path.is_file():
        raise LabelError(f"image-embedding file {path} not found: pass an existing .npy/.npz/.pt file")
    try:
        emb, ids = _read_embedding_file(path)
    except LabelError:
        raise
    except Exception as err:  # noqa: BLE001 - numpy/torch raise many types for a damaged or foreign file
        raise LabelError(f"image-embedding file {path} cannot be read as {path.suffix} ({type(err).__name__}: "
                         f"{str(err)[:120]}): write it with numpy.save/numpy.savez or torch.save") from err
    try:
        emb = torch.as_tensor(np.asarray(emb, dtype=np.float64), dtype=torch.float64)
    except (TypeError, ValueError) as err:
        raise LabelError(f"image embeddings in {path} are not numbers ({err}): save a float array [n_images, d]") from err
    if emb.ndim != 2:
        raise LabelError(f"image embeddings in {path} must be [n_images, d], got shape {tuple(emb.shape)}")
    if not bool(torch.isfinite(emb).all()):
        raise LabelError(f"image embeddings in {path} hold NaN or infinite values: recompute them")
    if bool((emb == 0).all(1).any()):
        raise LabelError(f"image embeddings in {path} have all-zero rows (no direction to score against): recompute them")
    return emb, ids


def _read_embedding_file(path: Path) -> tuple[Any, list[str] | None]:
    ids = None
    if path.suffix == ".npy":
        emb = np.load(path, allow_pickle=False)
    elif path.suffix == ".npz":
        data = np.load(path, allow_pickle=False)
        if "embeddings" not in data:
            raise LabelError(f"{path} has no 'embeddings' array (found {list(data.keys())})")
        emb = data["embeddings"]
        try:
            ids = [str(x) for x in data["ids"]] if "ids" in data else None
        except ValueError as exc:
            raise LabelError(f"{path}: 'ids' must be a string array, e.g. np.array(ids, dtype=str)") from exc
    elif path.suffix == ".pt":
        obj = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(obj, dict):
            if "embeddings" not in obj:
                raise LabelError(f"{path} is a dict without an 'embeddings' entry (keys {list(obj)})")
            emb, ids = obj["embeddings"], obj.get("ids")
            ids = [str(x) for x in ids] if ids is not None else None
        else:
            emb = obj
    else:
        raise LabelError(f"image-embedding file {path} must end in .npy, .npz or .pt")
    return emb, ids


def read_labels(path: str | Path, cs: ConceptSet, image_ids: Sequence[str] | None = None,
                n_images: int | None = None, factors: Sequence[str] | None = None) -> pd.DataFrame:
    """Read a label CSV (column ``image`` plus one column per factor) and check it against the images.

    Rows are reordered to ``image_ids`` when given; otherwise the row count must equal ``n_images``.
    Every label value must be one of the factor's values.
    """
    path = Path(path)
    if not path.is_file():
        raise LabelError(f"label file {path} not found: pass a CSV with columns image,{','.join(cs.factor_names)}")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as err:
        raise LabelError(f"label file {path} is empty or not a CSV ({str(err)[:100]}): pass a UTF-8 CSV with "
                         f"columns image,{','.join(cs.factor_names)} and one row per image") from err
    if df.empty:
        raise LabelError(f"label file {path} has a header but no rows: add one row per image")
    factors = list(factors or cs.factor_names)
    missing = [c for c in [IMAGE_COLUMN, *factors] if c not in df.columns]
    if missing:
        raise LabelError(f"label file {path} lacks column(s) {missing}; it has {list(df.columns)}")
    if df[IMAGE_COLUMN].duplicated().any():
        dup = df.loc[df[IMAGE_COLUMN].duplicated(), IMAGE_COLUMN].tolist()[:5]
        raise LabelError(f"label file {path} lists image(s) {dup} more than once")
    for f in factors:
        values = set(cs.factor(f).values)
        bad = sorted(set(df[f]) - values)
        if bad:
            raise LabelError(
                f"label file {path}, column {f!r}: value(s) {bad[:5]} are not in concept set "
                f"{cs.name!r} ({sorted(values)}); fix the labels or the concept set"
            )
    if image_ids is not None:
        ids = list(image_ids)
        absent = [i for i in ids if i not in set(df[IMAGE_COLUMN])]
        extra = sorted(set(df[IMAGE_COLUMN]) - set(ids))
        if absent or extra:
            raise LabelError(
                f"label file {path} does not match the images: {len(absent)} image(s) without a label "
                f"(e.g. {absent[:3]}), {len(extra)} label(s) without an image (e.g. {extra[:3]})"
            )
        df = df.set_index(IMAGE_COLUMN).loc[ids].reset_index()
    elif n_images is not None and len(df) != n_images:
        raise LabelError(
            f"label file {path} has {len(df)} rows but there are {n_images} image embeddings; they "
            "must match row for row (or store ids in an .npz 'ids' array)"
        )
    return df.reset_index(drop=True)


def _label_indices(df: pd.DataFrame, cs: ConceptSet) -> np.ndarray:
    return np.stack([df[f.name].map({v: i for i, v in enumerate(f.values)}).to_numpy() for f in cs.factors], 1)


def _grid_argmax(scores: Tensor, shape: tuple[int, ...]) -> np.ndarray:
    flat = scores.reshape(scores.shape[0], -1).argmax(-1).numpy()
    return np.stack(np.unravel_index(flat, shape), 1)


def _sum_factor_scores(per_factor: list[Tensor], shape: tuple[int, ...]) -> Tensor:
    total = torch.zeros(per_factor[0].shape[0], *shape, dtype=per_factor[0].dtype)
    for i, s in enumerate(per_factor):
        view = [s.shape[0]] + [1] * len(shape)
        view[i + 1] = shape[i]
        total = total + s.reshape(view)
    return total


def zero_shot_predictions(images: Float[Tensor, "n d"], emb: ConceptEmbeddings) -> dict[str, np.ndarray]:
    """Predicted value indices ``[n, k]`` per method: ``ideal_words`` (score each factor with its ideal
    words, u_0 dropped; combination = argmax of the summed scores, which ranks like <x, u~_z>),
    ``pair_prompts`` (argmax over the full combination prompts; factors read off the winner) and
    ``real_words`` (single-word prompts, scored like ideal words; only when the set has them)."""
    cs = emb.concept_set
    if images.shape[1] != emb.final.shape[-1]:
        raise LabelError(
            f"image embeddings have dimension {images.shape[1]} but the text embeddings have "
            f"{emb.final.shape[-1]}: use image embeddings from the same model as the text encoder"
        )
    x = unit(images.to(torch.float64))
    dec = decompose(emb.final)
    out: dict[str, np.ndarray] = {}
    iw = [x @ w.T for w in dec.ideal_words]
    out["ideal_words"] = _grid_argmax(_sum_factor_scores(iw, cs.shape), cs.shape)
    out["pair_prompts"] = _grid_argmax(x @ emb.final.reshape(-1, emb.final.shape[-1]).T, cs.shape)
    if emb.single_words is not None:
        rw = [x @ w.T for w in emb.single_words]
        out["real_words"] = _grid_argmax(_sum_factor_scores(rw, cs.shape), cs.shape)
    return out


def zero_shot_tables(images: Tensor, labels: pd.DataFrame, emb: ConceptEmbeddings,
                     **tags: Any) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(accuracy table: method x target in {pair, factor...}; per-image prediction table)."""
    cs = emb.concept_set
    if len(labels) != images.shape[0]:
        raise LabelError(f"{len(labels)} label rows for {images.shape[0]} images")
    truth = _label_indices(labels, cs)
    preds = zero_shot_predictions(images, emb)
    acc_rows, per_image = [], labels[[IMAGE_COLUMN, *cs.factor_names]].copy()
    for method, p in preds.items():
        correct = p == truth
        acc_rows.append({**tags, "method": method, "target": "pair", "accuracy": float(correct.all(1).mean()),
                         "n_images": len(truth)})
        for i, f in enumerate(cs.factors):
            acc_rows.append({**tags, "method": method, "target": f.name,
                             "accuracy": float(correct[:, i].mean()), "n_images": len(truth)})
            per_image[f"{method}:{f.name}"] = [f.values[j] for j in p[:, i]]
    for k, v in tags.items():
        per_image.insert(0, k, v)
    return pd.DataFrame(acc_rows), per_image


def debiased_class_vectors(emb: ConceptEmbeddings, class_factor: str) -> Float[Tensor, "n_class d"]:
    """Class vectors averaged over every other (spurious) factor: ``u_0 + u_class`` with uniform weights,
    i.e. the mean of the class prompt over all spurious prompts (Trager et al. debiasing)."""
    cs = emb.concept_set
    i = cs.factor_names.index(cs.factor(class_factor).name)
    dec = decompose(emb.final)
    return dec.u0 + dec.ideal_words[i]


def debias_tables(emb: ConceptEmbeddings, class_factor: str, images: Tensor | None = None,
                  labels: pd.DataFrame | None = None, **tags: Any) -> pd.DataFrame:
    """Debiasing report: per class the cosine between the plain class prompt (single-word template) and
    the debiased vector; with images and labels, overall and worst-group accuracy of both, groups being
    the label combinations present."""
    cs = emb.concept_set
    i = cs.factor_names.index(class_factor)
    debiased = debiased_class_vectors(emb, class_factor)
    plain = emb.single_words[i] if emb.single_words is not None else None
    rows: list[dict[str, Any]] = []
    if plain is not None:
        cos = torch.nn.functional.cosine_similarity(plain, debiased, dim=-1)
        rows += [{**tags, "kind": "cos_plain_vs_debiased", "class": v, "value": float(c)}
                 for v, c in zip(cs.factor(class_factor).values, cos)]
    if images is not None and labels is not None:
        x = unit(images.to(torch.float64))
        truth = _label_indices(labels, cs)
        groups = pd.Series([tuple(t) for t in truth])
        for name, vecs in (("debiased", debiased), ("plain", plain)):
            if vecs is None:
                continue
            pred = (x @ vecs.T).argmax(-1).numpy()
            ok = pd.Series(pred == truth[:, i])
            rows.append({**tags, "kind": f"accuracy_{name}", "class": "all", "value": float(ok.mean())})
            rows.append({**tags, "kind": f"worst_group_{name}", "class": "all",
                         "value": float(ok.groupby(groups).mean().min())})
    return pd.DataFrame(rows)
