"""Causal tracing of the image tower (ROME: Meng et al. 2022, "Locating and Editing Factual
Associations in GPT"), over (layer, position) cells.

The corrupted run sees either Gaussian noise added to the patch embeddings (``embed.hook_embed``,
patch positions only; std = ``noise_factor`` x the std of the clean patch embeddings; seeded) or a
corrupted image the user gives. For each cell (l, i) the corrupted state at layer l
(``resid_hook_name(l)``) gets position i's clean state back and the rest of the tower runs; the
recovered fraction is ``(d_restored - d_corrupt) / (d_clean - d_corrupt)``.

The tower is bidirectional, so a restored patch at (l, i) reaches every later position: every cell
is run. Speed: the clean and corrupted states of every layer are computed once; all cells of a layer
are one batched run that starts at that layer (the unchanged prefix is reused).
:func:`restore_cell_reference` is the per-cell oracle (one full corrupted forward with one patch hook).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from interp.errors import ClipInterpError
from interp.models.image_encoder import HookedImageEncoder
from interp.vision.scores import score_gap

EMBED_HOOK = "embed.hook_embed"


class ImageTraceError(ClipInterpError, ValueError):
    """A corruption that cannot be applied (bad shape, zero noise)."""


@dataclass
class Corruption:
    """How the corrupted run differs from the clean one: ``noise`` [b, n_patches, d_model] added
    to the patch embeddings, or ``images`` (a corrupted image per clean one)."""

    noise: Tensor | None = None
    images: Tensor | None = None

    def run(self, model: HookedImageEncoder, clean_images: Tensor, **kwargs):
        """Forward the corrupted input (``kwargs`` as for ``run_with_hooks``/``run_with_cache``)."""
        if self.images is not None:
            return model.run_with_hooks(self.images, **kwargs)
        noise = self.noise

        def add_noise(embed: Tensor, hook) -> Tensor:
            embed = embed.clone()
            embed[:, 1:] = embed[:, 1:] + noise.to(embed.dtype)
            return embed

        hooks = [(EMBED_HOOK, add_noise), *kwargs.pop("fwd_hooks", [])]
        return model.run_with_hooks(clean_images, fwd_hooks=hooks, **kwargs)


@torch.no_grad()
def gaussian_noise(
    model: HookedImageEncoder,
    images: Tensor,
    noise_factor: float = 3.0,
    seed: int = 0,
    box: tuple[int, int, int, int] | None = None,
) -> Corruption:
    """Seeded noise of std ``noise_factor`` x the std of the images' patch embeddings, on every
    patch or only on the patches of ``box`` = (first row, first column, end row, end column) of the
    patch grid (ends exclusive)."""
    if noise_factor <= 0:
        raise ImageTraceError(f"noise factor {noise_factor} must be > 0 (3 is ROME's choice)")
    _, cache = model.run_with_cache(images, names_filter=EMBED_HOOK)
    std = float(cache[EMBED_HOOK][:, 1:].std())
    generator = torch.Generator().manual_seed(seed)
    shape = (images.shape[0], model.cfg.n_patches, model.cfg.d_model)
    noise = noise_factor * std * torch.randn(shape, generator=generator)
    if box is not None:
        noise = noise * _box_mask(model, box)[None, :, None]
    return Corruption(noise=noise.to(model.device, model.dtype))


def _box_mask(model: HookedImageEncoder, box: tuple[int, int, int, int]) -> Tensor:
    rows, cols = model.cfg.grid
    top, left, bottom, right = box
    if not (0 <= top < bottom <= rows and 0 <= left < right <= cols):
        raise ImageTraceError(f"box {box} is not a non-empty (top, left, bottom, right) box inside the {rows} x {cols} patch grid")
    mask = torch.zeros(rows, cols)
    mask[top:bottom, left:right] = 1.0
    return mask.flatten()


@dataclass
class TraceResult:
    """``d_restored`` [b, layer (0..n_layers), pos]; ``d_clean``, ``d_corrupt`` [b]."""

    d_restored: Float[Tensor, "b layer pos"]
    d_clean: Float[Tensor, " b"]
    d_corrupt: Float[Tensor, " b"]

    @property
    def recovered(self) -> Float[Tensor, "b layer pos"]:
        """``(d_restored - d_corrupt) / (d_clean - d_corrupt)``; NaN where the corruption changed nothing."""
        gap = (self.d_clean - self.d_corrupt)[:, None, None]
        return torch.where(gap.abs() > 0, (self.d_restored - self.d_corrupt[:, None, None]) / gap, torch.nan)


def _states(model: HookedImageEncoder) -> list[str]:
    return [model.resid_hook_name(layer) for layer in range(model.cfg.n_layers + 1)]


@torch.no_grad()
def trace_image(
    model: HookedImageEncoder,
    images: Float[Tensor, "b 3 H W"],
    directions: Float[Tensor, "b d_embed"],
    logit_scale: float | Tensor,
    corruption: Corruption,
    *,
    max_rows: int = 256,
) -> TraceResult:
    """Restore every (layer, position) cell of every image; batched, prefix-reusing.

    Args:
        directions: ``u`` per image (:func:`interp.vision.scores.caption_minus_foil`).
        corruption: :func:`gaussian_noise` or ``Corruption(images=corrupted)``.
        max_rows: largest batch of cells run at once (memory: max_rows x positions x d_model per state).
    """
    cfg = model.cfg
    images = images.to(device=model.device, dtype=model.dtype)
    _check_corruption(model, images, corruption)
    names = set(_states(model))
    clean_out, clean = model.run_with_cache(images, names_filter=lambda name: name in names)
    corrupt_out, corrupt = _run_corrupted_with_cache(model, images, corruption, names)
    d_clean = score_gap(clean_out, directions, logit_scale)
    d_corrupt = score_gap(corrupt_out, directions, logit_scale)
    b, n_pos = images.shape[0], cfg.n_pos
    d_restored = torch.empty(b * n_pos, cfg.n_layers + 1, dtype=d_clean.dtype, device=d_clean.device)
    for layer, name in enumerate(_states(model)):
        # rows (image, restored position), max_rows at a time: the corrupted state with one position made clean
        for start in range(0, b * n_pos, max_rows):
            rows = torch.arange(start, min(start + max_rows, b * n_pos), device=images.device)
            image_of, cell = rows // n_pos, rows % n_pos
            resid = corrupt[name][image_of].clone()
            resid[torch.arange(len(rows)), cell] = clean[name][image_of, cell]
            out = model(start_at_layer=layer, residual=resid)
            d_restored[rows, layer] = score_gap(out, directions[image_of], logit_scale)
    d_restored = d_restored.view(b, n_pos, cfg.n_layers + 1).transpose(1, 2).contiguous()
    return TraceResult(d_restored, d_clean, d_corrupt)


def _check_corruption(model, images: Tensor, corruption: Corruption) -> None:
    if (corruption.noise is None) == (corruption.images is None):
        raise ImageTraceError("a corruption is either noise or corrupted images, exactly one of them")
    if corruption.images is not None and corruption.images.shape != images.shape:
        raise ImageTraceError(
            f"corrupted images {tuple(corruption.images.shape)} do not match the clean images {tuple(images.shape)}"
        )
    if corruption.noise is not None and corruption.noise.shape != (images.shape[0], model.cfg.n_patches, model.cfg.d_model):
        raise ImageTraceError(f"noise of shape {tuple(corruption.noise.shape)} does not fit {images.shape[0]} images")


def _run_corrupted_with_cache(model, images, corruption: Corruption, names: set[str]):
    cache: dict[str, Tensor] = {}

    def save(act: Tensor, hook) -> Tensor:
        cache[hook.name] = act
        return act

    out = corruption.run(model, images, fwd_hooks=[(name, save) for name in sorted(names)])
    return out, cache


@torch.no_grad()
def restore_cell_reference(
    model: HookedImageEncoder,
    image: Float[Tensor, "1 3 H W"],
    direction: Float[Tensor, "1 d_embed"],
    logit_scale: float | Tensor,
    corruption: Corruption,
    layer: int,
    position: int,
) -> float:
    """The oracle for one cell: a full corrupted forward (batch 1) whose state at ``layer`` gets
    ``position``'s clean state back. Slow by design; tests hold :func:`trace_image` to it."""
    name = model.resid_hook_name(layer)
    _, clean = model.run_with_cache(image, names_filter=name)

    def restore(resid: Tensor, hook) -> Tensor:
        resid = resid.clone()
        resid[:, position] = clean[name][:, position]
        return resid

    out = corruption.run(model, image, fwd_hooks=[(name, restore)])
    return float(score_gap(out, direction, logit_scale)[0])
