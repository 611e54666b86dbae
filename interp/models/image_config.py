"""The configuration of a hooked image encoder (CLIP's vision transformer), read from a checkpoint.

Every size and switch is filled by a converter (:mod:`interp.models.convert_vision`) from the
source model's modules and parameter shapes, never from its name. The field names the shared
transformer blocks read (``n_heads``, ``d_head``, ``d_mlp``, ``act_fn``, ``eps``, ``norm``,
``use_attn_result``) mean what they mean in :class:`interp.models.config.TextEncoderConfig`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from interp.models.config import ACT_FNS, ConfigError, ActFn

IMAGE_POOLS: tuple[str, ...] = ("cls", "mean")


@dataclass
class ImageEncoderConfig:
    """Sizes and switches of a ViT image tower.

    Attributes:
        n_layers, d_model, n_heads, d_mlp: transformer sizes (d_head = d_model / n_heads).
        image_size, patch_size: (height, width) of the input and of one patch; the grid is their ratio.
        n_channels: input channels (3).
        d_embed: size of the output embedding (after the projection; = d_model without one).
        act_fn: MLP activation ("gelu" or "quick_gelu" for CLIP), read off the MLP's module.
        eps: LayerNorm epsilon.
        has_ln_pre: a LayerNorm on the embeddings before the first block (CLIP's ``ln_pre``).
        pool: "cls" (the class token, OpenAI/LAION CLIP) or "mean" (mean over the patch tokens).
        ln_post_after_pool: ``ln_post`` is applied to the pooled vector instead of every position
            (the same thing for "cls"; different for "mean").
        has_projection: a linear map (no bias) from d_model to d_embed (CLIP's ``proj``).
        model_name, pretrained: where the weights came from (for reports).
        use_attn_result: compute per-head outputs at ``attn.hook_result`` (as TransformerLens).
    """

    n_layers: int
    d_model: int
    n_heads: int
    d_mlp: int
    image_size: tuple[int, int]
    patch_size: tuple[int, int]
    d_embed: int
    n_channels: int = 3
    act_fn: ActFn = "gelu"
    eps: float = 1e-5
    has_ln_pre: bool = True
    pool: Literal["cls", "mean"] = "cls"
    ln_post_after_pool: bool = False
    has_projection: bool = True
    model_name: str = "custom"
    pretrained: str | None = None
    use_attn_result: bool = False
    device: str = "cpu"
    norm: Literal["pre"] = "pre"  # CLIP's ViT blocks are pre-LN; read by the shared blocks
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.image_size = tuple(int(s) for s in self.image_size)  # type: ignore[assignment]
        self.patch_size = tuple(int(s) for s in self.patch_size)  # type: ignore[assignment]
        for name in ("n_layers", "d_model", "n_heads", "d_mlp", "d_embed", "n_channels"):
            if int(getattr(self, name)) <= 0:
                raise ConfigError(f"{name}={getattr(self, name)} must be a positive integer")
        if self.d_model % self.n_heads:
            raise ConfigError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
        if any(s % p for s, p in zip(self.image_size, self.patch_size)):
            raise ConfigError(f"image size {self.image_size} is not a whole number of {self.patch_size} patches")
        if self.act_fn not in ACT_FNS:
            raise ConfigError(f"act_fn={self.act_fn!r} is not one of {ACT_FNS}")
        if self.pool not in IMAGE_POOLS:
            raise ConfigError(f"pool={self.pool!r} is not one of {IMAGE_POOLS}")
        if not self.has_projection and self.d_embed != self.d_model:
            raise ConfigError(f"without a projection d_embed ({self.d_embed}) must equal d_model ({self.d_model})")

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_heads

    @property
    def grid(self) -> tuple[int, int]:
        """Patch grid (rows, columns)."""
        return self.image_size[0] // self.patch_size[0], self.image_size[1] // self.patch_size[1]

    @property
    def n_patches(self) -> int:
        rows, cols = self.grid
        return rows * cols

    @property
    def n_pos(self) -> int:
        """Sequence length: the class token then the patches in row-major order."""
        return self.n_patches + 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
