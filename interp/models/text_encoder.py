"""``HookedTextEncoder``: a transformer text encoder with every activation readable and writable.

One class serves CLIP's text tower (causal, pre-LN, pooled at EOT, projected) and BERT-family
sentence encoders (bidirectional, post-LN, mean-pooled); the :class:`TextEncoderConfig` says which.
Converters in :mod:`interp.models.convert` fill it from open_clip, Hugging Face CLIP or BERT weights, and
tests prove the outputs equal the originals.

The state the causal analyses patch is the residual stream "at layer l": l = 0 is the embedding
output, l = 1..L the output of block l (before ln_final). :meth:`resid_hook_name` names it, and
``forward(start_at_layer=l, residual=...)`` resumes from it, so a patching sweep recomputes only
the layers after the patch.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn
from transformer_lens import HookedRootModule
from transformer_lens.hook_points import HookPoint

from interp.models.components import Embed, EncoderState, LayerNorm, TransformerBlock
from interp.models.config import TextEncoderConfig
from interp.models.lens import EncoderActivationCache, LensWeights
from interp.models.tokenization import TextTokenizer, TokenBatch, batch_from_ids, pool_positions

TextInput = str | Sequence[str] | TokenBatch | Int[Tensor, "batch pos"]


class HookedTextEncoder(EncoderState, LensWeights, HookedRootModule):
    """A hooked transformer text encoder (CLIP text tower or BERT-family sentence encoder).

    Args:
        cfg: sizes and switches (read from a checkpoint by :mod:`interp.models.convert`).
        tokenizer: turns texts into :class:`TokenBatch` es; optional when you pass token ids.
        init: fill weights with a random init; converters pass False and load real weights.

    Calling the model returns the sentence embedding ``[batch, d_embed]`` (projected, and
    normalised only if ``cfg.normalize_output``). See :meth:`forward` for partial runs.
    """

    _anchor = "embed.W_E"  # device and dtype are this weight's (EncoderState)

    def __init__(self, cfg: TextEncoderConfig, tokenizer: TextTokenizer | None = None, init: bool = True):
        super().__init__()
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.embed = Embed(cfg)
        self.hook_embed = HookPoint()  # [batch, pos, d_model] token embeddings
        self.hook_pos_embed = HookPoint()  # [batch, pos, d_model]
        self.hook_token_type_embed = HookPoint() if cfg.n_token_types else None
        self.blocks = nn.ModuleList(TransformerBlock(cfg) for _ in range(cfg.n_layers))
        self.ln_final = LayerNorm(cfg.d_model, cfg.eps) if cfg.has_final_ln else None
        self.hook_pooled = HookPoint()  # [batch, d_model]
        self.W_proj = nn.Parameter(torch.empty(cfg.d_model, cfg.d_embed)) if cfg.has_projection else None
        self.b_proj = nn.Parameter(torch.zeros(cfg.d_embed)) if cfg.projection_bias else None
        self.hook_embedding = HookPoint()  # [batch, d_embed]
        # log of CLIP's temperature (S = exp(logit_scale) * cos); None for encoders without one.
        self.register_buffer("logit_scale", torch.tensor(float("nan")))
        if init:
            self.init_weights()
        self.setup()

    # ------------------------------------------------------------------ construction
    @torch.no_grad()
    def init_weights(self, seed: int | None = None, std: float = 0.02) -> None:
        """Random init (normal, std 0.02; LayerNorm w = 1, b = 0). For tests and smoke runs only:
        random towers of real models come from open_clip's own init via :mod:`interp.models.loading`."""
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        for name, param in self.named_parameters():
            if name.endswith((".w",)) and param.ndim == 1:
                param.fill_(1.0)
            elif param.ndim == 1:
                param.zero_()
            else:
                param.copy_(torch.randn(param.shape, generator=generator) * std)

    # ------------------------------------------------------------------ tokens
    def _require_tokenizer(self) -> TextTokenizer:
        if self.tokenizer is None:
            raise ValueError(
                "this encoder has no tokenizer: pass token ids or a TokenBatch, or build it with "
                "interp.load_text_encoder(...)"
            )
        return self.tokenizer

    def to_token_batch(
        self, texts: str | Sequence[str] | Int[Tensor, "batch pos"], *, truncate: bool = False
    ) -> TokenBatch:
        """Tokenize texts into a :class:`TokenBatch` (ids, padding mask, pooled position, texts),
        trimmed to the longest text when that cannot change the output (``cfg.trims_to_longest``),
        else padded to the full context. Token ids ``[batch, pos]`` get the mask and pooled
        position the model reads from them (texts left empty)."""
        if isinstance(texts, Tensor):
            return self._batch_from_ids(texts)
        pad_to = "longest" if self.cfg.trims_to_longest else "context"
        return self._require_tokenizer()(texts, pad_to=pad_to, truncate=truncate)

    def to_tokens(
        self, texts: str | Sequence[str], *, truncate: bool = False, move_to_device: bool = True
    ) -> Int[Tensor, "batch pos"]:
        """Token ids ``[batch, pos]`` as TransformerLens returns them, ready for ``model(...)``,
        ``run_with_cache`` and ``transformer_lens.patching``.

        The plain tensor still tells the model where each text ends: CLIP pools at the largest id
        (EOT, as open_clip does) and masks nothing (causal); BERT-family encoders mask the pad id.
        :meth:`to_token_batch` returns the same ids with the mask and texts attached.
        """
        tokens = self.to_token_batch(texts, truncate=truncate).tokens
        return tokens.to(self.device) if move_to_device else tokens

    def to_str_tokens(self, text: str | Sequence[str] | Int[Tensor, "... pos"]) -> list[str] | list[list[str]]:
        """Readable tokens (special tokens included) of one text -> ``list[str]``, of a list of
        texts -> ``list[list[str]]``; token ids ``[pos]`` or ``[batch, pos]`` likewise (padding kept)."""
        tokenizer = self._require_tokenizer()
        if isinstance(text, str):
            return tokenizer.str_tokens(text)
        if isinstance(text, Tensor):
            if text.ndim == 1:
                return self._id_strings(text.tolist())
            return [self._id_strings(row) for row in text.tolist()]
        return [tokenizer.str_tokens(t) for t in text]

    def to_string(self, tokens: Int[Tensor, "... pos"] | Sequence[int] | Sequence[Sequence[int]]) -> str | list[str]:
        """Decode token ids back to text: ``[pos]`` -> ``str``, ``[batch, pos]`` -> ``list[str]``.
        Special and padding tokens are dropped."""
        ids = tokens.tolist() if isinstance(tokens, Tensor) else list(tokens)
        if ids and isinstance(ids[0], (list, tuple)):
            return [self._require_tokenizer().decode(row) for row in ids]
        return self._require_tokenizer().decode(ids)

    def _id_strings(self, ids: list[int]) -> list[str]:
        return self._require_tokenizer().id_strings(ids)

    def _as_batch(self, tokens: TextInput) -> TokenBatch:
        if isinstance(tokens, TokenBatch):
            batch = tokens
        elif isinstance(tokens, Tensor):
            batch = self._batch_from_ids(tokens)
        else:
            batch = self.to_token_batch(tokens)
        return batch.to(self.device)

    def _batch_from_ids(self, ids: Int[Tensor, "batch pos"]) -> TokenBatch:
        if ids.ndim == 1:
            ids = ids.unsqueeze(0)
        if ids.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"token ids must be an integer tensor, got {ids.dtype}")
        pad_id = self.tokenizer.pad_id if self.tokenizer is not None else 0
        ids = ids.long().cpu()
        if self.cfg.pool in ("argmax", "eos"):  # real tokens end at the pooled one (EOT / [SEP])
            lengths = pool_positions(ids, (ids != pad_id).sum(-1), self.cfg.pool, self.cfg.eos_token_id) + 1
        else:
            lengths = (ids != pad_id).sum(-1)
        rows = [row[:n].tolist() for row, n in zip(ids, lengths.tolist())]
        return batch_from_ids(rows, pad_id=pad_id, width=ids.shape[1], pool=self.cfg.pool,
                              eos_token_id=self.cfg.eos_token_id)

    # ------------------------------------------------------------------ forward
    def attention_mask(self, batch: TokenBatch) -> Float[Tensor, "#batch 1 #pos #pos"]:
        """Additive mask: causal (-inf above the diagonal, as open_clip's attn_mask), or -inf on
        padded keys for a bidirectional encoder."""
        n_pos = batch.tokens.shape[1]
        if self.cfg.causal:
            mask = torch.full((n_pos, n_pos), float("-inf"), device=self.device, dtype=self.dtype)
            return mask.triu(1)[None, None]
        keep = batch.attention_mask.to(self.device)
        mask = torch.zeros(keep.shape, device=self.device, dtype=self.dtype)
        return mask.masked_fill(~keep, float("-inf"))[:, None, None, :]

    def forward(
        self,
        tokens: TextInput,
        *,
        start_at_layer: int | None = None,
        residual: Float[Tensor, "batch pos d_model"] | None = None,
        stop_at_layer: int | None = None,
    ) -> Float[Tensor, "batch d_embed"] | Float[Tensor, "batch pos d_model"]:
        """Run the encoder, whole or in part.

        Args:
            tokens: texts, a :class:`TokenBatch`, or token ids ``[batch, pos]``. Always needed: the
                pooling position and the padding mask come from it.
            start_at_layer: resume at block ``l`` from ``residual`` (the state entering block l,
                ``[batch, pos, d_model]``); embeddings are skipped.
            residual: the state to resume from (required with ``start_at_layer``).
            stop_at_layer: stop before block ``l`` and return the residual ``[batch, pos, d_model]``
                (``l = n_layers``: after the last block, before ln_final).

        Returns:
            The sentence embedding ``[batch, d_embed]``, or the residual when ``stop_at_layer`` is set.
        """
        batch = self._as_batch(tokens)
        start, stop = self._check_layer_range(start_at_layer, stop_at_layer)
        if start_at_layer is None:
            x = self.embed(
                batch.tokens, batch.token_type_ids, self.hook_embed, self.hook_pos_embed,
                self.hook_token_type_embed or (lambda t: t),
            )
        else:
            if residual is None:
                raise ValueError("start_at_layer needs residual=[batch, pos, d_model], the state entering that block")
            if residual.shape[:2] != batch.tokens.shape:
                raise ValueError(
                    f"residual has batch x pos {tuple(residual.shape[:2])} but the tokens are "
                    f"{tuple(batch.tokens.shape)}: pass the TokenBatch the residual was computed from"
                )
            x = residual
        mask = self.attention_mask(batch)
        for block in self.blocks[start:stop]:
            x = block(x, mask)
        if stop_at_layer is not None:
            return x
        return self.pool_and_project(x, batch)

    def pool_and_project(
        self, resid: Float[Tensor, "batch pos d_model"], batch: TokenBatch
    ) -> Float[Tensor, "batch d_embed"]:
        """ln_final (if any), pooling, projection (if any), normalisation (if configured)."""
        x = self.ln_final(resid) if self.ln_final is not None else resid
        pooled = self.hook_pooled(self._pool(x, batch))
        out = pooled @ self.W_proj if self.W_proj is not None else pooled
        if self.b_proj is not None:
            out = out + self.b_proj
        if self.cfg.normalize_output:
            out = F.normalize(out, dim=-1)
        return self.hook_embedding(out)

    def _pool(self, x: Float[Tensor, "batch pos d_model"], batch: TokenBatch) -> Float[Tensor, "batch d_model"]:
        pool = self.cfg.pool
        rows = torch.arange(x.shape[0], device=x.device)
        if pool in ("argmax", "eos"):
            return x[rows, pool_positions(batch.tokens, batch.attention_mask.sum(-1), pool, self.cfg.eos_token_id)]
        if pool == "first":
            return x[:, 0]
        if pool == "last":
            return x[:, -1]
        # mean over real tokens (sentence-transformers: sum(x * mask) / max(count, 1e-9))
        keep = batch.attention_mask.to(x.device).unsqueeze(-1).to(x.dtype)
        return (x * keep).sum(1) / keep.sum(1).clamp(min=1e-9)

    # ------------------------------------------------------------------ hooks and caches
    def resid_hook_name(self, layer: int) -> str:
        """Name of the residual state at ``layer`` (0 = embedding output; L = after the last
        block, before ln_final), i.e. the state that ``forward(start_at_layer=layer)`` resumes from."""
        n = self.cfg.n_layers
        if not 0 <= layer <= n:
            raise ValueError(f"layer {layer} is outside 0..{n}")
        if layer < n:
            return f"blocks.{layer}.hook_resid_pre"
        last = "hook_normalized_resid_post" if self.cfg.norm == "post" else "hook_resid_post"
        return f"blocks.{n - 1}.{last}"

    def run_with_cache(self, *model_args, **kwargs) -> tuple[Tensor, EncoderActivationCache]:  # type: ignore[override]
        """Run and cache activations; returns (output, a transformer_lens ``ActivationCache``)."""
        out, cache_dict = super().run_with_cache(*model_args, **kwargs)
        has_batch = not kwargs.get("remove_batch_dim", False)
        return out, EncoderActivationCache(cache_dict, self, has_batch_dim=has_batch)

    def extra_repr(self) -> str:
        c = self.cfg
        return (
            f"{c.model_name} ({c.pretrained or 'random init'}): {c.n_layers} layers, d_model {c.d_model}, "
            f"{c.n_heads} heads, act {c.act_fn}, {'causal' if c.causal else 'bidirectional'}, "
            f"{c.norm}-LN, pool {c.pool}, d_embed {c.d_embed}"
        )


# The same class is CLIP's hooked text tower; the name is kept for readers of the CLIP papers.
HookedCLIPTextEncoder = HookedTextEncoder
