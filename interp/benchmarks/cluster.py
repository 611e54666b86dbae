"""``python -m interp.bench cluster``: the trace sweep in-process against a ``local:N`` Dask cluster.

In one run, on the same items and model: (a) the sweep in this process with ``--threads`` torch
threads; (b) the same sweep on a LocalCluster of N worker processes that split those threads (2
threads, ``local:2``: one thread each). The cluster is started once and timed apart ("cold": start-up
plus every worker loading the model); the compared sweeps run on warm workers, alternating with the
in-process ones, ``--repeats`` times each, best of each kept. The item tables are compared byte for
byte with an in-process sweep at the workers' thread count (float32 reductions split differently
with another thread count, so the last bits can differ from the multi-threaded run; the largest
difference is printed). Times are wall and CPU (this process plus every worker process): on a
shared machine other jobs stretch wall time, while CPU time counts the work done, including the
cluster's overhead (pickling, scheduling, result transfer).
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import torch

from interp.data.negation import align_pairs, load_existence_pairs
from interp.models.loading import load_text_encoder, weights_fingerprint
from interp.runs.cluster import ModelRecipe, open_executor
from interp.runs.rundir import ItemTable
from interp.tracing.spec import TraceSpec
from interp.tracing.sweep import run_sweep

log = logging.getLogger("interp.bench.cluster")


def _worker_cpu(executor) -> float:
    """Summed CPU seconds of every worker process (0 in-process)."""
    client = getattr(executor, "client", None)
    return 0.0 if client is None else float(sum(client.run(time.process_time).values()))


def _sweep(model, items, executor, recipe, chunk_items, folder: Path) -> tuple[float, float, dict[str, bytes]]:
    """One full sweep into a fresh table: (wall s, CPU s of driver + workers, table bytes)."""
    table = ItemTable(folder)
    cpu0, workers0, wall0 = time.process_time(), _worker_cpu(executor), time.perf_counter()
    run_sweep(model, items, None, table, TraceSpec(model.cfg.n_layers), chunk_items=chunk_items, progress=False,
              executor=executor, recipe=recipe)
    wall = time.perf_counter() - wall0
    cpu = time.process_time() - cpu0 + _worker_cpu(executor) - workers0
    return wall, cpu, {p.name: p.read_bytes() for p in sorted(folder.glob("*.csv"))}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m interp.bench cluster", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="ViT-B-32", help="model (random init; default ViT-B-32)")
    p.add_argument("--items", type=int, default=32, help="existence items traced per sweep (default 32)")
    p.add_argument("--batch-size", type=int, default=4, help="items per task (default 4: 8 tasks, so the last task idles a worker little)")
    p.add_argument("--workers", type=int, default=2, help="worker processes of the LocalCluster (default 2)")
    p.add_argument("--threads", type=int, default=2, help="threads in-process, split between the workers (default 2)")
    p.add_argument("--repeats", type=int, default=2, help="alternating repeats of each side (default 2)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    torch.set_num_threads(args.threads)
    model = load_text_encoder(args.model, None, seed=0).eval()
    items = align_pairs(load_existence_pairs().pairs, model.tokenizer)[0][: args.items]
    recipe = ModelRecipe(args.model, None, fingerprint=weights_fingerprint(model))
    spec = f"local:{args.workers}"
    results: dict[str, list[tuple[float, float]]] = {"in-process": [], spec: []}
    tables: dict[str, dict[str, bytes]] = {}
    with tempfile.TemporaryDirectory() as tmp, open_executor("none") as here:
        clock = time.perf_counter()
        with open_executor(spec, threads=args.threads) as cluster:
            tables["cold"] = _sweep(model, items, cluster, recipe, args.batch_size, Path(tmp) / "cold")[2]
            start_s = time.perf_counter() - clock
            for r in range(args.repeats):
                ours = _sweep(model, items, here, None, args.batch_size, Path(tmp) / f"here{r}")
                theirs = _sweep(model, items, cluster, recipe, args.batch_size, Path(tmp) / f"cluster{r}")
                results["in-process"].append(ours[:2])
                results[spec].append(theirs[:2])
                tables["in-process"], tables[spec] = ours[2], theirs[2]
        per_worker = max(1, args.threads // args.workers)
        torch.set_num_threads(per_worker)  # the workers' thread count: the same float reductions
        one = _sweep(model, items, here, None, args.batch_size, Path(tmp) / "here-1")
        tables["in-process-1"] = one[2]
        torch.set_num_threads(args.threads)
    best = {k: min(v) for k, v in results.items()}
    cpu_best = {k: min(c for _, c in v) for k, v in results.items()}
    cells = sum(a.length * (model.cfg.n_layers + 1) for a in items)
    print(f"trace sweep: {args.model} (random init), {len(items)} items ({cells} cells), {args.batch_size} items per "  # noqa: T201
          f"task, torch {torch.__version__}; in-process {args.threads} threads vs {spec} "
          f"({per_worker} thread(s) each); best of {args.repeats}, alternating")
    print(f"  cold {spec} (start-up + model load on every worker + one sweep): {start_s:.1f} s wall")  # noqa: T201
    print("  | backend | wall s | CPU s (driver + workers) |")  # noqa: T201
    print("  |---|---|---|")  # noqa: T201
    for k in results:
        print(f"  | {k} | {best[k][0]:.2f} | {cpu_best[k]:.2f} |")  # noqa: T201
    print(f"  | in-process, {per_worker} thread(s), once | {one[0]:.2f} | {one[1]:.2f} |")  # noqa: T201
    print(f"  overhead ratio {spec} / in-process: wall {best[spec][0] / best['in-process'][0]:.2f}x, "  # noqa: T201
          f"CPU {cpu_best[spec] / cpu_best['in-process']:.2f}x")
    print(f"  item tables of {spec} byte-identical to in-process with {per_worker} thread(s): "  # noqa: T201
          f"{tables[spec] == tables['in-process-1'] == tables['cold']}; to in-process with {args.threads} threads: "
          f"{tables[spec] == tables['in-process']} (max |effect difference| {_max_effect_diff(tables[spec], tables['in-process']):.2e})")
    return 0


def _max_effect_diff(a: dict[str, bytes], b: dict[str, bytes]) -> float:
    """Largest |difference| of the ``effect`` column between two sets of item tables."""
    import io

    import numpy as np
    import pandas as pd

    worst = 0.0
    for name in a:
        x, y = (pd.read_csv(io.BytesIO(t[name]))["effect"].to_numpy() for t in (a, b))
        worst = max(worst, float(np.nanmax(np.abs(x - y), initial=0.0)))
    return worst
