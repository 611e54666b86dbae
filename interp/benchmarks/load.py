"""``python -m interp.bench load``: time and memory of loading a hooked text encoder.

Each way of loading runs in its own fresh interpreter (peak memory is per process), one after the
other in this run:

- ``lean``: :func:`interp.models.loading.load_text_encoder` as the commands call it (the text
  tower alone, for random init and checkpoint files);
- ``full``: the way it was done before, and still the only way for models whose text tower open_clip
  builds only inside the full model: the whole open_clip CLIP (image tower included), then its text
  tower converted with :func:`interp.models.loading.hooked_from_open_clip`.

Reported per way: wall and CPU seconds of the load call alone (imports excluded, they are shown
apart), and the memory it allocated: peak resident memory during the load minus resident memory
just before it (``ru_maxrss`` and ``/proc/self/statm``; Linux).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from typing import Sequence

# What each child process runs: imports, then one load, measured with getrusage.
_CHILD = r"""
import json, os, resource, sys, time
def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime
way, name, seed, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
t0, c0 = time.perf_counter(), cpu()
import torch
if threads:
    torch.set_num_threads(threads)
from interp.models.compat import import_open_clip
import_open_clip()
from interp.models import loading
import_wall, import_cpu = time.perf_counter() - t0, cpu() - c0
before = rss_mb()
t0, c0 = time.perf_counter(), cpu()
if way == "lean":
    model = loading.load_text_encoder(name, None, seed=seed)
else:
    full = loading.create_open_clip_model(name, None, seed=seed)
    model = loading.hooked_from_open_clip(full, name)
    del full
wall, cpu_s = time.perf_counter() - t0, cpu() - c0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
n_params = sum(p.numel() for p in model.parameters())
print(json.dumps({"way": way, "wall": wall, "cpu": cpu_s, "import_wall": import_wall, "import_cpu": import_cpu,
                  "rss_before_mb": before, "peak_mb": peak, "allocated_mb": peak - before,
                  "held_mb": rss_mb() - before, "params": n_params, "param_mb": n_params * 4 / 2**20,
                  "threads": torch.get_num_threads()}))
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m interp.bench load", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="ViT-B-32", help="open_clip model name, random init (default ViT-B-32)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ways", default="lean,full", help="comma list from lean,full (default both)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads in the children (default 1: CPU time = work)")
    return parser


def measure(way: str, model: str, seed: int, threads: int) -> dict:
    """Run one load in a fresh interpreter and return its measurements."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    proc = subprocess.run([sys.executable, "-c", _CHILD, way, model, str(seed), str(threads)],
                          capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"the {way} load failed: {proc.stderr.strip()[-500:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    ways = [w.strip() for w in args.ways.split(",") if w.strip()]
    rows = [measure(way, args.model, args.seed, args.threads) for way in ways]
    load = os.getloadavg()
    lines = [
        f"python -m interp.bench load {' '.join(argv or [])}".rstrip(),
        f"model {args.model}, random init (seed {args.seed}), fp32, {args.threads} torch thread(s), one fresh process per way; "
        f"load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}",
        f"hooked text encoder: {rows[0]['params'] / 1e6:.1f}M parameters = {rows[0]['param_mb']:.0f} MB",
        "",
        "| way | load wall s | load CPU s | allocated MB (peak - before) | held after MB | imports CPU s |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['way']} | {r['wall']:.2f} | {r['cpu']:.2f} | {r['allocated_mb']:.0f} | {r['held_mb']:.0f} | {r['import_cpu']:.2f} |")
    if len(rows) == 2:
        lean, full = rows
        lines += ["", f"lean / full: CPU {lean['cpu'] / full['cpu']:.2f}x, allocated {lean['allocated_mb'] / full['allocated_mb']:.2f}x"]
    print("\n".join(lines))  # noqa: T201 - the benchmark's output
    return 0
