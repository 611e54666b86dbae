"""Direct effects: the pooled sentence embedding split into per-head, per-MLP and bias parts.

In a pre-LN encoder (CLIP) the final residual is a sum: token + position embeddings, then per
block each head's output (``attn.hook_result``), the attention bias ``b_O`` and the MLP output
(``hook_mlp_out``). With ln_final's scale frozen at its cached value (``ln_final.hook_scale``,
TransformerLens's convention) ln_final is linear: ``LN(x) = (x - mean(x)) / scale * w + b``; so are
pooling and the projection ``W_proj``. Pushing each part through them gives per-component vectors
in the embedding space that, with the ln_final bias ``b`` (and the projection bias, if any), sum to
the embedding exactly. With ``normalize_output`` the embedding norm is frozen the same way.

A component's direct effect on a score ``S = normalize(e) . direction`` is
``contribution . direction / |e|`` (norm frozen): the effects sum to S, and for a pair to
``d = S(caption) - S(foil)`` (:func:`direct_effects_on_d`). Post-LN encoders (BERT, MiniLM) are
refused: their residual is renormalised after every block and is not a sum of component outputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from interp.errors import ClipInterpError
from interp.models.tokenization import TokenBatch


class AttributionError(ClipInterpError, ValueError):
    """A model or input the direct-effect decomposition does not apply to."""


@dataclass
class DirectEffects:
    """Per-component parts of the embedding.

    Attributes:
        contributions: ``[batch, component, d_embed]``; summed over components they give ``embedding``.
        embedding: ``[batch, d_embed]`` the model's output.
        norm: ``[batch]`` ``|embedding|`` (frozen when scoring).
        labels, kinds, layers, heads: per component. kinds are ``embed``, ``head``,
            ``attn_bias``, ``mlp``, ``ln_bias``, ``proj_bias``; layer/head are -1 where they do
            not apply (0-indexed otherwise).
    """

    contributions: Float[Tensor, "batch component d_embed"]
    embedding: Float[Tensor, "batch d_embed"]
    norm: Float[Tensor, " batch"]
    labels: list[str]
    kinds: list[str]
    layers: list[int]
    heads: list[int]

    def scores(self, directions: Float[Tensor, "batch d_embed"]) -> Float[Tensor, "batch component"]:
        """Each component's part of ``S = normalize(embedding) . direction`` (they sum to S)."""
        return torch.einsum("bcd,bd->bc", self.contributions, directions.to(self.contributions)) / self.norm[:, None]

    def head_index(self) -> list[int]:
        """Component indices of the heads, layer-major."""
        return [i for i, k in enumerate(self.kinds) if k == "head"]


def _pool_weights(model, batch: TokenBatch, width: int) -> Float[Tensor, "batch pos"]:
    """Weights w with pooled = sum_p w[p] x[p], following ``model.cfg.pool``."""
    b = len(batch)
    weights = torch.zeros(b, width, device=model.device, dtype=model.dtype)
    rows = torch.arange(b, device=model.device)
    tokens = batch.tokens.to(model.device)
    pool = model.cfg.pool
    if pool == "argmax":
        weights[rows, tokens.argmax(-1)] = 1
    elif pool == "eos":
        weights[rows, (tokens == model.cfg.eos_token_id).int().argmax(-1)] = 1
    elif pool == "first":
        weights[:, 0] = 1
    elif pool == "last":
        weights[:, -1] = 1
    else:
        keep = batch.attention_mask.to(model.device).to(model.dtype)
        weights = keep / keep.sum(1, keepdim=True).clamp(min=1e-9)
    return weights


@torch.no_grad()
def direct_effects(model, tokens) -> DirectEffects:
    """Decompose the embeddings of ``tokens`` (texts or a TokenBatch) into component parts."""
    cfg = model.cfg
    if cfg.norm != "pre" or cfg.has_embed_ln:
        raise AttributionError(
            f"{cfg.model_name} is a post-LN encoder (norm={cfg.norm!r}): its residual is renormalised after "
            "every block, so it is not a sum of head and MLP outputs; use ablation (interp.heads.ablation) instead"
        )
    batch = tokens if isinstance(tokens, TokenBatch) else model.to_token_batch(tokens)
    batch = batch.to(model.device)
    names = {"blocks.0.hook_resid_pre", "ln_final.hook_scale"}
    names |= {f"blocks.{l}.attn.hook_result" for l in range(cfg.n_layers)}
    names |= {f"blocks.{l}.hook_mlp_out" for l in range(cfg.n_layers)}
    before = cfg.use_attn_result
    model.set_use_attn_result(True)
    try:
        embedding, cache = model.run_with_cache(batch, names_filter=lambda n: n in names)
    finally:
        model.set_use_attn_result(before)
    width = batch.tokens.shape[1]
    pool = _pool_weights(model, batch, width)  # [b, pos]

    parts, labels, kinds, layers, heads = [], [], [], [], []

    def add(vector: Tensor, label: str, kind: str, layer: int = -1, head: int = -1) -> None:
        parts.append(vector)
        labels.append(label)
        kinds.append(kind)
        layers.append(layer)
        heads.append(head)

    embed = cache["blocks.0.hook_resid_pre"]  # token + position embeddings
    ones = torch.ones(len(batch), width, 1, device=model.device, dtype=model.dtype)
    if model.ln_final is not None:
        scale = cache["ln_final.hook_scale"]  # [b, pos, 1]
    else:
        scale = ones

    def through_ln_and_pool(x: Float[Tensor, "b pos ... d_model"]) -> Tensor:
        """Centre, divide by the frozen scale, multiply by w, pool: [b, ..., d_model]."""
        extra = x.ndim - 3
        s = scale.view(scale.shape[0], scale.shape[1], *([1] * extra), 1)
        y = x - x.mean(-1, keepdim=True) if model.ln_final is not None else x
        y = y / s
        if model.ln_final is not None:
            y = y * model.ln_final.w
        w = pool.view(pool.shape[0], pool.shape[1], *([1] * extra), 1)
        return (y * w).sum(1)

    add(through_ln_and_pool(embed), "embed", "embed")
    for l in range(cfg.n_layers):
        result = through_ln_and_pool(cache[f"blocks.{l}.attn.hook_result"])  # [b, head, d_model]
        for h in range(cfg.n_heads):
            add(result[:, h], f"L{l}H{h}", "head", l, h)
        b_O = model.blocks[l].attn.b_O.expand(len(batch), width, -1)
        add(through_ln_and_pool(b_O), f"L{l} attn bias", "attn_bias", l)
        add(through_ln_and_pool(cache[f"blocks.{l}.hook_mlp_out"]), f"L{l} mlp", "mlp", l)
    if model.ln_final is not None:
        add(model.ln_final.b.expand(len(batch), -1) * pool.sum(1, keepdim=True), "ln_final bias", "ln_bias")
    pooled = torch.stack(parts, dim=1)  # [b, component, d_model]
    projected = pooled @ model.W_proj if model.W_proj is not None else pooled
    if model.b_proj is not None:
        projected = torch.cat([projected, model.b_proj.expand(len(batch), 1, -1)], dim=1)
        labels.append("proj bias")
        kinds.append("proj_bias")
        layers.append(-1)
        heads.append(-1)
    if cfg.normalize_output:
        projected = projected / projected.sum(1).norm(dim=-1)[:, None, None]
    return DirectEffects(
        contributions=projected.float().cpu(),
        embedding=embedding.float().cpu(),
        norm=embedding.float().norm(dim=-1).cpu(),
        labels=labels,
        kinds=kinds,
        layers=layers,
        heads=heads,
    )


def direct_effects_on_d(
    caption: DirectEffects,
    foil: DirectEffects,
    directions_caption: Float[Tensor, "item d_embed"],
    directions_foil: Float[Tensor, "item d_embed"],
) -> Float[Tensor, "item component"]:
    """Each component's direct effect on ``d = S(caption) - S(foil)``; rows sum to d."""
    if caption.labels != foil.labels:
        raise AttributionError("caption and foil decompositions come from different models")
    return caption.scores(directions_caption) - foil.scores(directions_foil)
