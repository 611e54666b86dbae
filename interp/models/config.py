"""The configuration of a hooked text encoder: every size and switch, read from a checkpoint.

Nothing here is guessed from a model's name (style.md: ViT-Prisma guessed head counts from name
substrings and got ViT-B-32's text tower wrong); converters fill this from the source model's
modules or config.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from interp.errors import ClipInterpError

ActFn = Literal["gelu", "gelu_tanh", "quick_gelu", "relu"]
PoolType = Literal["argmax", "eos", "first", "last", "mean"]

ACT_FNS: tuple[str, ...] = ("gelu", "gelu_tanh", "quick_gelu", "relu")
POOL_TYPES: tuple[str, ...] = ("argmax", "eos", "first", "last", "mean")


class ConfigError(ClipInterpError, ValueError):
    """A configuration the hooked encoder cannot represent faithfully."""


@dataclass
class TextEncoderConfig:
    """Sizes and switches of a transformer text encoder.

    Attributes:
        n_layers, d_model, n_heads, d_mlp: the usual transformer sizes (d_head = d_model / n_heads).
        n_ctx: context length (number of learned positions).
        d_vocab: vocabulary size.
        d_embed: size of the output embedding (after the projection; = d_model without one).
        act_fn: MLP activation: exact "gelu", "gelu_tanh", "quick_gelu" (x * sigmoid(1.702 x), the
            OpenAI CLIP weights) or "relu".
        eps: LayerNorm epsilon.
        causal: causal attention mask (CLIP) or bidirectional with padding masked (BERT).
        norm: "pre" (CLIP: x + f(LN(x))) or "post" (BERT: LN(x + f(x))).
        pool: where the sentence embedding is read: "argmax" (CLIP: position of the largest token id,
            EOT), "eos" (first occurrence of ``eos_token_id``), "first", "last", or "mean" over real
            tokens (sentence-transformers).
        has_final_ln: a LayerNorm on the residual before pooling (CLIP's ln_final).
        has_embed_ln: a LayerNorm on the summed embeddings (BERT).
        n_token_types: number of token-type (segment) embeddings; 0 = none (CLIP).
        has_projection: a linear map from the pooled d_model vector to d_embed (CLIP's text_projection).
        projection_bias: whether that map has a bias.
        normalize_output: L2-normalise the returned embedding (sentence-transformers' Normalize).
        eos_token_id: the id pooled at when ``pool == "eos"``.
        tokenizer: which tokenizer the ids come from ("clip-bpe" or "wordpiece").
        model_name, pretrained: where the weights came from (for reports).
        use_attn_result: compute per-head outputs ``attn.hook_result`` [batch, pos, head, d_model]
            (costs n_heads x the memory of the attention output; off by default, as in TransformerLens).
        device: where the weights are; kept in sync by the encoder on every ``.to()`` (TransformerLens
            helpers such as ``patching`` read ``model.cfg.device``).
    """

    n_layers: int
    d_model: int
    n_heads: int
    d_mlp: int
    n_ctx: int
    d_vocab: int
    d_embed: int
    act_fn: ActFn = "gelu"
    eps: float = 1e-5
    causal: bool = True
    norm: Literal["pre", "post"] = "pre"
    pool: PoolType = "argmax"
    has_final_ln: bool = True
    has_embed_ln: bool = False
    n_token_types: int = 0
    has_projection: bool = True
    projection_bias: bool = False
    normalize_output: bool = False
    eos_token_id: int | None = None
    tokenizer: str = "clip-bpe"
    model_name: str = "custom"
    pretrained: str | None = None
    use_attn_result: bool = False
    device: str = "cpu"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("n_layers", "d_model", "n_heads", "d_mlp", "n_ctx", "d_vocab", "d_embed"):
            if int(getattr(self, name)) <= 0:
                raise ConfigError(f"{name}={getattr(self, name)} must be a positive integer")
        if self.d_model % self.n_heads:
            raise ConfigError(
                f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}: "
                "heads must split the width evenly"
            )
        if self.act_fn not in ACT_FNS:
            raise ConfigError(f"act_fn={self.act_fn!r} is not one of {ACT_FNS}")
        if self.pool not in POOL_TYPES:
            raise ConfigError(f"pool={self.pool!r} is not one of {POOL_TYPES}")
        if self.norm not in ("pre", "post"):
            raise ConfigError(f"norm={self.norm!r} must be 'pre' or 'post'")
        if self.pool == "eos" and self.eos_token_id is None:
            raise ConfigError("pool='eos' needs eos_token_id")
        if not self.has_projection and self.d_embed != self.d_model:
            raise ConfigError(f"without a projection d_embed ({self.d_embed}) must equal d_model ({self.d_model})")

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_heads

    @property
    def trims_to_longest(self) -> bool:
        """Whether padding after the pooled token can be dropped without changing the output.

        True for a causal encoder pooled at EOT/EOS (nothing after EOT reaches it) and for a
        bidirectional one whose padding is masked and pooled by mean/first: both ignore padding.
        """
        if self.causal:
            return self.pool in ("argmax", "eos", "first")
        return self.pool in ("mean", "first")

    # Fields TransformerLens's ActivationCache and patching read from ``model.cfg`` (fixed here:
    # this encoder always has attention and MLPs, LayerNorm, learned positions and n_heads K/V heads).
    @property
    def normalization_type(self) -> str:
        return "LN"

    @property
    def attn_only(self) -> bool:
        return False

    @property
    def n_key_value_heads(self) -> None:
        return None

    @property
    def final_rms(self) -> bool:
        return False

    @property
    def positional_embedding_type(self) -> str:
        return "standard"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
