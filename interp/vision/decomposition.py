"""Direct-effect decomposition of the image embedding (Gandelsman, Goh & Steinhardt, ICLR 2024,
"Interpreting CLIP's Image Representation via Text-Based Decomposition").

The residual that is pooled is a sum: the embedding state (ln_pre output), every attention layer's
output (a sum over heads h and source positions j of ``A[h, i, j] * v_j W_O[h]``, plus its bias
``b_O``) and every MLP's output. ``ln_post`` is affine once its scale is frozen at the value it
computed on this image, so each part c contributes ``sum_i g_i * center(c_i) * w @ P`` with
``g_i = pooling weight of position i / ln_post scale at i``, and ``ln_post``'s bias contributes
``b @ P``. The parts sum to the image embedding (before normalisation); tests check <= 1e-5.

Rows: ``embed`` (the ln_pre output), ``heads`` [layer, head, source position], ``attn_bias``
[layer] (b_O in its own row), ``mlps`` [layer] (MLP biases included), ``ln_bias``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from interp.models.image_encoder import HookedImageEncoder


@dataclass
class ImageDecomposition:
    """The image embedding split into parts, each ``[..., d_embed]`` (batch first)."""

    embed: Float[Tensor, "b d_embed"]
    heads: Float[Tensor, "b layer head pos d_embed"]
    attn_bias: Float[Tensor, "b layer d_embed"]
    mlps: Float[Tensor, "b layer d_embed"]
    ln_bias: Float[Tensor, "b d_embed"]
    embedding: Float[Tensor, "b d_embed"]  # the model's own output, for checks

    def total(self) -> Float[Tensor, "b d_embed"]:
        """Sum of all parts: equals ``embedding`` up to rounding."""
        return (self.embed + self.heads.sum((1, 2, 3)) + self.attn_bias.sum(1) + self.mlps.sum(1) + self.ln_bias)

    def scores(self, directions: Float[Tensor, "b d_embed"], logit_scale: float | Tensor) -> "DecompositionScores":
        """Each part's share of the score gap d: ``exp(logit_scale) * <part, u> / |v|``.

        The shares sum to d = S(C) - S(F) exactly (up to rounding), because d is linear in v / |v|.
        """
        scale = torch.as_tensor(logit_scale, dtype=self.embedding.dtype).exp()
        factor = scale / self.embedding.norm(dim=-1)  # [b]
        u = directions.to(self.embedding.dtype)

        def along(part: Tensor) -> Tensor:
            shape = (-1,) + (1,) * (part.ndim - 2)
            return torch.einsum("b...d,bd->b...", part, u) * factor.view(shape)

        return DecompositionScores(along(self.embed), along(self.heads), along(self.attn_bias),
                                   along(self.mlps), along(self.ln_bias))


@dataclass
class DecompositionScores:
    """Shares of d: ``heads`` [b, layer, head, pos], ``mlps``/``attn_bias`` [b, layer], others [b]."""

    embed: Float[Tensor, " b"]
    heads: Float[Tensor, "b layer head pos"]
    attn_bias: Float[Tensor, "b layer"]
    mlps: Float[Tensor, "b layer"]
    ln_bias: Float[Tensor, " b"]

    def total(self) -> Float[Tensor, " b"]:
        return self.embed + self.heads.sum((1, 2, 3)) + self.attn_bias.sum(1) + self.mlps.sum(1) + self.ln_bias


def _readout(model: HookedImageEncoder) -> Float[Tensor, "d_model d_embed"]:
    """``M`` with ``center(c) * w @ P == c @ M``: ln_post's centring and gain, then the projection."""
    proj = model.W_proj if model.W_proj is not None else torch.eye(model.cfg.d_model, dtype=model.dtype, device=model.device)
    scaled = model.ln_post.w[:, None] * proj
    return scaled - scaled.mean(0, keepdim=True)


@torch.no_grad()
def decompose_image(model: HookedImageEncoder, images: Float[Tensor, "b 3 H W"]) -> ImageDecomposition:
    """Split each image's embedding into direct effects (see the module docstring).

    Memory: the head parts are ``b x layers x heads x positions x d_embed`` (ViT-B-32: 3.7 MB per
    image; ViT-L-14: about 300 MB per image): pass a few images at a time.
    """
    cfg = model.cfg
    names = {"ln_post.hook_scale", "blocks.0.hook_resid_pre"}
    for layer in range(cfg.n_layers):
        names |= {f"blocks.{layer}.attn.hook_pattern", f"blocks.{layer}.attn.hook_v", f"blocks.{layer}.hook_mlp_out"}
    embedding, cache = model.run_with_cache(images, names_filter=lambda name: name in names)
    pool = model.pooling_weights()  # [pos]
    scale = cache["ln_post.hook_scale"]  # [b, pos, 1], or [b, 1, 1] when ln_post follows pooling
    g = pool[None, :] / scale[..., 0]  # [b, pos]: weight of each query position in the output
    readout = _readout(model)
    proj = model.W_proj if model.W_proj is not None else torch.eye(cfg.d_model, dtype=model.dtype, device=model.device)
    heads, attn_bias, mlps = [], [], []
    for layer in range(cfg.n_layers):
        attn = model.blocks[layer].attn
        pattern = cache[f"blocks.{layer}.attn.hook_pattern"]  # [b, head, q, k]
        v = cache[f"blocks.{layer}.attn.hook_v"]  # [b, k, head, d_head]
        source_weight = torch.einsum("bq,bhqk->bhk", g, pattern)
        out_readout = torch.einsum("hed,df->hef", attn.W_O, readout)
        heads.append(torch.einsum("bhk,bkhe,hef->bhkf", source_weight, v, out_readout))
        attn_bias.append(g.sum(1, keepdim=True) * (attn.b_O @ readout))
        mlps.append(torch.einsum("bq,bqd->bd", g, cache[f"blocks.{layer}.hook_mlp_out"]) @ readout)
    embed = torch.einsum("bq,bqd->bd", g, cache["blocks.0.hook_resid_pre"]) @ readout
    ln_bias = (pool.sum() * (model.ln_post.b @ proj)).expand_as(embed)
    return ImageDecomposition(embed, torch.stack(heads, 1), torch.stack(attn_bias, 1), torch.stack(mlps, 1),
                              ln_bias.clone(), embedding)
