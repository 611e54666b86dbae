"""Causal tracing of the image tower (ROME: Meng et al. 2022, "Locating and Editing Factual
Associations in GPT"), over (layer, position) cells.

The corrupted run sees either Gaussian noise added to the patch embeddings (``embed.hook_embed``,
patch positions only; std = ``noise_factor`` x the std of the clean patch embeddings; seeded) or a
corrupted image the user gives. For each cell (l, i) the corrupted state at layer l
(``resid_hook_name(l)``) gets position i's clean state back and the rest of the tower runs; the
recovered fraction is ``(d_restored - d_corrupt) / (d_clean - d_corrupt)``.

The tower is bidirectional, so a restored patch at (l, i) changes every position from block l on:
no cell can skip those blocks. What the engine does skip (each shortcut exact, each tested against
:func:`restore_cell_reference`, the per-cell oracle: one full corrupted forward with one patch hook):

- the prefix: the clean and corrupted states (and the corrupted Q/K/V) of every layer are computed
  once, and a cell starts at its layer, batched with up to ``max_rows`` other cells;
- in block l, the Q/K/V of the positions that were not restored (the corrupted run's);
- with class-token readout, everything in the last block but K/V at every position and the class
  token's own path (so cells at the final state are settled from the two runs);
- cells whose clean state equals their corrupted state (settled as ``d_corrupt``).

:mod:`interp.vision.trace_cost` counts what this leaves in FLOPs against the per-cell loop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from interp.errors import ClipInterpError
from interp.models.image_encoder import HookedImageEncoder
from interp.vision.scores import score_gap

EMBED_HOOK = "embed.hook_embed"
DEFAULT_MAX_ROWS = 32  # cells per batched run: fastest at 1 thread on ViT-B-32 (docs/image.md, Speed)


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
    """``d_restored`` [b, layer (0..n_layers), pos]; ``d_clean``, ``d_corrupt`` [b]; ``cells_run``
    [layer]: how many cells of each layer needed a run (the rest were settled without one)."""

    d_restored: Float[Tensor, "b layer pos"]
    d_clean: Float[Tensor, " b"]
    d_corrupt: Float[Tensor, " b"]
    cells_run: list[int] | None = None

    @property
    def recovered(self) -> Float[Tensor, "b layer pos"]:
        """``(d_restored - d_corrupt) / (d_clean - d_corrupt)``; NaN where the corruption changed nothing."""
        gap = (self.d_clean - self.d_corrupt)[:, None, None]
        return torch.where(gap.abs() > 0, (self.d_restored - self.d_corrupt[:, None, None]) / gap, torch.nan)


def _states(model: HookedImageEncoder) -> list[str]:
    return [model.resid_hook_name(layer) for layer in range(model.cfg.n_layers + 1)]


def _qkv_names(layer: int) -> tuple[str, str, str]:
    return tuple(f"blocks.{layer}.attn.hook_{x}" for x in "qkv")  # type: ignore[return-value]


@torch.no_grad()
def trace_image(
    model: HookedImageEncoder,
    images: Float[Tensor, "b 3 H W"],
    directions: Float[Tensor, "b d_embed"],
    logit_scale: float | Tensor,
    corruption: Corruption,
    *,
    max_rows: int = DEFAULT_MAX_ROWS,
) -> TraceResult:
    """Restore every (layer, position) cell of every image; batched, prefix-reusing.

    Args:
        directions: ``u`` per image (:func:`interp.vision.scores.caption_minus_foil`).
        corruption: :func:`gaussian_noise` or ``Corruption(images=corrupted)``.
        max_rows: largest batch of cells run at once (memory: about 4 x max_rows x positions x d_mlp
            floats for the MLP of one block).
    """
    cfg = model.cfg
    if max_rows < 1:
        raise ImageTraceError(f"max_rows={max_rows} must be >= 1")
    images = images.to(device=model.device, dtype=model.dtype)
    _check_corruption(model, images, corruption)
    states = _states(model)
    qkv = {name for layer in range(cfg.n_layers) for name in _qkv_names(layer)}
    clean_out, clean = model.run_with_cache(images, names_filter=lambda name: name in set(states))
    corrupt_out, corrupt = _run_corrupted_with_cache(model, images, corruption, set(states) | qkv)
    d_clean = score_gap(clean_out, directions, logit_scale)
    d_corrupt = score_gap(corrupt_out, directions, logit_scale)
    # A cell whose clean state equals its corrupted state restores nothing: it is settled as d_corrupt.
    d_restored = d_corrupt[:, None, None].expand(-1, cfg.n_layers + 1, cfg.n_pos).clone()
    cells_run = []
    for layer, name in enumerate(states):
        changed = (clean[name] != corrupt[name]).any(dim=-1)  # [b, pos]
        if layer == cfg.n_layers and cfg.pool == "cls":
            # The class token alone is read out: restoring it gives the clean embedding, any other
            # position changes nothing.
            d_restored[:, layer, 0] = torch.where(changed[:, 0], d_clean, d_corrupt)
            cells_run.append(0)
            continue
        image_of, position = changed.nonzero(as_tuple=True)
        cells_run.append(len(position))
        for start in range(0, len(position), max_rows):
            rows = slice(start, start + max_rows)
            out = _run_cells(model, layer, clean, corrupt, image_of[rows], position[rows])
            d_restored[image_of[rows], layer, position[rows]] = score_gap(out, directions[image_of[rows]], logit_scale)
    return TraceResult(d_restored, d_clean, d_corrupt, cells_run)


def _run_cells(
    model: HookedImageEncoder, layer: int, clean, corrupt, image_of: Tensor, position: Tensor
) -> Float[Tensor, "rows d_embed"]:
    """The image embeddings of cells (image_of[r], layer, position[r]): the corrupted state at
    ``layer`` with one position made clean, run to the end doing only the work that can change."""
    cfg, n_layers = model.cfg, model.cfg.n_layers
    name = model.resid_hook_name(layer)
    rows = torch.arange(len(position), device=position.device)
    x = corrupt[name][image_of].clone()
    x[rows, position] = clean[name][image_of, position]
    if layer == n_layers:
        return model.pool_and_project(x)
    # Block `layer`: only the restored position's LN1 and Q/K/V change; the others keep the
    # corrupted run's. Its attention and MLP still change at every position (every query sees the
    # restored key), as they do in every later block: the tower is bidirectional.
    block = model.blocks[layer]
    q, k, v = (corrupt[hook][image_of].clone() for hook in _qkv_names(layer))
    q_new, k_new, v_new = _project_qkv(block, x[rows, position].unsqueeze(1))
    q[rows, position], k[rows, position], v[rows, position] = q_new[:, 0], k_new[:, 0], v_new[:, 0]
    read_cls_only = cfg.pool == "cls"
    if layer == n_layers - 1 and read_cls_only:
        return model.pool_and_project(_attend_and_mlp(block, x[:, :1], q[:, :1], k, v))
    x = _attend_and_mlp(block, x, q, k, v)
    last = n_layers - 1 if read_cls_only else n_layers
    mask = model._no_mask.to(x.dtype)
    for block in model.blocks[layer + 1:last]:
        x = block(x, mask)
    if read_cls_only:
        x = _last_block_cls(model.blocks[n_layers - 1], x)
    return model.pool_and_project(x)


def _project_qkv(block, resid: Float[Tensor, "rows pos d_model"]) -> tuple[Tensor, Tensor, Tensor]:
    """Q, K, V [rows, pos, head, d_head] of ``resid`` (LN1 included), as the block computes them."""
    attn, h = block.attn, block.ln1(resid)
    return tuple(
        torch.einsum("bpd,hde->bphe", h, W) + b for W, b in ((attn.W_Q, attn.b_Q), (attn.W_K, attn.b_K), (attn.W_V, attn.b_V))
    )  # type: ignore[return-value]


def _attend_and_mlp(
    block, resid: Float[Tensor, "rows query d_model"], q: Float[Tensor, "rows query head d_head"],
    k: Float[Tensor, "rows pos head d_head"], v: Float[Tensor, "rows pos head d_head"],
) -> Float[Tensor, "rows query d_model"]:
    """The rest of a pre-LN block for some query positions, given every position's K and V:
    attention, W_O, residual, LN2, MLP, residual (the math of ``TransformerBlock.forward``)."""
    attn = block.attn
    scores = torch.einsum("bqhe,bkhe->bhqk", q, k) / math.sqrt(attn.cfg.d_head)
    z = torch.einsum("bhqk,bkhe->bqhe", torch.softmax(scores, dim=-1), v)
    mid = resid + z.flatten(2) @ attn.W_O.flatten(0, 1) + attn.b_O
    return mid + block.mlp(block.ln2(mid))


def _last_block_cls(block, x: Float[Tensor, "rows pos d_model"]) -> Float[Tensor, "rows 1 d_model"]:
    """The last block's output at the class token only: K and V of every position, Q, attention,
    W_O and MLP of the class token (the only position a class-token readout sees)."""
    attn, h = block.attn, block.ln1(x)
    k = torch.einsum("bpd,hde->bphe", h, attn.W_K) + attn.b_K
    v = torch.einsum("bpd,hde->bphe", h, attn.W_V) + attn.b_V
    q = torch.einsum("bpd,hde->bphe", h[:, :1], attn.W_Q) + attn.b_Q
    return _attend_and_mlp(block, x[:, :1], q, k, v)


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
