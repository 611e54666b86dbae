"""``python -m interp.bench image-trace``: the image tracing engine against a per-cell batch-1 loop.

Same images, same corruption, same model and threads, in one process:

(a) the engine, :func:`interp.vision.tracing.trace_image`: every (layer, position) cell, batched,
    each cell run from its layer on with only the work a restored cell can change;
(b) the plain loop: clean states cached once per image, then one full batch-1 corrupted forward per
    cell with a hook restoring that cell (the way TransformerLens's patching helpers work).

The loop takes about as long per cell as one forward, so by default it runs on a seeded random
subset of cells and its full-grid time is extrapolated (every cell and every image's clean run is one
forward, so the subset's time is scaled by its share of the forwards); the output says so.
The subset's loop values are compared with the engine's (max |diff|). Times are wall and this
process's CPU time: on a shared machine other jobs stretch wall time.

Beside the times it prints the matmul FLOPs of both (:mod:`interp.vision.trace_cost`) and their
ratio: the most an exact engine gains by doing less work. Any speed-up beyond it comes from running
the same work faster (large batched matmuls against batch-1 ones), which the printed FLOP rates show.
"""

from __future__ import annotations

import argparse
import logging
import time
from typing import Sequence

log = logging.getLogger("interp.bench.image_trace")


def _clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def run(model_name: str, n_images: int, loop_cells: int, threads: int | None, seed: int, max_rows: int) -> dict:
    import torch

    with torch.no_grad():
        return _measure(model_name, n_images, loop_cells, threads, seed, max_rows)


def _measure(model_name: str, n_images: int, loop_cells: int, threads: int | None, seed: int, max_rows: int) -> dict:
    import numpy as np
    import torch

    from interp.models.clip import load_image_encoder
    from interp.vision.scores import score_gap
    from interp.vision.trace_cost import engine_flops, forward_flops, loop_flops
    from interp.vision.tracing import Corruption, gaussian_noise, trace_image

    if threads:
        torch.set_num_threads(threads)
    model = load_image_encoder(model_name, None, seed=seed)
    cfg = model.cfg
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(n_images, 3, *cfg.image_size, generator=generator)
    directions = torch.randn(n_images, cfg.d_embed, generator=generator)
    corruption = gaussian_noise(model, images, 3.0, seed=seed)
    n_states = cfg.n_layers + 1
    n_cells = n_images * n_states * cfg.n_pos

    model(images)  # warm-up: first-call allocations stay out of both timings
    wall, cpu = _clock()
    result = trace_image(model, images, directions, 0.0, corruption, max_rows=max_rows)
    engine_wall, engine_cpu = time.perf_counter() - wall, time.process_time() - cpu

    rng = np.random.default_rng(seed)
    picks = rng.choice(n_cells, size=min(loop_cells, n_cells), replace=False)
    diffs = []
    wall, cpu = _clock()
    clean_states = {}
    names = {model.resid_hook_name(layer) for layer in range(n_states)}
    for i in range(n_images):  # clean states once per image, as a careful loop would
        _, cache = model.run_with_cache(images[i:i + 1], names_filter=lambda name: name in names)
        clean_states[i] = cache
    for cell in picks:
        i, rest = divmod(int(cell), n_states * cfg.n_pos)
        layer, pos = divmod(rest, cfg.n_pos)
        name = model.resid_hook_name(layer)

        def restore(resid, hook, i=i, name=name, pos=pos):
            resid = resid.clone()
            resid[:, pos] = clean_states[i][name][:, pos]
            return resid

        out = Corruption(noise=corruption.noise[i:i + 1]).run(model, images[i:i + 1], fwd_hooks=[(name, restore)])
        d = float(score_gap(out, directions[i:i + 1], 0.0)[0])
        diffs.append(abs(d - float(result.d_restored[i, layer, pos])))
    loop_wall, loop_cpu = time.perf_counter() - wall, time.process_time() - cpu
    # The subset ran its images' clean forwards in full and len(picks) cell forwards: scale the cell part.
    subset_flops = n_images * forward_flops(cfg) + len(picks) * forward_flops(cfg)
    scale = loop_flops(cfg, n_images) / subset_flops
    return {
        "model": f"{model_name} image tower, random init (seed {seed})", "images": n_images, "cells": n_cells,
        "loop_cells": len(picks), "threads": torch.get_num_threads(), "max_rows": max_rows,
        "cells_run": sum(result.cells_run), "pool": cfg.pool,
        "engine_wall": engine_wall, "engine_cpu": engine_cpu,
        "loop_wall_subset": loop_wall, "loop_cpu_subset": loop_cpu,
        "loop_wall_full": loop_wall * scale, "loop_cpu_full": loop_cpu * scale,
        "engine_flops": engine_flops(cfg, n_images, result.cells_run), "loop_flops": loop_flops(cfg, n_images),
        "loop_subset_flops": subset_flops,
        "max_abs_diff": max(diffs),
    }


def report(r: dict) -> str:
    """The benchmark's printed lines."""
    ceiling = r["loop_flops"] / r["engine_flops"]
    cpu_ratio = r["loop_cpu_full"] / r["engine_cpu"]
    engine_rate = r["engine_flops"] / r["engine_cpu"] / 1e9
    loop_rate = r["loop_subset_flops"] / r["loop_cpu_subset"] / 1e9
    per_image = r["cells"] // r["images"]
    return "\n".join([
        f"image causal tracing benchmark: {r['model']}, {r['images']} images x {per_image} cells = {r['cells']} cells, "
        f"{r['threads']} torch threads, engine batches of <= {r['max_rows']} cells",
        f"engine (all cells; {r['cells_run']} run, {r['cells'] - r['cells_run']} settled without a run):",
        f"    wall {r['engine_wall']:8.2f} s   cpu {r['engine_cpu']:8.2f} s   matmul FLOPs {r['engine_flops'] / 1e9:9.1f} G"
        f"   ({engine_rate:5.1f} GFLOP per cpu-s)",
        f"batch-1 loop ({r['loop_cells']} cells run):",
        f"    wall {r['loop_wall_subset']:8.2f} s   cpu {r['loop_cpu_subset']:8.2f} s   matmul FLOPs "
        f"{r['loop_subset_flops'] / 1e9:9.1f} G   ({loop_rate:5.1f} GFLOP per cpu-s)",
        f"batch-1 loop (all cells, EXTRAPOLATED from the {r['loop_cells']} run):",
        f"    wall {r['loop_wall_full']:8.2f} s   cpu {r['loop_cpu_full']:8.2f} s   matmul FLOPs {r['loop_flops'] / 1e9:9.1f} G",
        f"FLOP ratio (loop / engine): {ceiling:5.2f}x = the most an exact engine gains by doing less work "
        f"({r['pool']} readout; every block from the restored layer on changes at every position)",
        f"speed-up (loop / engine):     wall {r['loop_wall_full'] / r['engine_wall']:6.1f}x   cpu {cpu_ratio:6.1f}x"
        f"   (= FLOP ratio {ceiling:.2f} x FLOP-rate ratio {engine_rate / loop_rate:.2f})",
        f"max |engine - loop| on the loop's cells: {r['max_abs_diff']:.2e} (d in cosine units)",
    ])


def main(argv: Sequence[str] | None = None) -> int:
    from interp.vision.tracing import DEFAULT_MAX_ROWS

    parser = argparse.ArgumentParser(prog="python -m interp.bench image-trace", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ViT-B-32", help="open_clip ViT name, built with random init (default ViT-B-32)")
    parser.add_argument("--images", type=int, default=2, help="images traced (default 2)")
    parser.add_argument("--loop-cells", type=int, default=60, help="cells the batch-1 loop runs; the rest is extrapolated (default 60)")
    parser.add_argument("--max-rows", type=int, default=DEFAULT_MAX_ROWS,
                        help=f"engine: cells per batched run (default {DEFAULT_MAX_ROWS})")
    parser.add_argument("--threads", type=int, help="torch threads (default torch's choice; 1 gives the cleanest CPU times)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    print(report(run(args.model, args.images, args.loop_cells, args.threads, args.seed, args.max_rows)))  # noqa: T201 - the benchmark's output
    return 0
