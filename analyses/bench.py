"""Runtime figures for docs/analyses.md: ``python -m analyses.bench [--pairs 5000 --dim 512 ...]``.

Times, on synthetic paired data (a noisy rotated copy): linear / debiased linear / RBF / debiased RBF
CKA on ``--pairs`` pairs, a permutation baseline, streaming linear CKA on ``--stream-pairs`` x
``--stream-dim``, and the matching protocol's seeded QAP (``--n-base`` + ``--n-query``, ``--restarts``
FAQ restarts) and local CKA, and (``--tasks maps``) the three linear maps of :func:`compare_maps` on
``--map-pairs`` x ``--map-dim``. Prints one line per timing and writes a CSV when ``--csv`` is given.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

# Light imports only at module level (--help must not wait for numpy, scipy or torch).
from analyses.options import AssignmentMapConfig

if TYPE_CHECKING:
    import numpy as np


def _timed(fn: Callable[[], object]) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m analyses.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--pairs", type=int, default=5000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--permutations", type=int, default=100)
    p.add_argument("--stream-pairs", type=int, default=50000)
    p.add_argument("--stream-dim", type=int, default=1024)
    p.add_argument("--n-base", type=int, default=320)
    p.add_argument("--n-query", type=int, default=500)
    p.add_argument("--restarts", type=int, default=50)
    p.add_argument("--match-dim", type=int, default=64)
    p.add_argument("--noise", type=float, default=1.0)
    p.add_argument("--map-pairs", type=int, default=20000)
    p.add_argument("--map-dim", type=int, default=512)
    p.add_argument("--map-prototypes", type=int, default=None, help="default: the config's rule")
    p.add_argument("--map-batch", type=int, default=AssignmentMapConfig.batch_size)
    p.add_argument("--map-temperature", type=float, default=AssignmentMapConfig.temperature)
    p.add_argument("--map-min-steps", type=int, default=AssignmentMapConfig.min_steps)
    p.add_argument("--tasks", default="cka,matching", help="comma list from cka,matching,maps (default cka,matching)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--csv", help="also write the timings here")
    args = p.parse_args(argv)
    import numpy as np
    import pandas as pd
    import torch
    from scipy.stats import ortho_group

    from analyses.assignment_map import compare_maps

    rng = np.random.default_rng(args.seed)
    rows = []

    def record(task: str, seconds: float, value: float | None = None) -> None:
        rows.append({"task": task, "seconds": round(seconds, 3), "value": value})
        print(f"{task:<58s} {seconds:8.2f} s" + ("" if value is None else f"   value {value:.4f}"), flush=True)  # noqa: T201

    tasks = {t.strip() for t in args.tasks.split(",")}
    if "cka" in tasks:
        _bench_cka(args, rng, record)
    if "matching" in tasks:
        _bench_matching(args, rng, record)
    if "maps" in tasks:
        x = rng.normal(size=(args.map_pairs, args.map_dim))
        y = x @ ortho_group.rvs(args.map_dim, random_state=args.seed) + rng.normal(size=(args.map_pairs, args.map_dim))
        cfg = AssignmentMapConfig(max_prototypes=args.map_prototypes, batch_size=args.map_batch,
                                  temperature=args.map_temperature, min_steps=args.map_min_steps, seed=args.seed)
        seconds, table = _timed(lambda: compare_maps(x, y, seed=args.seed, config=cfg))
        for row in table.itertuples():
            record(f"{row.map} map, {args.map_pairs} x {args.map_dim} (held-out top-1)", seconds, row.top1)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "  # noqa: T201
          f"torch threads {torch.get_num_threads()}, 1-min load average {load:.1f}")
    if args.csv:
        pd.DataFrame(rows).to_csv(args.csv, index=False)
    return 0


def _bench_cka(args: argparse.Namespace, rng: np.random.Generator, record: Callable) -> None:
    import numpy as np
    from scipy.stats import ortho_group

    from analyses.similarity import LinearCKAAccumulator, linear_cka, permutation_test, rbf_cka

    x = rng.normal(size=(args.pairs, args.dim))
    y = x @ ortho_group.rvs(args.dim, random_state=args.seed) + 2.0 * rng.normal(size=(args.pairs, args.dim))
    for name, fn in [
        ("linear CKA", lambda: linear_cka(x, y)),
        ("debiased linear CKA", lambda: linear_cka(x, y, debiased=True)),
        ("RBF CKA (median heuristic)", lambda: rbf_cka(x, y)),
        ("debiased RBF CKA", lambda: rbf_cka(x, y, debiased=True)),
    ]:
        seconds, value = _timed(fn)
        record(f"{name}, {args.pairs} x {args.dim}", seconds, float(value))
    seconds, res = _timed(lambda: permutation_test(x, y, n_permutations=args.permutations))
    record(f"linear CKA + {args.permutations} permutations, {args.pairs} x {args.dim}", seconds, res.null_mean)

    def stream() -> float:
        acc = LinearCKAAccumulator()
        chunk_rng = np.random.default_rng(args.seed + 1)
        for start in range(0, args.stream_pairs, 5000):
            b = min(5000, args.stream_pairs - start)
            xb = chunk_rng.normal(size=(b, args.stream_dim))
            acc.update(xb, xb[:, ::-1] + chunk_rng.normal(size=(b, args.stream_dim)))
        return acc.cka()

    seconds, value = _timed(stream)
    record(f"streaming linear CKA, {args.stream_pairs} x {args.stream_dim} (chunks of 5000)", seconds, float(value))


def _bench_matching(args: argparse.Namespace, rng: np.random.Generator, record: Callable) -> None:
    import numpy as np
    from scipy.stats import ortho_group

    from analyses.matching import hungarian_accuracy, local_cka_scores, seeded_qap

    n = args.n_base + args.n_query
    xm = rng.normal(size=(n, args.match_dim))
    ym = xm @ ortho_group.rvs(args.match_dim, random_state=args.seed) + args.noise * rng.normal(size=(n, args.match_dim))
    base, query = np.arange(args.n_base), np.arange(args.n_base, n)
    seconds, res = _timed(lambda: seeded_qap(xm, ym, base, query, n_restarts=args.restarts, seed=args.seed))
    record(f"seeded QAP, {args.n_base} base + {args.n_query} queries, {args.restarts} restarts (accuracy)", seconds,
           res.accuracy)
    seconds, acc = _timed(lambda: hungarian_accuracy(local_cka_scores(xm[base], xm[query], ym[base], ym[query])))
    record(f"local CKA + Hungarian, {args.n_base} base + {args.n_query} queries (accuracy)", seconds, acc)


def cli(argv: Sequence[str] | None = None) -> int:
    return main(argv)


if __name__ == "__main__":
    raise SystemExit(cli())
