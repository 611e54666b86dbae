"""Scores of text embeddings against a target: an image (CLIP's S) or the N-versus-A text target.

Every score here is linear in the *normalised* text embedding, so a target is one direction per
item and ``score(x, direction) = normalize(x) · direction``:

- image target: ``direction = exp(logit_scale) * i / |i|``, so the score is CLIP's
  ``S(t, i) = logit_scale.exp() * cos(t, i)`` ("logit" units; exp(logit_scale) = 100 for OpenAI CLIP).
- text target (no images): ``direction = e_N / |e_N| - e_A / |e_A|``, so the score is
  ``cos(x, e_N) - cos(x, e_A)`` and S(N) - S(A) = 2 (1 - cos(e_N, e_A)) > 0 whenever N and A embed
  differently. Tracing and ablation measure "how much of the N-versus-A gap does this component
  carry" with it. It has no notion of a correct answer, so **accuracy and segments are undefined
  in text mode**: :func:`accuracy` and :func:`segments` raise :class:`TextTargetError` and
  :func:`summarize` returns None for them with a note saying why.

Pairwise: ``d = S(caption, image) - S(foil, image)``; correct when d > 0; acc_r = share with d > 0;
segments (Quantmeyer et al. 2024; docs/data.md, "Scores"): incorrect d < -1, ambiguous -1 <= d < 1, correct d >= 1.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor
from interp.errors import ClipInterpError, NonFiniteError

from interp.data.segment_labels import SEGMENT_LABELS, TARGET_KINDS  # noqa: F401 - re-exported

SEGMENT_LOWER = -1.0
SEGMENT_UPPER = 1.0
TEXT_MODE_NOTE = (
    "accuracy and segments are undefined for the text target (no image decides which sentence is "
    "right); only scores, d and effects (e.g. CTE) are reported"
)


class TextTargetError(ClipInterpError, ValueError):
    """Asked for accuracy or segments with the text target, where they are undefined."""


class ScoreInputError(ClipInterpError, ValueError):
    """Embeddings and target directions that cannot be scored together (sizes, zero or NaN rows)."""


def _check_rows(x: Tensor, what: str) -> None:
    """Refuse NaN/inf and all-zero rows: their direction (and so every score) is undefined."""
    if not bool(torch.isfinite(x).all()):
        rows = (~torch.isfinite(x)).flatten(0, -2).any(-1).nonzero().flatten().tolist() if x.ndim > 1 else [0]
        raise NonFiniteError(f"{what} hold NaN or infinite values (rows {rows[:5]}): check the weights and inputs that produced them")
    zero = (x == 0).all(-1)
    if bool(zero.any()):
        rows = zero.flatten().nonzero().flatten().tolist()
        raise ScoreInputError(f"{what}: {len(rows)} rows are all zeros (e.g. rows {rows[:5]}); a zero vector has no "
                              "direction to score against: recompute them")


def _check_kind(target: str) -> None:
    if target not in TARGET_KINDS:
        raise ScoreInputError(f"target must be one of {TARGET_KINDS}, got {target!r}")
    if target == "text":
        raise TextTargetError(TEXT_MODE_NOTE)


def normalize(x: Float[Tensor, "... d"]) -> Float[Tensor, "... d"]:
    """``x / |x|`` over the last axis (no epsilon: a zero vector gives NaN, never a silent 0)."""
    return x / torch.linalg.vector_norm(x, dim=-1, keepdim=True)


def score(text_embeddings: Float[Tensor, "*emb d"], direction: Float[Tensor, "*dir d_dir"]) -> Float[Tensor, "..."]:
    """``normalize(text_embeddings) · direction``; leading axes broadcast (e.g. embeddings
    ``[item, layer, pos, d]`` with ``direction[:, None, None, :]``). ``d_dir`` must equal ``d``: checked
    below with an error that says what to do."""
    if text_embeddings.shape[-1] != direction.shape[-1]:
        raise ScoreInputError(
            f"text embeddings have size {text_embeddings.shape[-1]} but the target direction has "
            f"{direction.shape[-1]}: use the same model's text and image embeddings"
        )
    return (normalize(text_embeddings) * direction).sum(-1)


def image_target_directions(
    image_embeddings: Float[Tensor, "n d"], logit_scale: float | Tensor
) -> Float[Tensor, "n d"]:
    """``exp(logit_scale) * i / |i|`` per image; ``logit_scale`` is log-space (``model.logit_scale``)."""
    _check_rows(image_embeddings, "image embeddings")
    scale = torch.as_tensor(logit_scale, dtype=image_embeddings.dtype, device=image_embeddings.device)
    if scale.numel() != 1:
        raise ScoreInputError(f"logit_scale must be a scalar, got shape {tuple(scale.shape)}")
    return scale.reshape(()).exp() * normalize(image_embeddings)


def text_target_directions(
    e_negated: Float[Tensor, "n d"], e_affirmative: Float[Tensor, "n d"]
) -> Float[Tensor, "n d"]:
    """``e_N / |e_N| - e_A / |e_A|`` per item: score(x) = cos(x, e_N) - cos(x, e_A)."""
    if e_negated.shape != e_affirmative.shape:
        raise ScoreInputError(f"e_negated {tuple(e_negated.shape)} and e_affirmative {tuple(e_affirmative.shape)} differ")
    _check_rows(e_negated, "negated-sentence embeddings")
    _check_rows(e_affirmative, "affirmative-sentence embeddings")
    return normalize(e_negated) - normalize(e_affirmative)


def clip_score(
    text_embeddings: Float[Tensor, "n d"], image_embeddings: Float[Tensor, "n d"], logit_scale: float | Tensor
) -> Float[Tensor, " n"]:
    """CLIP's ``S(t, i) = exp(logit_scale) * cos(t, i)`` row by row."""
    return score(text_embeddings, image_target_directions(image_embeddings, logit_scale))


def pairwise_d(score_caption: Float[Tensor, "..."], score_foil: Float[Tensor, "..."]) -> Float[Tensor, "..."]:
    """``d = S(caption) - S(foil)``: positive when the model prefers the caption."""
    return score_caption - score_foil


def _as_numpy(d: Tensor | np.ndarray | Sequence[float]) -> np.ndarray:
    array = d.detach().cpu().double().numpy() if isinstance(d, Tensor) else np.asarray(d, dtype=np.float64)
    if array.ndim != 1 or array.size == 0:
        raise ScoreInputError(f"d must be a non-empty 1-D array of per-item values, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise NonFiniteError("d holds NaN or infinite values: check the weights and embeddings that produced it")
    return array


def accuracy(d: Tensor | np.ndarray | Sequence[float], target: str = "image") -> float:
    """Pairwise accuracy acc_r: share of items with d > 0 (image target only)."""
    _check_kind(target)
    return float((_as_numpy(d) > 0).mean())


def segments(
    d: Tensor | np.ndarray | Sequence[float],
    lower: float = SEGMENT_LOWER,
    upper: float = SEGMENT_UPPER,
    target: str = "image",
) -> np.ndarray:
    """Per-item labels: "incorrect" (d < lower), "ambiguous" (lower <= d < upper), "correct" (d >= upper)."""
    _check_kind(target)
    if not lower <= upper:
        raise ScoreInputError(f"segment thresholds need lower <= upper, got lower={lower}, upper={upper}")
    values = _as_numpy(d)
    labels = np.full(values.shape, "ambiguous", dtype=object)
    labels[values < lower] = "incorrect"
    labels[values >= upper] = "correct"
    return labels


def cte(
    patched: Float[Tensor, "..."], clean_affirmative: Float[Tensor, "..."], clean_negated: Float[Tensor, "..."]
) -> Float[Tensor, "..."]:
    """Causal tracing effect ``(S*(A) - S(A)) / (S(N) - S(A))`` (not clipped; broadcasts)."""
    return (patched - clean_affirmative) / (clean_negated - clean_affirmative)


def summarize(
    d: Tensor | np.ndarray | Sequence[float],
    target: str = "image",
    groups: Sequence[str] | None = None,
    lower: float = SEGMENT_LOWER,
    upper: float = SEGMENT_UPPER,
) -> dict[str, Any]:
    """Accuracy and segment counts, overall and per group (e.g. negation side), as plain data.

    For the text target, ``accuracy`` and ``segments`` are None and ``note`` says why.
    """
    values = _as_numpy(d)
    if target not in TARGET_KINDS:
        raise ScoreInputError(f"target must be one of {TARGET_KINDS}, got {target!r}")
    out: dict[str, Any] = {"target": target, "n": int(values.size), "mean_d": float(values.mean())}
    if target == "text":
        return {**out, "accuracy": None, "segments": None, "by_group": None, "note": TEXT_MODE_NOTE}
    labels = segments(values, lower, upper)
    out["accuracy"] = accuracy(values)
    out["segments"] = {name: int((labels == name).sum()) for name in SEGMENT_LABELS}
    out["thresholds"] = {"lower": lower, "upper": upper}
    out["by_group"] = None
    if groups is not None:
        groups = np.asarray(groups, dtype=object)
        if groups.shape != values.shape:
            raise ScoreInputError(f"groups has {groups.size} entries for {values.size} values of d")
        out["by_group"] = {
            str(g): {
                "n": int((groups == g).sum()),
                "accuracy": accuracy(values[groups == g]),
                "segments": {name: int(((labels == name) & (groups == g)).sum()) for name in SEGMENT_LABELS},
            }
            for g in sorted(set(groups.tolist()))
        }
    return out
