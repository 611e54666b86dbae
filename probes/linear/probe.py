"""Controlled linear probes: per-layer (and per token role) logistic regression with grouped
cross-validation, a control task, selectivity, the exported probe direction, and a causal check.

- Grouped CV: every sample carries a group (a minimal pair's item id); folds split groups, so the
  two sentences of a pair never straddle train and test.
- Control task (Hewitt & Liang 2019): the same probe on control labels with the same class balance
  (labels permuted across samples, or one random label per surface *type* when types are given);
  selectivity = accuracy - control accuracy.
- Direction: the logistic-regression normal mapped back to residual coordinates (the probe works on
  standardised features), unit length.
- Causal check: move the residual at the probed positions and layer along the direction by the
  class-mean gap through a hook (``model.run_with_hooks``): remove it from class-1 samples, add it to
  class-0 samples, and read the change of a score (e.g. the text target of :mod:`interp.data.scoring`), with
  a random direction of the same size as the control.

Feature collection and the causal edit work on any hooked encoder; the CLI (``python -m
probes.linear.probe``) is in :mod:`probes.cli.linear`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from interp.errors import ClipInterpError
from interp.runs.threads import single_blas_thread

log = logging.getLogger(__name__)

from probes.linear.defaults import DEFAULT_C, DEFAULT_FOLDS  # noqa: E402,F401 - re-exported
MAX_ITER = 2000
# Features whose spread is below this share of the largest spread are treated as constant (ignored).
# Without it, a dimension that is constant up to rounding (e.g. after a final LayerNorm, std ~1e-32)
# is blown up by standardisation and captures the whole exported direction.
CONSTANT_FEATURE_RTOL = 1e-8


class ProbeError(ClipInterpError, ValueError):
    """Probe inputs are inconsistent (shapes, labels, groups, positions)."""


def _sklearn():
    try:
        from sklearn.linear_model import LogisticRegression
        from sklearn.preprocessing import StandardScaler
    except ImportError as exc:  # pragma: no cover - sklearn is installed with the probes extra
        raise ProbeError("linear probes need scikit-learn: pip install -c constraints.txt 'clip-interp[probes]'") from exc
    return LogisticRegression, StandardScaler


def _fit_scaler(X: np.ndarray):
    """A fitted StandardScaler whose near-constant features (see CONSTANT_FEATURE_RTOL) map to 0."""
    _, StandardScaler = _sklearn()
    scaler = StandardScaler().fit(X)
    tiny = scaler.scale_ < CONSTANT_FEATURE_RTOL * scaler.scale_.max()
    scaler.scale_ = np.where(tiny, np.inf, scaler.scale_)
    return scaler


# ---------------------------------------------------------------------------------------------- folds and labels
def grouped_folds(groups: Sequence[Any], n_folds: int = DEFAULT_FOLDS, seed: int = 0) -> list[np.ndarray]:
    """Test-index arrays of ``n_folds`` folds that split *groups* (shuffled, seeded), never samples."""
    groups = np.asarray(groups)
    uniq = np.unique(groups)
    if len(uniq) < n_folds or n_folds < 2:
        raise ProbeError(f"{len(uniq)} groups cannot make {n_folds} folds: use 2 <= --folds <= number of items")
    order = np.random.default_rng(seed).permutation(len(uniq))
    fold_of_group = {g: i % n_folds for i, g in enumerate(uniq[order])}
    fold = np.array([fold_of_group[g] for g in groups])
    return [np.flatnonzero(fold == k) for k in range(n_folds)]


def control_labels(labels: Sequence[int], seed: int = 0, types: Sequence[Any] | None = None) -> np.ndarray:
    """Control-task labels with the class balance of ``labels``.

    Without ``types``: a seeded permutation of the labels. With ``types`` (e.g. the token at the probed
    position): one random label per distinct type, drawn with P(1) = the share of 1s, so a probe can
    only succeed by memorising types (Hewitt & Liang).
    """
    y = np.asarray(labels).astype(int)
    rng = np.random.default_rng(seed)
    if types is None:
        return rng.permutation(y)
    types = np.asarray(types)
    if types.shape != y.shape:
        raise ProbeError(f"control types have {types.size} entries for {y.size} labels")
    uniq = np.unique(types)
    draw = (rng.random(len(uniq)) < y.mean()).astype(int)
    lookup = dict(zip(uniq.tolist(), draw.tolist()))
    return np.array([lookup[t] for t in types.tolist()])


def _check(features: Tensor, labels: np.ndarray, groups: np.ndarray) -> None:
    if features.ndim != 3:
        raise ProbeError(f"features must be [layer, n, d], got shape {tuple(features.shape)}")
    n = features.shape[1]
    if labels.shape != (n,) or groups.shape != (n,):
        raise ProbeError(f"{n} samples but {labels.size} labels and {groups.size} groups")
    if set(np.unique(labels).tolist()) != {0, 1}:
        raise ProbeError(f"labels must be binary 0/1 with both classes present, got {np.unique(labels).tolist()}")


# ---------------------------------------------------------------------------------------------- probing
def cv_accuracy(features: Float[Tensor, "layer n d"], labels: Sequence[int], folds: Sequence[np.ndarray],
                C: float = DEFAULT_C, progress: bool = False) -> np.ndarray:
    """Held-out accuracy ``[layer, fold]`` of a standardised L2 logistic regression trained per fold."""
    LogisticRegression, _ = _sklearn()
    y = np.asarray(labels).astype(int)
    X = features.detach().to(torch.float64).cpu().numpy()
    out = np.zeros((X.shape[0], len(folds)))
    all_idx = np.arange(X.shape[1])
    for layer in tqdm(range(X.shape[0]), desc="probe layers", disable=not progress, leave=False):
        for k, test in enumerate(folds):
            train = np.setdiff1d(all_idx, test)
            if len(np.unique(y[train])) < 2:
                raise ProbeError(f"fold {k} has one class only in its training part; use fewer folds")
            with single_blas_thread():  # small matrices: more BLAS threads only spin (25x the CPU, same fit)
                scaler = _fit_scaler(X[layer, train])
                clf = LogisticRegression(C=C, max_iter=MAX_ITER).fit(scaler.transform(X[layer, train]), y[train])
                out[layer, k] = float((clf.predict(scaler.transform(X[layer, test])) == y[test]).mean())
    return out


def probe_layers(features: Float[Tensor, "layer n d"], labels: Sequence[int], groups: Sequence[Any], *,
                 n_folds: int = DEFAULT_FOLDS, C: float = DEFAULT_C, seed: int = 0, n_controls: int = 1,
                 control_types: Sequence[Any] | None = None, layers: Sequence[int] | None = None,
                 progress: bool = False) -> list[dict[str, Any]]:
    """Accuracy, control accuracy and selectivity per layer (one dict per layer).

    ``n_controls`` control label draws (seeds ``seed .. seed + n_controls - 1``) are averaged.
    """
    y = np.asarray(labels).astype(int)
    g = np.asarray(groups)
    _check(features, y, g)
    folds = grouped_folds(g, n_folds, seed)
    acc = cv_accuracy(features, y, folds, C, progress)
    ctrl = np.stack([cv_accuracy(features, control_labels(y, seed + s, control_types), folds, C)
                     for s in range(n_controls)])  # [control, layer, fold]
    layer_ids = list(layers) if layers is not None else list(range(features.shape[0]))
    rows = []
    for i, layer in enumerate(layer_ids):
        a, c = acc[i].mean(), ctrl[:, i].mean()
        rows.append({"layer": layer, "accuracy": float(a), "accuracy_sd_folds": float(acc[i].std()),
                     "control_accuracy": float(c), "selectivity": float(a - c),
                     "n": int(y.size), "n_groups": int(len(np.unique(g))), "n_folds": n_folds,
                     "control": "type" if control_types is not None else "permuted", "n_controls": n_controls})
    return rows


@dataclass
class ProbeDirection:
    """A probe direction in residual coordinates at one layer (and role).

    Attributes:
        direction: ``[d_model]`` unit vector; positive projections mean class 1.
        mean_pos, mean_neg: mean projection of class-1 / class-0 features on ``direction``.
        train_accuracy: accuracy of the all-data fit (the CV accuracy is in the probe table).
    """

    direction: Float[Tensor, " d_model"]
    mean_pos: float
    mean_neg: float
    train_accuracy: float
    layer: int | None = None
    role: str | None = None

    @property
    def gap(self) -> float:
        """Class-mean gap along the direction (class 1 minus class 0)."""
        return self.mean_pos - self.mean_neg


def fit_direction(features: Float[Tensor, "n d"], labels: Sequence[int], C: float = DEFAULT_C,
                  layer: int | None = None, role: str | None = None) -> ProbeDirection:
    """Fit the probe on all samples and return its normal in residual coordinates (``coef / scale``)."""
    LogisticRegression, _ = _sklearn()
    y = np.asarray(labels).astype(int)
    X = features.detach().to(torch.float64).cpu().numpy()
    with single_blas_thread():  # small matrices: more BLAS threads only spin
        scaler = _fit_scaler(X)
        clf = LogisticRegression(C=C, max_iter=MAX_ITER).fit(scaler.transform(X), y)
        train_predictions = clf.predict(scaler.transform(X))
    w = clf.coef_[0] / scaler.scale_
    norm = np.linalg.norm(w)
    if norm == 0:  # nothing separates the classes (e.g. identical features): a zero direction, no edit
        log.warning("probe at layer %s, role %s has a zero weight vector: the classes are inseparable", layer, role)
    w = torch.from_numpy(w / norm if norm > 0 else w)
    proj = features.detach().to(torch.float64).cpu() @ w
    return ProbeDirection(
        direction=w, mean_pos=float(proj[y == 1].mean()), mean_neg=float(proj[y == 0].mean()),
        train_accuracy=float((train_predictions == y).mean()), layer=layer, role=role,
    )


# ---------------------------------------------------------------------------------------------- features
def role_weights(positions: Sequence[Sequence[int]], width: int) -> Float[Tensor, "n pos"]:
    """``[n, width]`` weights averaging each sample's listed positions (rows with none are all zero)."""
    w = torch.zeros(len(positions), width, dtype=torch.float64)
    for i, pos in enumerate(positions):
        if len(pos):
            if max(pos) >= width:
                raise ProbeError(f"sample {i}: position {max(pos)} is outside its {width} tokens")
            w[i, list(pos)] = 1.0 / len(pos)
    return w


@torch.no_grad()
def collect_role_features(model: Any, texts: Sequence[str], positions: Mapping[str, Sequence[Sequence[int]]], *,
                          layers: Sequence[int] | None = None, batch_size: int = 64,
                          progress: bool = False) -> dict[str, Float[Tensor, "layer n d_model"]]:
    """Residual features per role: the mean of each text's role positions at every layer, one forward
    per batch. A role named ``"pooled"`` with no positions given reads the encoder's own pooling.

    Args:
        positions: ``{role: one list of token positions per text}``.
        layers: residual states to read (default every state 0..n_layers).
    """
    from probes.embeddings import pooling_mask

    texts = list(texts)
    layer_ids = list(range(model.cfg.n_layers + 1)) if layers is None else [int(x) for x in layers]
    for role, pos in positions.items():
        if pos is not None and len(pos) != len(texts):
            raise ProbeError(f"role {role!r} has positions for {len(pos)} texts, there are {len(texts)}")
    names = [model.resid_hook_name(layer) for layer in layer_ids]
    chunks: dict[str, list[Tensor]] = {r: [] for r in positions}
    for start in tqdm(range(0, len(texts), batch_size), desc="features", disable=not progress, leave=False):
        batch = model.to_token_batch(texts[start:start + batch_size]).to(model.device)
        width = batch.tokens.shape[1]
        weights = {r: (pooling_mask(model, batch) if p is None else role_weights(p[start:start + batch_size], width))
                   for r, p in positions.items()}
        stack = torch.stack(list(weights.values()))  # [role, b, pos]
        store: dict[str, Tensor] = {}

        def grab(resid: Tensor, hook: Any) -> Tensor:
            store[hook.name] = torch.einsum("rbp,bpd->rbd", stack.to(resid.dtype), resid).detach().cpu()
            return resid

        model.run_with_hooks(batch, fwd_hooks=[(n, grab) for n in dict.fromkeys(names)])
        per_layer = torch.stack([store[n] for n in names])  # [layer, role, b, d]
        for j, r in enumerate(positions):
            chunks[r].append(per_layer[:, j])
    return {r: torch.cat(c, dim=1) for r, c in chunks.items()}


# ---------------------------------------------------------------------------------------------- causal check
@torch.no_grad()
def steer(model: Any, texts: Sequence[str], layer: int, direction: Float[Tensor, " d_model"],
          shift: Float[Tensor, " n"], positions: Sequence[Sequence[int]] | None, *,
          batch_size: int = 64) -> Float[Tensor, "n d_embed"]:
    """Final embeddings with ``shift[i] * direction`` added to the residual state ``layer`` at sample i's
    positions (``None``: the pooled positions, or every real token for mean pooling), through a hook.

    Adding the same vector to every averaged position moves the role feature (their mean) by exactly
    ``shift[i] * direction``.
    """
    from probes.embeddings import pooling_mask

    texts = list(texts)
    if shift.shape != (len(texts),):
        raise ProbeError(f"shift has shape {tuple(shift.shape)} for {len(texts)} texts")
    name = model.resid_hook_name(layer)
    outs = []
    for start in range(0, len(texts), batch_size):
        batch = model.to_token_batch(texts[start:start + batch_size]).to(model.device)
        width = batch.tokens.shape[1]
        if positions is None:
            mask = pooling_mask(model, batch) > 0
        else:
            mask = role_weights(positions[start:start + batch_size], width) > 0
        s = shift[start:start + batch_size]

        def edit(resid: Tensor, hook: Any, mask=mask, s=s) -> Tensor:
            delta = s.to(resid)[:, None, None] * direction.to(resid)[None, None, :]
            return resid + mask.to(resid.device)[..., None].to(resid.dtype) * delta

        outs.append(model.run_with_hooks(batch, fwd_hooks=[(name, edit)]).detach().cpu())
    return torch.cat(outs)


def causal_check(model: Any, texts: Sequence[str], labels: Sequence[int], probe: ProbeDirection,
                 score_fn: Callable[[Tensor], Tensor], positions: Sequence[Sequence[int]] | None = None, *,
                 seed: int = 0, batch_size: int = 64) -> list[dict[str, Any]]:
    """Remove the direction from class-1 samples and add it to class-0 samples (shift = class-mean gap)
    at ``probe.layer``; also the same shift along a random unit direction as a control.

    Args:
        score_fn: maps final embeddings ``[n, d_embed]`` (in ``texts`` order) to one score per sample.

    Returns:
        one row per (sample, intervention) with ``score_clean``, ``score_edited``, ``change``,
        ``sign_flipped``.
    """
    if probe.layer is None:
        raise ProbeError("the probe direction has no layer: fit it with fit_direction(..., layer=L)")
    y = np.asarray(labels).astype(int)
    sign = torch.from_numpy(np.where(y == 1, -1.0, 1.0))  # remove from class 1, add to class 0
    shift = sign * probe.gap
    g = torch.Generator().manual_seed(seed)
    rand = torch.randn(probe.direction.shape, generator=g, dtype=torch.float64)
    rand = rand / rand.norm()
    from probes.embeddings import encode_texts

    clean = score_fn(encode_texts(model, texts, batch_size=batch_size).final).detach().cpu().double()
    rows = []
    for kind, direction in (("probe", probe.direction), ("random", rand)):
        edited = score_fn(steer(model, texts, probe.layer, direction, shift, positions,
                                batch_size=batch_size)).detach().cpu().double()
        for i in range(len(texts)):
            rows.append({"sample": i, "label": int(y[i]), "direction": kind,
                         "intervention": "remove" if y[i] == 1 else "add", "layer": probe.layer,
                         "role": probe.role, "shift": float(shift[i]), "score_clean": float(clean[i]),
                         "score_edited": float(edited[i]), "change": float(edited[i] - clean[i]),
                         "sign_flipped": bool(np.sign(float(edited[i])) != np.sign(float(clean[i])))})
    return rows


def probe_one_layer(payload: tuple[str, int, Tensor, np.ndarray, np.ndarray, Sequence[Any] | None], *,
                    n_folds: int = DEFAULT_FOLDS, C: float = DEFAULT_C, seed: int = 0,
                    n_controls: int = 1) -> tuple[dict[str, Any], ProbeDirection]:
    """One (role, layer) fit, a task of ``probes.linear`` that can run on a cluster worker.

    ``payload`` = (role, layer, features ``[1, n, d]`` of that layer, labels, groups, control types or
    None). Returns the :func:`probe_layers` row (with ``role``) and the all-data :func:`fit_direction`.
    Layers are independent in :func:`probe_layers` (same folds and control labels), so fitting them one
    by one gives the rows of one call over all layers.
    """
    role, layer, features, labels, groups, types = payload
    (row,) = probe_layers(features, labels, groups, n_folds=n_folds, C=C, seed=seed, n_controls=n_controls,
                          control_types=types, layers=[layer])
    return {"role": role, **row}, fit_direction(features[0], labels, C=C, layer=layer, role=role)
