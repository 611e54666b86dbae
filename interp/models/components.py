"""Building blocks of the hooked encoders, with TransformerLens hook names and weight layouts.

Every hook sits on the data path (``x = self.hook_x(x)``), so an identity hook leaves the output
bit-identical and an editing hook changes it (tests/test_hooks.py proves both for every name).
Weights use TransformerLens's layouts: ``W_Q`` [head, d_model, d_head], ``W_O`` [head, d_head,
d_model], ``W_in`` [d_model, d_mlp], ``W_out`` [d_mlp, d_model].
"""

from __future__ import annotations

import math

from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint

from interp.models.config import TextEncoderConfig


class LayerNorm(nn.Module):
    """LayerNorm with TransformerLens's hooks: ``hook_scale`` [..., 1] and ``hook_normalized``.

    Half-precision inputs are normalised in float32 (mean and variance of fp16 activations lose
    too much), then cast back.
    """

    def __init__(self, d_model: int, eps: float):
        super().__init__()
        self.eps = eps
        self.w = nn.Parameter(torch.ones(d_model))
        self.b = nn.Parameter(torch.zeros(d_model))
        self.hook_scale = HookPoint()  # [batch, pos, 1]
        self.hook_normalized = HookPoint()  # [batch, pos, d_model]

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        dtype = x.dtype
        x = x.float() if dtype in (torch.float16, torch.bfloat16) else x
        x = x - x.mean(-1, keepdim=True)
        scale = self.hook_scale((x.pow(2).mean(-1, keepdim=True) + self.eps).sqrt())
        x = x / scale
        return self.hook_normalized((x * self.w.to(x.dtype) + self.b.to(x.dtype)).to(dtype))


def _identity(x: Tensor) -> Tensor:
    return x


class Embed(nn.Module):
    """Token + position (+ token-type) embeddings; the sum is the residual stream at layer 0.

    The three parts pass through hooks the encoder owns (top-level ``hook_embed``,
    ``hook_pos_embed``, ``hook_token_type_embed``, TransformerLens's names, which its
    ``ActivationCache`` looks for when it decomposes the residual stream).
    """

    def __init__(self, cfg: TextEncoderConfig):
        super().__init__()
        self.W_E = nn.Parameter(torch.empty(cfg.d_vocab, cfg.d_model))
        self.W_pos = nn.Parameter(torch.empty(cfg.n_ctx, cfg.d_model))
        self.W_token_type = (
            nn.Parameter(torch.empty(cfg.n_token_types, cfg.d_model)) if cfg.n_token_types else None
        )
        self.ln = LayerNorm(cfg.d_model, cfg.eps) if cfg.has_embed_ln else None

    def forward(
        self,
        tokens: Int[Tensor, "batch pos"],
        token_type_ids: Int[Tensor, "batch pos"] | None = None,
        hook_embed=_identity,
        hook_pos_embed=_identity,
        hook_token_type_embed=_identity,
    ) -> Float[Tensor, "batch pos d_model"]:
        n_pos = tokens.shape[1]
        if n_pos > self.W_pos.shape[0]:
            raise ValueError(
                f"{n_pos} positions exceed the model's context of {self.W_pos.shape[0]}: "
                "shorten the texts (the tokenizer reports which)"
            )
        embed = hook_embed(self.W_E[tokens])
        pos = hook_pos_embed(self.W_pos[:n_pos].unsqueeze(0).expand(tokens.shape[0], -1, -1))
        x = embed + pos
        if self.W_token_type is not None:
            ids = token_type_ids if token_type_ids is not None else torch.zeros_like(tokens)
            x = x + hook_token_type_embed(self.W_token_type[ids])
        return self.ln(x) if self.ln is not None else x


class Attention(nn.Module):
    """Multi-head self-attention with per-head q/k/v/z hooks and optional per-head results."""

    def __init__(self, cfg: TextEncoderConfig):
        super().__init__()
        self.cfg = cfg
        h, d, e = cfg.n_heads, cfg.d_model, cfg.d_head
        self.W_Q = nn.Parameter(torch.empty(h, d, e))
        self.W_K = nn.Parameter(torch.empty(h, d, e))
        self.W_V = nn.Parameter(torch.empty(h, d, e))
        self.W_O = nn.Parameter(torch.empty(h, e, d))
        self.b_Q = nn.Parameter(torch.zeros(h, e))
        self.b_K = nn.Parameter(torch.zeros(h, e))
        self.b_V = nn.Parameter(torch.zeros(h, e))
        self.b_O = nn.Parameter(torch.zeros(d))
        self.hook_q = HookPoint()  # [batch, pos, head, d_head]
        self.hook_k = HookPoint()
        self.hook_v = HookPoint()
        self.hook_attn_scores = HookPoint()  # [batch, head, query_pos, key_pos], masked = -inf
        self.hook_pattern = HookPoint()  # [batch, head, query_pos, key_pos]
        self.hook_z = HookPoint()  # [batch, pos, head, d_head]
        self.hook_result = HookPoint()  # [batch, pos, head, d_model], only with use_attn_result
        for hook in (self.hook_attn_scores, self.hook_pattern):
            hook.pos_dim = -2  # query axis, for ActivationCache pos_slice

    def forward(
        self,
        x: Float[Tensor, "batch pos d_model"],
        additive_mask: Float[Tensor, "#batch 1 #pos #pos"],
    ) -> Float[Tensor, "batch pos d_model"]:
        q = self.hook_q(torch.einsum("bpd,hde->bphe", x, self.W_Q) + self.b_Q)
        k = self.hook_k(torch.einsum("bpd,hde->bphe", x, self.W_K) + self.b_K)
        v = self.hook_v(torch.einsum("bpd,hde->bphe", x, self.W_V) + self.b_V)
        scores = torch.einsum("bqhe,bkhe->bhqk", q, k) / math.sqrt(self.cfg.d_head)
        scores = self.hook_attn_scores(scores + additive_mask)
        pattern = self.hook_pattern(torch.softmax(scores, dim=-1))
        z = self.hook_z(torch.einsum("bhqk,bkhe->bqhe", pattern, v))
        if self.cfg.use_attn_result:
            result = self.hook_result(torch.einsum("bqhe,hed->bqhd", z, self.W_O))
            return result.sum(dim=2) + self.b_O
        # Same sum as above, as one matmul over (head, d_head).
        return z.flatten(2) @ self.W_O.flatten(0, 1) + self.b_O


def _quick_gelu(x: Tensor) -> Tensor:
    return x * torch.sigmoid(1.702 * x)


_ACTIVATIONS = {
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "quick_gelu": _quick_gelu,
    "relu": F.relu,
}


class MLP(nn.Module):
    def __init__(self, cfg: TextEncoderConfig):
        super().__init__()
        self.W_in = nn.Parameter(torch.empty(cfg.d_model, cfg.d_mlp))
        self.b_in = nn.Parameter(torch.zeros(cfg.d_mlp))
        self.W_out = nn.Parameter(torch.empty(cfg.d_mlp, cfg.d_model))
        self.b_out = nn.Parameter(torch.zeros(cfg.d_model))
        self.act = _ACTIVATIONS[cfg.act_fn]
        self.hook_pre = HookPoint()  # [batch, pos, d_mlp]
        self.hook_post = HookPoint()  # [batch, pos, d_mlp]

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        pre = self.hook_pre(x @ self.W_in + self.b_in)
        post = self.hook_post(self.act(pre))
        return post @ self.W_out + self.b_out


class TransformerBlock(nn.Module):
    """One residual block, pre-LN (CLIP) or post-LN (BERT, TransformerLens's BertBlock hooks).

    Pre-LN:  resid_mid = resid_pre + attn(ln1(resid_pre)); resid_post = resid_mid + mlp(ln2(resid_mid)).
    Post-LN: resid_mid = resid_pre + attn(resid_pre); n = ln1(resid_mid);
             resid_post = n + mlp(n); output = ln2(resid_post) (``hook_normalized_resid_post``).
    """

    def __init__(self, cfg: TextEncoderConfig):
        super().__init__()
        self.post_ln = cfg.norm == "post"
        self.ln1 = LayerNorm(cfg.d_model, cfg.eps)
        self.ln2 = LayerNorm(cfg.d_model, cfg.eps)
        self.attn = Attention(cfg)
        self.mlp = MLP(cfg)
        self.hook_resid_pre = HookPoint()
        self.hook_attn_out = HookPoint()
        self.hook_resid_mid = HookPoint()
        self.hook_mlp_out = HookPoint()
        self.hook_resid_post = HookPoint()
        self.hook_normalized_resid_post = HookPoint() if self.post_ln else None

    def forward(
        self,
        resid_pre: Float[Tensor, "batch pos d_model"],
        additive_mask: Float[Tensor, "#batch 1 #pos #pos"],
    ) -> Float[Tensor, "batch pos d_model"]:
        resid_pre = self.hook_resid_pre(resid_pre)
        if self.post_ln:
            attn_out = self.hook_attn_out(self.attn(resid_pre, additive_mask))
            resid_mid = self.ln1(self.hook_resid_mid(resid_pre + attn_out))
            mlp_out = self.hook_mlp_out(self.mlp(resid_mid))
            resid_post = self.hook_resid_post(resid_mid + mlp_out)
            return self.hook_normalized_resid_post(self.ln2(resid_post))
        attn_out = self.hook_attn_out(self.attn(self.ln1(resid_pre), additive_mask))
        resid_mid = self.hook_resid_mid(resid_pre + attn_out)
        mlp_out = self.hook_mlp_out(self.mlp(self.ln2(resid_mid)))
        return self.hook_resid_post(resid_mid + mlp_out)


class EncoderState:
    """What both hooked towers share about their state: the device and dtype of their weights (read
    off one anchor parameter, ``_anchor``), ``cfg.device`` kept in sync with them (TransformerLens's
    patching helpers read it), and the ``use_attn_result`` switch."""

    cfg: Any
    _anchor: str  # the name of the parameter whose device and dtype the model reports

    def set_use_attn_result(self, use_attn_result: bool) -> None:
        """Compute per-head outputs at ``blocks.{l}.attn.hook_result`` (n_heads x the memory)."""
        self.cfg.use_attn_result = use_attn_result

    def _apply(self, fn, *args, **kwargs):  # every .to()/.cuda()/.half() ends here: keep cfg.device in sync
        module = super()._apply(fn, *args, **kwargs)
        self.cfg.device = str(self.device)
        return module

    @property
    def device(self) -> torch.device:
        return self.get_parameter(self._anchor).device

    @property
    def dtype(self) -> torch.dtype:
        return self.get_parameter(self._anchor).dtype

    def _check_layer_range(self, start: int | None, stop: int | None) -> tuple[int, int]:
        """``(start, stop)`` of a run with ``start_at_layer``/``stop_at_layer`` (None: 0 / n_layers), checked."""
        n = self.cfg.n_layers
        start_i = 0 if start is None else start
        stop_i = n if stop is None else stop
        if not 0 <= start_i <= n:
            raise ValueError(f"start_at_layer={start} is outside 0..{n}")
        if not 0 <= stop_i <= n:
            raise ValueError(f"stop_at_layer={stop} is outside 0..{n}")
        if start_i > stop_i:
            raise ValueError(f"start_at_layer={start} is after stop_at_layer={stop}")
        return start_i, stop_i
