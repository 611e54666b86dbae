"""What image causal tracing costs in matmul FLOPs: the per-cell batch-1 loop against the engine.

Counted as torch's ``FlopCounterMode`` counts them (2 FLOPs per multiply-add of every matmul and
convolution; LayerNorm, softmax, activations and additions are not counted), so a test can hold these
formulas to torch's own count of what the engine and the loop run.

The loop runs one full corrupted forward per cell. The engine (:func:`interp.vision.tracing.trace_image`)
runs, for a cell at layer l: the restored position's Q/K/V in block l, then attention, W_O and MLP at
every position of block l (the tower is bidirectional: every query sees the restored key), every later
block in full, and, when the class token is read out, only the class token's path through the last
block (but K and V at every position). The ratio of the two is the best speed-up an exact engine can
get from doing less work; the rest can only come from running the same work faster.
"""

from __future__ import annotations

from interp.models.image_config import ImageEncoderConfig


def _block_macs(cfg: ImageEncoderConfig, queries: int, q_rows: int, kv_rows: int) -> int:
    """Multiply-adds of one block computing ``q_rows`` new queries and ``kv_rows`` new keys and values,
    and the attention output and MLP at ``queries`` positions (keys: all n_pos positions)."""
    d, n = cfg.d_model, cfg.n_pos
    projections = d * d * (q_rows + 2 * kv_rows)  # W_Q, W_K, W_V (n_heads x d_head = d_model)
    attention = 2 * queries * n * d  # scores and the pattern-weighted sum of V, over all heads
    return projections + attention + queries * d * d + 2 * queries * d * cfg.d_mlp  # W_O, W_in, W_out


def _readout_macs(cfg: ImageEncoderConfig) -> int:
    return cfg.d_model * cfg.d_embed if cfg.has_projection else 0


def forward_flops(cfg: ImageEncoderConfig) -> int:
    """FLOPs of one full forward of one image (what the batch-1 loop runs per cell)."""
    n = cfg.n_pos
    patch_embedding = cfg.n_patches * cfg.d_model * cfg.n_channels * cfg.patch_size[0] * cfg.patch_size[1]
    return 2 * (patch_embedding + cfg.n_layers * _block_macs(cfg, n, n, n) + _readout_macs(cfg))


def engine_cell_flops(cfg: ImageEncoderConfig, layer: int) -> int:
    """FLOPs the engine spends on one cell restored at ``layer`` (0..n_layers), once the clean and
    corrupted runs are cached. Cells whose clean and corrupted states are equal cost nothing (the
    engine does not count them in ``TraceResult.cells_run``)."""
    n, last = cfg.n_pos, cfg.n_layers - 1
    cls_readout = cfg.pool == "cls"
    if layer == cfg.n_layers:
        return 0 if cls_readout else 2 * _readout_macs(cfg)  # class token: settled from the two runs
    if layer == last and cls_readout:
        macs = _block_macs(cfg, 1, 1, 1)  # restored position's Q/K/V, the class token's path
    else:
        macs = _block_macs(cfg, n, 1, 1)  # restored position's Q/K/V, attention and MLP everywhere
        full_blocks = last - layer - 1 if cls_readout else last - layer
        macs += full_blocks * _block_macs(cfg, n, n, n)
        if cls_readout:
            macs += _block_macs(cfg, 1, 1, n)  # last block: K/V everywhere, the class token's path
    return 2 * (macs + _readout_macs(cfg))


def loop_flops(cfg: ImageEncoderConfig, n_images: int) -> int:
    """The batch-1 loop over every cell: one clean forward per image (its states cached), then one
    corrupted forward per cell."""
    return n_images * (1 + (cfg.n_layers + 1) * cfg.n_pos) * forward_flops(cfg)


def engine_flops(cfg: ImageEncoderConfig, n_images: int, cells_run: list[int] | None = None) -> int:
    """The engine over every cell: one clean and one corrupted forward per image, then the cells that
    need a run (``cells_run`` per layer, as ``TraceResult`` reports; default every cell)."""
    if cells_run is None:
        cells_run = [n_images * cfg.n_pos] * (cfg.n_layers + 1)
    return 2 * n_images * forward_flops(cfg) + sum(n * engine_cell_flops(cfg, layer) for layer, n in enumerate(cells_run))
