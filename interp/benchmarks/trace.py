"""``python -m interp.bench trace``: the tracing engine against the per-cell loop and TransformerLens.

On the same items, in one process, with the same model and threads:

(a) the engine: the full sweep as the CLI runs it (fixed item chunks, per-item table written);
(b) the plain per-cell reference loop (:mod:`interp.tracing.reference`: one batch-1 forward per cell);
(c) TransformerLens's own ``patching.get_act_patch_resid_pre`` on the same hooked model (one
    ``run_with_hooks`` forward per (layer, position) at the item's length), unadapted. TL covers resid_pre of blocks
    0..L-1 (L states), the engine and the loop L + 1 states; rates are compared per cell.

(b) and (c) take about a second per item on this machine's ViT-B-32-sized tower, so by default they
run on a fixed subset (items evenly spread over the length-sorted list) and the full-sweep figures
are extrapolated from their per-cell rate; the output says so. ``--slow-items all`` runs them on
everything. Ratios are also given side by side on the subset. Achieved GFLOP/s counts the dense
matmul FLOPs each method executes, against this machine's float32 matmul rate measured in the
same run. Times are given as wall time and as this process's CPU time: on a shared machine other
jobs stretch wall time, while CPU time (with ``--threads 1``) counts only the work done.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from typing import Sequence

import torch

from interp.data.negation import AlignedPair, align_pairs, load_existence_pairs
from interp.runs.rundir import ItemTable
from interp.data.scoring import score
from interp.tracing.engine import patched_scores, uses_fast_path
from interp.tracing.inputs import build_runs
from interp.tracing.reference import reference_patched_scores
from interp.tracing.spec import TraceSpec
from interp.tracing.sweep import DEFAULT_CHUNK_ITEMS, run_sweep, text_directions

log = logging.getLogger("interp.bench.trace")
_MATMUL_SHAPE = (2048, 512, 2048)


def measure_matmul_gflops(repeats: int = 20) -> float:
    """float32 GFLOP/s of a [2048 x 512] @ [512 x 2048] matmul (a transformer MLP's shape)."""
    m, k, n = _MATMUL_SHAPE
    a, b = torch.randn(m, k), torch.randn(k, n)
    for _ in range(3):
        a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * m * k * n * repeats / (time.perf_counter() - start) / 1e9


def _row_flops(cfg) -> float:
    """Dense FLOPs of one block on one position (QKV, O, MLP; attention scores are negligible)."""
    return 2.0 * (4 * cfg.d_model**2 + 2 * cfg.d_model * cfg.d_mlp)


def loop_flops(cfg, items: Sequence[AlignedPair], n_states: int) -> float:
    """FLOPs of one full forward per cell at each item's length (the loop and TL)."""
    return sum(n_states * a.length * cfg.n_layers * a.length * _row_flops(cfg) for a in items)


def engine_flops(model, items: Sequence[AlignedPair]) -> float:
    """FLOPs the engine's fast path executes (clean runs counted as two full runs: an upper bound)."""
    cfg = model.cfg
    f_row, f_kv = _row_flops(cfg), 2.0 * 2 * cfg.d_model**2
    total = 0.0
    for a in items:
        n, first = a.length, a.negator_pos
        total += 2 * cfg.n_layers * n * f_row  # clean base and source runs
        for start in range(1, cfg.n_layers):  # layer 0 and layer L cells are settled by shortcuts
            for p in range(first, n):
                rows = n - p
                total += (cfg.n_layers - 1 - start) * rows * f_row + rows * f_kv + f_row
    return total


class _Clock:
    """Wall time and this process's CPU time (all threads): on a shared machine other jobs stretch
    wall time, while CPU time counts only the work done."""

    def __init__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def stop(self) -> tuple[float, float]:
        return time.perf_counter() - self.wall, time.process_time() - self.cpu


def _subset(items: Sequence[AlignedPair], k: int) -> list[AlignedPair]:
    order = sorted(items, key=lambda a: a.length)
    if k >= len(order):
        return order
    step = len(order) / k
    return [order[int(i * step + step / 2)] for i in range(k)]


@torch.no_grad()
def _time_engine(model, items, chunk_items, budget_mb):
    directions = text_directions(model)
    with tempfile.TemporaryDirectory() as tmp:
        table = ItemTable(tmp)
        clock = _Clock()
        stats = run_sweep(model, items, lambda c, i: directions(c, i), table, TraceSpec(model.cfg.n_layers),
                          chunk_items=chunk_items, budget_mb=budget_mb, progress=False)
        return clock.stop(), stats


@torch.no_grad()
def _time_reference(model, items):
    runs, _ = build_runs(model, items, text_directions(model)(items, range(len(items))))
    clock = _Clock()
    result = reference_patched_scores(model, runs, TraceSpec(model.cfg.n_layers))
    return clock.stop(), result, runs


@torch.no_grad()
def _time_transformer_lens(model, items):
    """TL's get_act_patch_resid_pre per item; returns seconds and [item] of [n_layers, pos] scores."""
    from transformer_lens import patching

    patching.tqdm = lambda iterable, *a, **k: iterable  # silence TL's per-call progress bar
    directions = text_directions(model)(items, range(len(items)))
    outputs = []
    clock = _Clock()
    for k, item in enumerate(items):
        clean = torch.tensor([item.tokens_negated], device=model.device)
        corrupted = torch.tensor([item.tokens_affirmative], device=model.device)
        _, cache = model.run_with_cache(clean)
        direction = directions[k:k + 1]
        outputs.append(patching.get_act_patch_resid_pre(model, corrupted, cache, lambda e: score(e, direction).sum()))
    return clock.stop(), outputs


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m interp.bench trace", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="ViT-B-32", help="open_clip name, random init (default ViT-B-32)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--items", type=int, help="trace only the first N minimal pairs (default all 490)")
    parser.add_argument("--slow-items", default="12", help="items the slow methods run on ('all' = every item; default 12)")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_CHUNK_ITEMS, help="items traced together (as interp.trace)")
    parser.add_argument("--budget-mb", type=float, default=768)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    from interp.models.loading import load_text_encoder

    model = load_text_encoder(args.model, None, seed=args.seed)
    cfg = model.cfg
    aligned, _ = align_pairs(load_existence_pairs().pairs, model.tokenizer)
    items = aligned[: args.items] if args.items else aligned
    slow = items if args.slow_items == "all" else _subset(items, int(args.slow_items))
    n_cells = sum((cfg.n_layers + 1) * a.length for a in items)
    n_cells_tl = sum(cfg.n_layers * a.length for a in items)
    sub_cells = sum((cfg.n_layers + 1) * a.length for a in slow)
    sub_cells_tl = sum(cfg.n_layers * a.length for a in slow)

    peak = measure_matmul_gflops()
    engine_s, stats = _time_engine(model, items, args.batch_size, args.budget_mb)
    engine_sub_s, _ = _time_engine(model, slow, args.batch_size, args.budget_mb)
    ref_s, ref, runs = _time_reference(model, slow)
    tl_s, tl = _time_transformer_lens(model, slow)
    peak_after = measure_matmul_gflops()

    # parity on the subset: engine vs loop (all states) and vs TL (states 0..L-1)
    engine_sub = patched_scores(model, runs, TraceSpec(cfg.n_layers))
    diff_ref = float((engine_sub.patched.double().cpu() - ref.patched).abs().nan_to_num(0).max())
    diff_tl = max(float((engine_sub.patched[k, : cfg.n_layers, : a.length].double().cpu() - tl[k].double().cpu()).abs().max())
                  for k, a in enumerate(slow))

    extrapolated = args.slow_items != "all" and len(slow) < len(items)
    load = os.getloadavg()
    lines = [
        f"python -m interp.bench trace {' '.join(argv or [])}".rstrip(),
        f"model {cfg.model_name} (random init, seed {args.seed}): {cfg.n_layers} layers, d_model {cfg.d_model}, "
        f"fp32, {torch.get_num_threads()} threads; fast path: {uses_fast_path(model)}",
        f"items: {len(items)} (lengths {min(a.length for a in items)}-{max(a.length for a in items)}), "
        f"cells: {n_cells} (engine/loop: {cfg.n_layers + 1} states x positions), {n_cells_tl} for TL ({cfg.n_layers} resid_pre)",
        f"slow methods on {len(slow)} items ({sub_cells} cells)" + (
            "; full-sweep times for them EXTRAPOLATED from their per-cell rate" if extrapolated else "; no extrapolation"),
        f"machine: float32 matmul {peak:.1f} GFLOP/s before, {peak_after:.1f} after; load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}",
        "",
        "| method | items | wall s | CPU s | cells/s (wall) | engine speedup per cell (wall / CPU) | GFLOP/s (wall) | % of matmul rate |",
        "|---|---|---|---|---|---|---|---|",
    ]
    peak_mean = (peak + peak_after) / 2
    (e_wall, e_cpu), (es_wall, es_cpu), (r_wall, r_cpu), (t_wall, t_cpu) = engine_s, engine_sub_s, ref_s, tl_s
    rows = [
        ("engine, full sweep (CLI path, table written)", len(items), e_wall, e_cpu, n_cells, None, engine_flops(model, items)),
        ("engine, subset", len(slow), es_wall, es_cpu, sub_cells, None, engine_flops(model, slow)),
        ("per-cell loop, subset", len(slow), r_wall, r_cpu, sub_cells, (r_wall / sub_cells, r_cpu / sub_cells),
         loop_flops(cfg, slow, cfg.n_layers + 1)),
        ("TL get_act_patch_resid_pre, subset", len(slow), t_wall, t_cpu, sub_cells_tl,
         (t_wall / sub_cells_tl, t_cpu / sub_cells_tl), loop_flops(cfg, slow, cfg.n_layers)),
    ]
    engine_cell = (es_wall / sub_cells, es_cpu / sub_cells)
    for name, n, wall, cpu, cells, per_cell, flops in rows:
        speed = "" if per_cell is None else f"{per_cell[0] / engine_cell[0]:.1f}x / {per_cell[1] / engine_cell[1]:.1f}x"
        gflops = flops / wall / 1e9
        lines.append(f"| {name} | {n} | {wall:.1f} | {cpu:.1f} | {cells / wall:.0f} | {speed} | {gflops:.1f} | "
                     f"{100 * gflops / peak_mean:.0f}% |")
    ref_full = (r_wall / sub_cells * n_cells) if extrapolated else r_wall
    tl_full = (t_wall / sub_cells_tl * n_cells_tl) if extrapolated else t_wall
    lines += [
        "",
        f"full sweep of {len(items)} items: engine {e_wall:.1f} s wall ({e_cpu:.1f} s CPU); per-cell loop {ref_full:.0f} s"
        f"{' (extrapolated)' if extrapolated else ''} -> {ref_full / e_wall:.1f}x; TL {tl_full:.0f} s"
        f"{' (extrapolated)' if extrapolated else ''} -> {(tl_full / n_cells_tl) / (e_wall / n_cells):.1f}x per cell",
        f"engine cells: {stats.cells_forward} by forward, {stats.cells_shortcut} by exact shortcuts",
        f"parity on the subset: max |engine - loop| = {diff_ref:.2e}, max |engine - TL| = {diff_tl:.2e} (patched scores)",
    ]
    print("\n".join(lines))  # noqa: T201 - the benchmark's output
    return 0
