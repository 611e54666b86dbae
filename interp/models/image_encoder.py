"""``HookedImageEncoder``: CLIP's vision transformer with every activation readable and writable.

The same machinery as the text tower (TransformerLens ``HookedRootModule``/``HookPoint``, the
shared pre-LN blocks of :mod:`interp.models.components`, TransformerLens hook names), so a user's
habits and the analyses carry over. Converters in :mod:`interp.models.convert_vision` fill it from
open_clip's ``VisionTransformer`` or Hugging Face's ``CLIPVisionModelWithProjection``; the tests
prove the outputs equal the originals.

Sequence layout: position 0 is the class token, positions 1..N the patches in row-major order.
The state "at layer l" is ``blocks.{l}.hook_resid_pre`` (l = 0 is the output of ``ln_pre``) and
``l = n_layers`` is the output of the last block; ``forward(start_at_layer=l, residual=...)``
resumes from it, so a patching sweep recomputes only the layers after the patch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn
from transformer_lens import ActivationCache, HookedRootModule
from transformer_lens.hook_points import HookPoint

from interp.models.components import EncoderState, LayerNorm, TransformerBlock
from interp.models.image_config import ImageEncoderConfig

Images = Float[Tensor, "batch channel height width"]


class PatchEmbed(nn.Module):
    """Conv patch embedding (no bias), class token and learned positions.

    ``hook_embed`` [batch, pos, d_model] holds the class embedding at position 0 and the patch
    embeddings after it (before positions); ``hook_pos_embed`` the positional embedding.
    """

    def __init__(self, cfg: ImageEncoderConfig):
        super().__init__()
        self.cfg = cfg
        self.W_patch = nn.Parameter(torch.empty(cfg.d_model, cfg.n_channels, *cfg.patch_size))
        self.class_embedding = nn.Parameter(torch.empty(cfg.d_model))
        self.W_pos = nn.Parameter(torch.empty(cfg.n_pos, cfg.d_model))
        self.hook_embed = HookPoint()  # [batch, pos, d_model]
        self.hook_pos_embed = HookPoint()  # [batch, pos, d_model]

    def forward(self, images: Images) -> Float[Tensor, "batch pos d_model"]:
        expected = (self.cfg.n_channels, *self.cfg.image_size)
        if images.ndim != 4 or tuple(images.shape[1:]) != expected:
            raise ValueError(
                f"images have shape {tuple(images.shape)}, expected [batch, {', '.join(map(str, expected))}]: "
                "preprocess them with the model's preprocessing (interp.data.images.preprocess_image)"
            )
        patches = F.conv2d(images, self.W_patch, stride=self.cfg.patch_size)  # [b, d, rows, cols]
        patches = patches.flatten(2).transpose(1, 2)  # row-major patches: [b, rows*cols, d]
        cls = self.class_embedding.to(patches.dtype).expand(patches.shape[0], 1, -1)
        embed = self.hook_embed(torch.cat([cls, patches], dim=1))
        pos = self.hook_pos_embed(self.W_pos.to(embed.dtype).unsqueeze(0).expand(embed.shape[0], -1, -1))
        return embed + pos


class HookedImageEncoder(EncoderState, HookedRootModule):
    """A hooked ViT image tower (open_clip / Hugging Face CLIP).

    Calling it on preprocessed images ``[batch, 3, H, W]`` returns the image embedding
    ``[batch, d_embed]`` (projected, not normalised), like open_clip's ``encode_image``.
    """

    _anchor = "embed.W_pos"  # device and dtype are this weight's (EncoderState)

    def __init__(self, cfg: ImageEncoderConfig, init: bool = True):
        super().__init__()
        self.cfg = cfg
        self.embed = PatchEmbed(cfg)
        self.ln_pre = LayerNorm(cfg.d_model, cfg.eps) if cfg.has_ln_pre else None
        self.blocks = nn.ModuleList(TransformerBlock(cfg) for _ in range(cfg.n_layers))  # type: ignore[arg-type]
        self.ln_post = LayerNorm(cfg.d_model, cfg.eps)
        self.hook_pooled = HookPoint()  # [batch, d_model]: after pooling and ln_post, before the projection
        self.W_proj = nn.Parameter(torch.empty(cfg.d_model, cfg.d_embed)) if cfg.has_projection else None
        self.hook_embedding = HookPoint()  # [batch, d_embed]
        # Bidirectional attention: nothing is masked. One zero, broadcast over every score.
        self.register_buffer("_no_mask", torch.zeros(1, 1, 1, 1), persistent=False)
        if init:
            self.init_weights()
        self.setup()

    @torch.no_grad()
    def init_weights(self, seed: int | None = None, std: float = 0.02) -> None:
        """Random init (normal, std 0.02; LayerNorm w = 1, b = 0). For tests and smoke runs."""
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        for name, param in self.named_parameters():
            if name.endswith(".w") and param.ndim == 1:
                param.fill_(1.0)
            elif param.ndim == 1 and name != "embed.class_embedding":
                param.zero_()
            else:
                param.copy_(torch.randn(param.shape, generator=generator) * std)

    # ------------------------------------------------------------------ forward
    def embed_images(self, images: Images) -> Float[Tensor, "batch pos d_model"]:
        """The state at layer 0: class + patch embeddings + positions, through ``ln_pre``."""
        x = self.embed(images.to(device=self.device, dtype=self.dtype))
        return self.ln_pre(x) if self.ln_pre is not None else x

    def forward(
        self,
        images: Images | None = None,
        *,
        start_at_layer: int | None = None,
        residual: Float[Tensor, "batch pos d_model"] | None = None,
        stop_at_layer: int | None = None,
    ) -> Float[Tensor, "batch d_embed"] | Float[Tensor, "batch pos d_model"]:
        """Run the tower, whole or in part.

        Args:
            images: preprocessed images ``[batch, 3, H, W]`` (not needed with ``start_at_layer``).
            start_at_layer: resume at block ``l`` from ``residual`` (the state entering block l).
            residual: the state to resume from ``[batch, pos, d_model]``.
            stop_at_layer: stop before block ``l`` and return the residual (``l = n_layers``: after
                the last block, before ``ln_post``).

        Returns:
            The image embedding ``[batch, d_embed]``, or the residual when ``stop_at_layer`` is set.
        """
        start, stop = self._check_layer_range(start_at_layer, stop_at_layer)
        if start_at_layer is None:
            if images is None:
                raise ValueError("pass images, or start_at_layer with residual")
            x = self.embed_images(images)
        else:
            if residual is None:
                raise ValueError("start_at_layer needs residual=[batch, pos, d_model], the state entering that block")
            if residual.ndim != 3 or tuple(residual.shape[1:]) != (self.cfg.n_pos, self.cfg.d_model):
                raise ValueError(
                    f"residual has shape {tuple(residual.shape)}, expected [batch, {self.cfg.n_pos}, {self.cfg.d_model}]"
                )
            x = residual
        for block in self.blocks[start:stop]:
            x = block(x, self._no_mask.to(x.dtype))
        if stop_at_layer is not None:
            return x
        return self.pool_and_project(x)

    def _pool(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch d_model"]:
        return x[:, 0] if self.cfg.pool == "cls" else x[:, 1:].mean(dim=1)

    def pool_and_project(self, resid: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch d_embed"]:
        """``ln_post`` (before or after pooling, as configured), pooling, projection."""
        if self.cfg.ln_post_after_pool:
            pooled = self.ln_post(self._pool(resid).unsqueeze(1)).squeeze(1)
        else:
            pooled = self._pool(self.ln_post(resid))
        pooled = self.hook_pooled(pooled)
        out = pooled @ self.W_proj if self.W_proj is not None else pooled
        return self.hook_embedding(out)

    def pooling_weights(self) -> Float[Tensor, " pos"]:
        """Weight of each position in the pooled vector (one-hot on the class token, or 1/N on patches)."""
        weights = torch.zeros(self.cfg.n_pos, device=self.device, dtype=self.dtype)
        if self.cfg.pool == "cls":
            weights[0] = 1.0
        else:
            weights[1:] = 1.0 / self.cfg.n_patches
        return weights

    # ------------------------------------------------------------------ hooks and caches
    def resid_hook_name(self, layer: int) -> str:
        """Name of the state at ``layer`` (0 = after ln_pre; n_layers = after the last block)."""
        n = self.cfg.n_layers
        if not 0 <= layer <= n:
            raise ValueError(f"layer {layer} is outside 0..{n}")
        return f"blocks.{layer}.hook_resid_pre" if layer < n else f"blocks.{n - 1}.hook_resid_post"

    def run_with_cache(self, *model_args, **kwargs) -> tuple[Tensor, ActivationCache]:  # type: ignore[override]
        """Run and cache activations; returns (output, transformer_lens ``ActivationCache``)."""
        out, cache_dict = super().run_with_cache(*model_args, **kwargs)
        has_batch = not kwargs.get("remove_batch_dim", False)
        return out, ActivationCache(cache_dict, self, has_batch_dim=has_batch)

    def extra_repr(self) -> str:
        c = self.cfg
        return (
            f"{c.model_name} ({c.pretrained or 'random init'}): image {c.image_size}, patch {c.patch_size}, "
            f"{c.n_layers} layers, d_model {c.d_model}, {c.n_heads} heads, act {c.act_fn}, pool {c.pool}"
            f"{' (ln_post after pooling)' if c.ln_post_after_pool else ''}, d_embed {c.d_embed}"
        )
