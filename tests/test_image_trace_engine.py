"""The image tracing engine equals the per-cell oracle on every cell, and its FLOP count is the one the
benchmark prints.

The engine (interp.vision.tracing.trace_image) skips work that cannot change: the prefix before the
restored layer, the restored layer's Q/K/V at the other positions (taken from the corrupted run),
everything but the class token's path in the last block when the class token is read out, and every
cell whose clean state equals its corrupted state. Each shortcut is checked here against
restore_cell_reference (one full batch-1 corrupted forward with one restoring hook) on every
(image, layer, position) cell, on towers that take every path: class-token and mean pooling,
ln_post after pooling, LayerScale, 1, 2 and 3 layers (a 3-layer tower has a block between the restored
one and the last), noise on every patch, noise in a box, and a corrupted image.

Tolerance: float32, logit scale 0 (d in cosine units, |d| <= |u| <= 2): 1e-5 (the engine and the
oracle sum the same products in different batch shapes; the gap is rounding, ~1e-7).
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from interp.models.clip import load_image_encoder
from interp.vision.trace_cost import engine_cell_flops, forward_flops
from interp.vision.tracing import Corruption, gaussian_noise, restore_cell_reference, trace_image

TOL = 1e-5


def _tower(open_clip_module, layers: int, **overrides):
    cfg = open_clip_module.model.CLIPVisionCfg(layers=layers, width=64, head_width=16, patch_size=16, image_size=48,
                                               **overrides)
    torch.manual_seed(0)
    model = load_image_encoder(open_clip_module.model._build_vision_tower(32, cfg, False).eval())
    with torch.no_grad():  # non-trivial LayerNorm gains and biases, so a skipped LN would show
        for name, param in model.named_parameters():
            if name.endswith((".w", ".b")) and param.ndim == 1:
                param.add_(0.3 * torch.randn(param.shape, generator=torch.Generator().manual_seed(len(name))))
    return model


def _inputs(model, n_images: int = 2):
    images = torch.randn(n_images, 3, *model.cfg.image_size, generator=torch.Generator().manual_seed(0))
    u = torch.randn(n_images, model.cfg.d_embed, generator=torch.Generator().manual_seed(1))
    return images, u


def _oracle_grid(model, images, u, corruption: Corruption) -> torch.Tensor:
    """restore_cell_reference on every cell: [image, layer, position]."""
    n_states = model.cfg.n_layers + 1
    grid = torch.empty(images.shape[0], n_states, model.cfg.n_pos)
    for i in range(images.shape[0]):
        one = (Corruption(noise=corruption.noise[i:i + 1]) if corruption.noise is not None
               else Corruption(images=corruption.images[i:i + 1]))
        for layer in range(n_states):
            for pos in range(model.cfg.n_pos):
                grid[i, layer, pos] = restore_cell_reference(model, images[i:i + 1], u[i:i + 1], 0.0, one, layer, pos)
    return grid


TOWERS = {
    "cls, 1 layer": {"layers": 1},  # the restored block is also the last
    "cls, 3 layers": {"layers": 3},
    "cls, LayerScale": {"layers": 3, "ls_init_value": 0.5},
    "mean pooling": {"layers": 3, "pool_type": "avg"},
    "mean pooling, ln_post after": {"layers": 2, "pool_type": "avg", "final_ln_after_pool": True},
}


@pytest.mark.parametrize("tower", TOWERS, ids=list(TOWERS))
def test_every_cell_equals_the_oracle_under_noise(open_clip_module, tower):
    model = _tower(open_clip_module, **TOWERS[tower])
    n_images = 2 if tower == "cls, 3 layers" else 1  # one tower runs cells of two images in one batch
    images, u = _inputs(model, n_images)
    noise = gaussian_noise(model, images, 3.0, seed=0)
    result = trace_image(model, images, u, 0.0, noise, max_rows=7)  # cells split across chunks (and images)
    oracle = _oracle_grid(model, images, u, noise)
    assert (result.d_restored - oracle).abs().max().item() <= TOL
    # The grid is not trivial: restoring cells moves d by more than the tolerance.
    assert (oracle - result.d_corrupt[:, None, None]).abs().max().item() > 100 * TOL


def test_unchanged_cells_are_settled_without_a_run_and_still_equal_the_oracle(open_clip_module):
    model = _tower(open_clip_module, 3)
    images, u = _inputs(model)
    noise = gaussian_noise(model, images, 3.0, seed=0, box=(1, 1, 3, 2))  # 2 of the 3 x 3 patches
    result = trace_image(model, images, u, 0.0, noise)
    # Layer 0: only the 2 noised patches of each image differ; last state: the class token alone is read.
    assert result.cells_run == [2 * 2, 2 * 10, 2 * 10, 0]  # states 0..3 of a 3-layer tower
    oracle = _oracle_grid(model, images, u, noise)
    assert (result.d_restored - oracle).abs().max().item() <= TOL
    untouched = torch.ones(model.cfg.n_pos, dtype=torch.bool)
    untouched[[1 + 1 * 3 + 1, 1 + 2 * 3 + 1]] = False
    assert torch.equal(result.d_restored[:, 0, untouched], result.d_corrupt[:, None].expand(2, int(untouched.sum())))


def test_every_cell_equals_the_oracle_with_a_corrupted_image(open_clip_module):
    model = _tower(open_clip_module, 3, pool_type="avg")
    images, u = _inputs(model)
    corrupted = images.clone()
    corrupted[:, :, 16:48, :32] = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))  # 4 of 9 patches
    corruption = Corruption(images=corrupted)
    result = trace_image(model, images, u, 0.0, corruption, max_rows=5)
    assert (result.d_restored - _oracle_grid(model, images, u, corruption)).abs().max().item() <= TOL
    assert result.cells_run[0] < 2 * model.cfg.n_pos  # the untouched patches were settled


def _counted_flops(fn) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops()


@pytest.mark.parametrize("tower", ["cls, 3 layers", "mean pooling"])
def test_the_flop_model_counts_what_the_engine_and_the_loop_run(open_clip_module, tower):
    """trace_cost's arithmetic (which the benchmark prints as the speed-up ceiling) against torch's own
    count of the matmul and conv FLOPs of one batch-1 restoring forward and of a whole trace."""
    model = _tower(open_clip_module, **TOWERS[tower]).requires_grad_(False)  # torch's module tracker wants no grads
    images, u = _inputs(model, 1)
    noise = gaussian_noise(model, images, 3.0, seed=0)
    cfg = model.cfg
    counted_loop_cell = _counted_flops(lambda: noise.run(model, images, fwd_hooks=[]))
    assert counted_loop_cell == forward_flops(cfg)
    result = trace_image(model, images, u, 0.0, noise)
    counted_engine = _counted_flops(lambda: trace_image(model, images, u, 0.0, noise))
    expected = 2 * forward_flops(cfg) + sum(n * engine_cell_flops(cfg, layer) for layer, n in enumerate(result.cells_run))
    assert counted_engine == expected
