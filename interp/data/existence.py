"""The VALSE existence front end every negation command shares (trace, ablate, probes.linear).

One path from files to analysable items, with the same checks everywhere:

1. :func:`load_aligned`: the valid minimal pairs (:mod:`interp.data.negation`), token-aligned with the
   model's tokenizer; unreadable data and "nothing aligned" are clear errors.
2. :func:`check_target`: which target the flags ask for (images, precomputed image embeddings, or the
   text target), refused before anything slow runs when they contradict each other.
3. :func:`image_embeddings`: one row per item from an image folder (the model's image tower, cached)
   or a precomputed file, checked against the text embedding size; :func:`image_directions` /
   :func:`text_directions` turn them into per-item score directions.
4. :func:`clean_d` and :func:`select_segment`: ``d = S(caption) - S(foil)`` per item and the
   correct / ambiguous / incorrect segments (image target only: with the text target accuracy and
   segments are undefined).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from interp.data.negation import AlignedPair, ExistencePairs, Rejection, align_pairs, load_existence_pairs
from interp.data.scoring import (
    TEXT_MODE_NOTE,
    image_target_directions,
    pairwise_d,
    score,
    segments,
    text_target_directions,
)
from interp.errors import ClipInterpError

from interp.data.target_choice import IMAGE, TARGET_HELP, TEXT, check_target  # noqa: F401 - re-exported
_BATCH = 64  # sentences per forward pass when scoring (fixed: the same batches every run)


@dataclass
class ExistenceData:
    """The loaded file (counts, exclusions) and its pairs split into token-aligned and rejected."""

    loaded: ExistencePairs
    aligned: list[AlignedPair]
    rejected: list[Rejection]


def load_aligned(tokenizer: Any, valse_dir: str | os.PathLike | None = None, *, model_name: str = "the model",
                 min_items: int = 1) -> ExistenceData:
    """VALSE existence's valid minimal pairs, token-aligned with ``tokenizer``.

    Raises:
        ClipInterpError: the file cannot be read (pass ``--valse-dir``), or fewer than ``min_items``
            pairs align with this tokenizer.
    """
    try:
        loaded = load_existence_pairs(valid_only=True, data_dir=valse_dir)
    except (OSError, ValueError) as err:
        raise ClipInterpError(f"cannot load VALSE existence ({err}): pass --valse-dir DIR holding existence.json") from err
    if not loaded.pairs:
        where = f" in {valse_dir}" if valse_dir else ""
        example = loaded.exclusions[0].reason if loaded.exclusions else "none"
        raise ClipInterpError(f"VALSE existence{where} has no valid minimal pair ({len(loaded.exclusions)} items excluded, "
                              f"e.g. {example}): pass --valse-dir DIR holding VALSE's existence.json")
    aligned, rejected = align_pairs(loaded.pairs, tokenizer)
    if len(aligned) < min_items:
        first = f" (first reason: {rejected[0].reason})" if rejected else ""
        raise ClipInterpError(
            f"only {len(aligned)} of {len(loaded.pairs)} pairs could be token-aligned with {model_name}'s "
            f"tokenizer{first}; at least {min_items} are needed"
        )
    return ExistenceData(loaded, aligned, rejected)


def check_clip_like(model: Any, model_name: str) -> None:
    """Image targets need a CLIP text tower (shared image space, finite logit scale)."""
    if model.cfg.tokenizer != "clip-bpe" or not bool(torch.isfinite(model.logit_scale)):
        raise ClipInterpError(
            f"--model {model_name} is not a CLIP text tower (no image tower, no shared image space or logit "
            "scale), so it cannot be scored against images: use --target text with it, or a CLIP model"
        )


def image_embeddings(model: Any, files: Sequence[str], *, images: str | None = None,
                     image_embeddings: str | None = None, model_name: str, pretrained: Any = None,
                     device: str = "cpu", seed: int = 0, progress: bool = False,
                     preprocess: str | None = None) -> Float[Tensor, "item d_embed"]:
    """One image embedding per item, from a folder (the image tower, cached) or a precomputed file.

    ``preprocess`` names the image pipeline (``"hf"`` or ``"open_clip"``; None: the one the
    weights' source implies, :func:`interp.data.images.default_pipeline`).

    Returned on the text model's device and dtype; the size must equal the text embeddings'.
    """
    from interp.data.image_cache import embed_images, load_precomputed_embeddings
    from interp.data.images import ImageDataError, PreprocessConfig, default_pipeline

    check_clip_like(model, model_name)
    try:
        if image_embeddings:
            emb = load_precomputed_embeddings(image_embeddings, list(files))
        else:
            from interp.models.loading import create_open_clip_model, resolve_pretrained

            checkpoint = resolve_pretrained(model_name, pretrained)
            full = create_open_clip_model(model_name, checkpoint, device=device, seed=seed)
            config = PreprocessConfig.from_model(full, preprocess or default_pipeline(checkpoint))
            emb = embed_images(full, model_name, checkpoint, images, list(files), device=device, preprocess=config,
                               progress=progress)
    except ImageDataError as err:
        raise ClipInterpError(str(err)) from err
    if emb.shape[1] != model.cfg.d_embed:
        source = f"--image-embeddings {image_embeddings} has rows" if image_embeddings else f"image embeddings of --images {images} have"
        raise ClipInterpError(
            f"{source} of size {emb.shape[1]} but {model_name}'s text embeddings have {model.cfg.d_embed}: "
            "use image embeddings of the same CLIP model"
        )
    return emb.to(model.device, model.dtype)


def image_directions(model: Any, embeddings: Float[Tensor, "item d_embed"]) -> Float[Tensor, "item d_embed"]:
    """Per-item directions of CLIP's score ``S = exp(logit_scale) cos(text, image)``."""
    return image_target_directions(embeddings, model.logit_scale)


@torch.no_grad()
def text_directions(model: Any, aligned: Sequence[AlignedPair]) -> Float[Tensor, "item d_embed"]:
    """Per-item text-target directions ``normalize(e_N) - normalize(e_A)`` (fixed batches)."""
    out = []
    for start in range(0, len(aligned), _BATCH):
        part = aligned[start:start + _BATCH]
        out.append(text_target_directions(model([a.pair.negated for a in part]), model([a.pair.affirmative for a in part])))
    return torch.cat(out)


@torch.no_grad()
def clean_d(model: Any, aligned: Sequence[AlignedPair], directions: Float[Tensor, "item d_embed"]) -> np.ndarray:
    """``d = S(caption) - S(foil)`` per item, float64 ``[item]`` (fixed batches: deterministic)."""
    out = []
    for start in range(0, len(aligned), _BATCH):
        part = aligned[start:start + _BATCH]
        dirs = directions[start:start + _BATCH]
        s_caption = score(model([a.pair.caption for a in part]), dirs)
        s_foil = score(model([a.pair.foil for a in part]), dirs)
        out.append(pairwise_d(s_caption, s_foil).double().cpu())
    return torch.cat(out).numpy()


def select_segment(aligned: Sequence[AlignedPair], d: np.ndarray | None, segment: str | None
                   ) -> tuple[list[int], list[tuple[str, str]]]:
    """Indices of the items in ``segment`` (all when None/"all") and (item id, reason) of the others."""
    if not segment or segment == "all":
        return list(range(len(aligned))), []
    if d is None:
        raise ClipInterpError(f"--segment {segment} needs images: {TEXT_MODE_NOTE}")
    labels = segments(d)
    keep = [i for i, label in enumerate(labels) if label == segment]
    excluded = [(aligned[i].pair.item_id, f"segment {labels[i]} (d = {float(d[i]):.3f}), not {segment}")
                for i in range(len(aligned)) if labels[i] != segment]
    if not keep:
        raise ClipInterpError(f"no item falls in segment {segment!r} with this model and these images: "
                              "choose another --segment")
    return keep, excluded
