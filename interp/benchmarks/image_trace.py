"""``python -m interp.bench image-trace``: the image tracing engine against a per-cell batch-1 loop.

Same images, same corruption, same model and threads, in one process:

(a) the engine, :func:`interp.vision.tracing.trace_image`: every (layer, position) cell, batched,
    each layer's cells started at that layer from the cached corrupted state;
(b) the plain loop: clean states cached once per image, then one full batch-1 corrupted forward per
    cell with a hook restoring that cell (the way TransformerLens's patching helpers work).

The loop takes about as long per cell as one forward, so by default it runs on a seeded random
subset of cells and its full-grid time is extrapolated from its per-cell rate; the output says so.
The subset's loop values are compared with the engine's (max |diff|). Times are wall and this
process's CPU time: on a shared machine other jobs stretch wall time.
"""

from __future__ import annotations

import argparse
import logging
import time
from typing import Sequence

import numpy as np
import torch

log = logging.getLogger("interp.bench.image_trace")


def _clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


@torch.no_grad()
def run(model_name: str, n_images: int, loop_cells: int, threads: int | None, seed: int) -> dict:
    from interp.models.clip import load_image_encoder
    from interp.vision.scores import score_gap
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

    trace_image(model, images[:1], directions[:1], 0.0, Corruption(noise=corruption.noise[:1]))  # warm-up
    wall, cpu = _clock()
    result = trace_image(model, images, directions, 0.0, corruption)
    engine_wall, engine_cpu = time.perf_counter() - wall, time.process_time() - cpu

    rng = np.random.default_rng(seed)
    picks = rng.choice(n_cells, size=min(loop_cells, n_cells), replace=False)
    diffs = []
    wall, cpu = _clock()
    clean_states = {}
    for i in range(n_images):  # clean states once per image, as a careful loop would
        names = {model.resid_hook_name(layer) for layer in range(n_states)}
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
    scale = n_cells / len(picks)
    return {
        "model": f"{model_name} image tower, random init (seed {seed})", "images": n_images, "cells": n_cells,
        "loop_cells": len(picks), "threads": torch.get_num_threads(),
        "engine_wall": engine_wall, "engine_cpu": engine_cpu,
        "loop_wall_subset": loop_wall, "loop_cpu_subset": loop_cpu,
        "loop_wall_full": loop_wall * scale, "loop_cpu_full": loop_cpu * scale,
        "max_abs_diff": max(diffs),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m interp.bench image-trace", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ViT-B-32", help="open_clip ViT name, built with random init (default ViT-B-32)")
    parser.add_argument("--images", type=int, default=2, help="images traced (default 2)")
    parser.add_argument("--loop-cells", type=int, default=60, help="cells the batch-1 loop runs; the rest is extrapolated (default 60)")
    parser.add_argument("--threads", type=int, help="torch threads (default torch's choice; 1 gives the cleanest CPU times)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    r = run(args.model, args.images, args.loop_cells, args.threads, args.seed)
    lines = [
        f"image causal tracing benchmark: {r['model']}, {r['images']} images x {r['cells'] // r['images']} cells "
        f"= {r['cells']} cells, {r['threads']} torch threads",
        f"engine (all cells):           wall {r['engine_wall']:8.2f} s   cpu {r['engine_cpu']:8.2f} s",
        f"batch-1 loop ({r['loop_cells']} cells run):   wall {r['loop_wall_subset']:8.2f} s   cpu {r['loop_cpu_subset']:8.2f} s",
        f"batch-1 loop (all cells, EXTRAPOLATED from the {r['loop_cells']} run): wall {r['loop_wall_full']:8.2f} s   "
        f"cpu {r['loop_cpu_full']:8.2f} s",
        f"speed-up (loop / engine):     wall {r['loop_wall_full'] / r['engine_wall']:6.1f}x   "
        f"cpu {r['loop_cpu_full'] / r['engine_cpu']:6.1f}x",
        f"max |engine - loop| on the loop's cells: {r['max_abs_diff']:.2e} (d in cosine units)",
    ]
    print("\n".join(lines))  # noqa: T201 - the benchmark's output
    return 0
