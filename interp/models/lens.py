"""What TransformerLens's ``ActivationCache`` and habits need from a hooked encoder.

Two pieces, both read by code written for TransformerLens:

* :class:`LensWeights`, a mixin giving the encoder TransformerLens's stacked weight views
  (``model.W_Q`` ``[layer, head, d_model, d_head]``, ``model.OV``, ``model.QK``, ...) and
  ``accumulated_bias``, which ``get_full_resid_decomposition`` calls.
* :class:`EncoderActivationCache`, the ``ActivationCache`` that ``run_with_cache`` returns. For a
  pre-LN encoder (CLIP) it is TransformerLens's cache unchanged. For a post-LN encoder (BERT) the
  residual stream is re-normalised after every sublayer, so it is not a sum of component outputs
  and a LayerNorm scale cached at one layer does not apply to another: the decompositions and
  ``apply_ln`` refuse with :class:`NotApplicableError` instead of returning numbers that do not
  add up.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor
from transformer_lens import ActivationCache, FactoredMatrix

from interp.errors import ClipInterpError


class NotApplicableError(ClipInterpError, ValueError):
    """A TransformerLens operation whose assumptions this encoder does not meet."""


def _post_ln_refusal(what: str) -> NotApplicableError:
    return NotApplicableError(
        f"{what} does not apply to a post-LN encoder (BERT/MiniLM): its residual stream is "
        "LayerNorm-ed after every sublayer, so it is not the sum of the components' outputs and one "
        "layer's LayerNorm scale does not rescale another's. Use the cached activations directly "
        "(cache['resid_pre', l], cache['attn_out', l], ...) or a pre-LN (CLIP) encoder"
    )


class EncoderActivationCache(ActivationCache):
    """TransformerLens's ``ActivationCache``; refuses residual decompositions on post-LN encoders."""

    def _refuse_post_ln(self, what: str) -> None:
        if self.model.cfg.norm == "post":
            raise _post_ln_refusal(what)

    def decompose_resid(self, *args, **kwargs):
        self._refuse_post_ln("cache.decompose_resid()")
        return super().decompose_resid(*args, **kwargs)

    def get_full_resid_decomposition(self, *args, **kwargs):
        self._refuse_post_ln("cache.get_full_resid_decomposition()")
        return super().get_full_resid_decomposition(*args, **kwargs)

    def apply_ln_to_stack(self, *args, **kwargs):
        # Every apply_ln=True path (accumulated_resid, stack_head_results, ...) ends here.
        self._refuse_post_ln("apply_ln=True")
        return super().apply_ln_to_stack(*args, **kwargs)


def _stack(blocks, get) -> Tensor:
    return torch.stack([get(block) for block in blocks], dim=0)


class LensWeights:
    """TransformerLens's stacked weight views over layers. They are stacked copies: to edit a
    weight, edit the block's parameter (``model.blocks[l].attn.W_Q``)."""

    blocks: torch.nn.ModuleList

    @property
    def W_Q(self) -> Float[Tensor, "layer head d_model d_head"]:
        return _stack(self.blocks, lambda b: b.attn.W_Q)

    @property
    def W_K(self) -> Float[Tensor, "layer head d_model d_head"]:
        return _stack(self.blocks, lambda b: b.attn.W_K)

    @property
    def W_V(self) -> Float[Tensor, "layer head d_model d_head"]:
        return _stack(self.blocks, lambda b: b.attn.W_V)

    @property
    def W_O(self) -> Float[Tensor, "layer head d_head d_model"]:
        return _stack(self.blocks, lambda b: b.attn.W_O)

    @property
    def b_Q(self) -> Float[Tensor, "layer head d_head"]:
        return _stack(self.blocks, lambda b: b.attn.b_Q)

    @property
    def b_K(self) -> Float[Tensor, "layer head d_head"]:
        return _stack(self.blocks, lambda b: b.attn.b_K)

    @property
    def b_V(self) -> Float[Tensor, "layer head d_head"]:
        return _stack(self.blocks, lambda b: b.attn.b_V)

    @property
    def b_O(self) -> Float[Tensor, "layer d_model"]:
        return _stack(self.blocks, lambda b: b.attn.b_O)

    @property
    def W_in(self) -> Float[Tensor, "layer d_model d_mlp"]:
        return _stack(self.blocks, lambda b: b.mlp.W_in)

    @property
    def W_out(self) -> Float[Tensor, "layer d_mlp d_model"]:
        return _stack(self.blocks, lambda b: b.mlp.W_out)

    @property
    def b_in(self) -> Float[Tensor, "layer d_mlp"]:
        return _stack(self.blocks, lambda b: b.mlp.b_in)

    @property
    def b_out(self) -> Float[Tensor, "layer d_model"]:
        return _stack(self.blocks, lambda b: b.mlp.b_out)

    @property
    def W_E(self) -> Float[Tensor, "d_vocab d_model"]:
        return self.embed.W_E

    @property
    def W_pos(self) -> Float[Tensor, "n_ctx d_model"]:
        return self.embed.W_pos

    @property
    def QK(self) -> FactoredMatrix:
        """``W_Q @ W_K^T`` per layer and head: ``[layer, head, d_model, d_model]`` (factored)."""
        return FactoredMatrix(self.W_Q, self.W_K.transpose(-2, -1))

    @property
    def OV(self) -> FactoredMatrix:
        """``W_V @ W_O`` per layer and head: ``[layer, head, d_model, d_model]`` (factored)."""
        return FactoredMatrix(self.W_V, self.W_O)

    def accumulated_bias(
        self, layer: int, mlp_input: bool = False, include_mlp_biases: bool = True
    ) -> Float[Tensor, " d_model"]:
        """Sum of the output biases written to the residual stream before block ``layer``'s
        attention (``mlp_input``: before its MLP), as TransformerLens defines it."""
        bias = torch.zeros(self.cfg.d_model, device=self.device, dtype=self.dtype)
        for block in self.blocks[:layer]:
            bias = bias + block.attn.b_O
            if include_mlp_biases:
                bias = bias + block.mlp.b_out
        if mlp_input:
            bias = bias + self.blocks[layer].attn.b_O
        return bias
