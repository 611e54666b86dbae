"""Paired per-layer embeddings from the image and text towers of one open_clip model.

    python -m analyses.extract --images DIR --captions captions.csv --model ViT-B-32 --pretrained openai --out OUT
    python -m analyses.alignment --x OUT/image.npz --y OUT/text.npz --out OUT/report

``captions.csv`` has a header with the columns ``image`` (file name under ``--images``) and ``caption``;
one row per pair, an image may have several captions (its rows form one alias group). Row i of
``image.npz`` is the image of caption i, so the two files are paired row by row (format:
:mod:`analyses.io`).

Image tower, per layer: the CLS token of the residual stream leaving each block
``model.visual.transformer.resblocks[i]``, read with forward hooks, plus the projected ``encode_image``
output. (The CLS token entering block 0 is the class embedding plus its position embedding, the same for
every image, so it is not a layer to compare.) Text tower: the hooked encoder built from the same model's
weights (:func:`interp.models.loading.hooked_from_open_clip`), the residual at the EOT (pooled) position for each
state 0..n_layers (:func:`probes.embeddings.encode_texts`), plus the projected embedding. Images are
preprocessed as open_clip does (:mod:`interp.data.images`); ``pixels=`` accepts pre-built image tensors instead.
"""

from __future__ import annotations

import csv
import io
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor, nn
from tqdm.auto import tqdm

from analyses.io import EmbeddingSet
from analyses.validation import AnalysisInputError

log = logging.getLogger(__name__)

from analyses.options import DEFAULT_EXTRACT_BATCH_SIZE as DEFAULT_BATCH_SIZE  # noqa: E402


def read_captions(path: str | os.PathLike) -> tuple[list[str], list[str]]:
    """(image file names, captions) from a CSV/TSV with ``image`` and ``caption`` header columns."""
    path = Path(path)
    if not path.is_file():
        raise AnalysisInputError(f"captions file {path} not found: pass --captions FILE.csv with image,caption columns.")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise AnalysisInputError(f"captions file {path} is not UTF-8 (byte {err.start}: {err.reason}): re-save it as "
                                 "UTF-8, e.g. iconv -f latin1 -t utf-8.") from err
    if not text.strip():
        raise AnalysisInputError(f"captions file {path} is empty: it needs a header 'image,caption' and one row per pair.")
    delimiter = "\t" if "\t" in text.splitlines()[0] else ","
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    if not reader.fieldnames or not {"image", "caption"} <= set(reader.fieldnames):
        raise AnalysisInputError(
            f"captions file {path} has columns {reader.fieldnames}: it needs a header with 'image' and 'caption'."
        )
    rows = [((r["image"] or "").strip(), (r["caption"] or "").strip()) for r in reader]
    bad = [i + 2 for i, (img, cap) in enumerate(rows) if not img or not cap]
    if bad:
        raise AnalysisInputError(f"captions file {path}: empty image or caption on line(s) {bad[:5]}: fill or drop them.")
    if len(rows) < 4:
        raise AnalysisInputError(f"captions file {path} has {len(rows)} pairs; the analyses need at least 4.")
    return [r[0] for r in rows], [r[1] for r in rows]


@torch.no_grad()
def image_tower_layers(
    model: nn.Module, pixels: Float[Tensor, "n 3 h w"], *, batch_size: int = DEFAULT_BATCH_SIZE, progress: bool = True
) -> tuple[Float[Tensor, "layer n width"], Float[Tensor, "n d_embed"]]:
    """CLS-token residual states after each block ``[n_blocks, n, width]`` and the projected embedding."""
    visual = model.visual
    blocks = visual.transformer.resblocks
    batch_first = getattr(visual.transformer, "batch_first", True)
    store: list[Tensor] = []

    def cls(t: Tensor) -> Tensor:
        return (t[:, 0] if batch_first else t[0]).detach().float().cpu()

    handles = [b.register_forward_hook(lambda _m, _a, out: store.append(cls(out))) for b in blocks]
    layers, finals = [], []
    param = next(model.parameters())
    try:
        for start in tqdm(range(0, pixels.shape[0], batch_size), desc="image tower", leave=False, disable=not progress):
            store.clear()
            finals.append(model.encode_image(pixels[start : start + batch_size].to(param.device, param.dtype)).float().cpu())
            if len(store) != len(blocks):
                raise RuntimeError(f"expected {len(blocks)} image-tower states per batch, hooks saw {len(store)}")
            layers.append(torch.stack(store))
    finally:
        for h in handles:
            h.remove()
    return torch.cat(layers, dim=1), torch.cat(finals)


def extract_pairs(
    model_name: str,
    pretrained: Any,
    image_files: Sequence[str],
    captions: Sequence[str],
    *,
    images_dir: str | os.PathLike | None = None,
    pixels: Float[Tensor, "n_unique 3 h w"] | None = None,
    seed: int = 0,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    batch_size: int = DEFAULT_BATCH_SIZE,
    clip: nn.Module | None = None,
    progress: bool = True,
) -> tuple[EmbeddingSet, EmbeddingSet]:
    """Image-side and text-side :class:`EmbeddingSet` for caption pairs (row i = pair i).

    Images are read from ``images_dir`` (each unique file once) unless ``pixels`` holds the preprocessed
    unique images in order of first appearance in ``image_files``. ``clip``: the open_clip model
    ``model_name``/``pretrained`` name, when the caller has built it already (else it is built here).
    """
    from interp.models.loading import create_open_clip_model, hooked_from_open_clip, resolve_pretrained, weights_fingerprint
    from probes.embeddings import encode_texts

    if len(image_files) != len(captions):
        raise AnalysisInputError(f"{len(image_files)} image names but {len(captions)} captions: pass one image per caption.")
    unique = list(dict.fromkeys(image_files))  # order of first appearance
    position = {name: i for i, name in enumerate(unique)}
    inverse = np.array([position[name] for name in image_files])
    if clip is None:
        clip = create_open_clip_model(model_name, pretrained, device=device, dtype=dtype, seed=seed)
    tag = resolve_pretrained(model_name, pretrained)
    if pixels is None:
        if images_dir is None:
            raise AnalysisInputError("pass images_dir (a folder holding the images) or pre-built pixels.")
        from interp.data.images import PreprocessConfig, check_image_files, load_image_batch

        paths = check_image_files(images_dir, unique)
        pixels = torch.cat([load_image_batch(paths[s : s + batch_size], PreprocessConfig.from_model(clip))
                            for s in range(0, len(paths), batch_size)])
    elif pixels.shape[0] != len(unique):
        raise AnalysisInputError(f"pixels has {pixels.shape[0]} images but the pairs name {len(unique)} unique images.")
    img_layers, img_final = image_tower_layers(clip, pixels, batch_size=batch_size, progress=progress)
    text_model = hooked_from_open_clip(clip, model_name, tag)
    feats = encode_texts(text_model, list(captions), layers=True, batch_size=batch_size, progress=progress)
    meta = {"model": model_name, "pretrained": tag, "seed": seed, "dtype": str(dtype).replace("torch.", ""), "weights_sha256": weights_fingerprint(clip),
            "n_pairs": len(captions), "n_images": len(unique)}
    keys = np.array([f"{i}:{f}" for i, f in enumerate(image_files)])
    x = EmbeddingSet(
        img_final[inverse].double().numpy(), [a[inverse].double().numpy() for a in img_layers],
        [f"block {i}" for i in range(img_layers.shape[0])], keys, np.asarray(image_files),
        {**meta, "tower": "image", "layer_readout": "CLS token"},
    )
    y = EmbeddingSet(
        feats.final.double().numpy(), [a.double().numpy() for a in feats.layers],
        [text_model.resid_hook_name(i) for i in range(feats.layers.shape[0])], keys, np.asarray(image_files),
        {**meta, "tower": "text", "layer_readout": "EOT (pooled) position"},
    )
    return x, y
