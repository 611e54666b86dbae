"""The quantity every image-side analysis explains: the score gap d between caption and foil.

For an image embedding v and text embeddings t_C (caption) and t_F (foil),
``d = S(C) - S(F) = exp(logit_scale) * <v / |v|, u>`` with ``u = t_C/|t_C| - t_F/|t_F|``.
d is linear in ``v / |v|``, which is why a decomposition of v scores exactly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor


def caption_minus_foil(caption: Float[Tensor, "b d"], foil: Float[Tensor, "b d"]) -> Float[Tensor, "b d"]:
    """``u = normalize(t_C) - normalize(t_F)`` row by row."""
    if caption.shape != foil.shape:
        raise ValueError(f"caption {tuple(caption.shape)} and foil {tuple(foil.shape)} embeddings differ in shape")
    return F.normalize(caption, dim=-1) - F.normalize(foil, dim=-1)


def score_gap(
    image_embeddings: Float[Tensor, "b d"], directions: Float[Tensor, "b d"], logit_scale: float | Tensor
) -> Float[Tensor, " b"]:
    """``d = exp(logit_scale) * <normalize(v), u>`` for each row."""
    scale = torch.as_tensor(logit_scale, dtype=image_embeddings.dtype, device=image_embeddings.device).exp()
    return scale * (F.normalize(image_embeddings, dim=-1) * directions.to(image_embeddings.dtype)).sum(-1)
