"""The image-text bridge: the top text heads and the top image heads of the same decision, in one table.

Both columns are total effects on the same quantity, the item's score gap d = S(caption) - S(foil)
with the other tower held fixed: a text head's effect is the change in d when it is zero-ablated in
both sentences (text side, :func:`interp.heads.ablation.ablation_scores`); an image head's is the
change in d when it is ablated in the image (:func:`interp.vision.ablation.ablation_effects`).
"""

from __future__ import annotations

from typing import Sequence

import pandas as pd
import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from interp.heads.ablation import all_heads, ablation_scores


@torch.no_grad()
def text_head_effects(
    text_model,
    captions: Sequence[str],
    foils: Sequence[str],
    image_embeddings: Float[Tensor, "b d_embed"],
    logit_scale: float | Tensor,
    *,
    progress: bool = False,
) -> Float[Tensor, "b layer head"]:
    """Change in d when each text head's z is zeroed in the caption and in the foil (image fixed)."""
    n = len(captions)
    texts = [*captions, *foils]
    pad_to = "longest" if text_model.cfg.trims_to_longest else "context"
    batch = text_model.tokenizer(texts, pad_to=pad_to)
    scale = torch.as_tensor(logit_scale, dtype=torch.float32).exp()
    target = scale * F.normalize(image_embeddings.float(), dim=-1)
    directions = torch.cat([target, target]).to(text_model.device, text_model.dtype)
    components = all_heads(text_model)
    scores = ablation_scores(text_model, batch, directions, components, "zero", progress=progress)
    delta = scores.ablated - scores.clean[None]  # [component, sentence]
    effects = delta[:, :n] - delta[:, n:]  # [component, item]
    return effects.T.reshape(n, text_model.cfg.n_layers, text_model.cfg.n_heads).cpu()


def top_heads(effects: Float[Tensor, "b layer head"], k: int) -> list[tuple[int, int, float]]:
    """The ``k`` heads with the largest mean |effect| over items: (layer, head, mean effect)."""
    mean = effects.double().mean(0)
    order = mean.abs().flatten().argsort(descending=True)[:k]
    n_heads = effects.shape[2]
    return [(int(i) // n_heads, int(i) % n_heads, float(mean.flatten()[i])) for i in order]


def bridge_table(
    text_effects: Float[Tensor, "b text_layer text_head"], image_effects: Float[Tensor, "b image_layer image_head"],
    k: int = 5,
) -> pd.DataFrame:
    """One row per top head of either tower: tower, rank, layer, head, mean and mean |effect| on d.
    The towers' layer and head counts differ in general (ViT-B-32: 8 text heads, 12 image heads)."""
    rows = []
    for tower, effects in (("text", text_effects), ("image", image_effects)):
        for rank, (layer, head, mean) in enumerate(top_heads(effects, k), start=1):
            rows.append({"tower": tower, "rank": rank, "layer": layer, "head": head, "mean_effect_on_d": mean,
                         "mean_abs_effect_on_d": float(effects[:, layer, head].abs().double().mean())})
    return pd.DataFrame(rows)
