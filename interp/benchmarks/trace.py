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
from typing import TYPE_CHECKING, Sequence

# Light imports only at module level (--help must not wait for torch); the work imports in main().
from interp.data.negation import align_pairs, load_existence_pairs
from interp.tracing.options import DEFAULT_BUDGET_MB, DEFAULT_CHUNK_ITEMS
from interp.tracing.spec import TraceSpec

if TYPE_CHECKING:
    from interp.data.negation import AlignedPair

log = logging.getLogger("interp.bench.trace")
_MATMUL_SHAPE = (2048, 512, 2048)


def measure_matmul_gflops(repeats: int = 20) -> float:
    """float32 GFLOP/s (wall) of a [2048 x 512] @ [512 x 2048] matmul (a transformer MLP's shape)."""
    return measure_matmul_rates(repeats)[0]


def measure_matmul_rates(repeats: int = 20) -> tuple[float, float]:
    """float32 matmul rate of the MLP-shaped product: (GFLOP per wall second, GFLOP per CPU second).

    The CPU rate is what one CPU-second of this process buys, whatever else loads the machine: the
    yardstick of the CPU-time floor."""
    import torch

    m, k, n = _MATMUL_SHAPE
    a, b = torch.randn(m, k), torch.randn(k, n)
    for _ in range(3):
        a @ b
    clock = _Clock()
    for _ in range(repeats):
        a @ b
    wall, cpu = clock.stop()
    flops = 2 * m * k * n * repeats
    return flops / wall / 1e9, flops / max(cpu, 1e-9) / 1e9


def _row_flops(cfg) -> float:
    """Dense FLOPs of one block on one position (QKV, O, MLP; attention scores are negligible)."""
    return 2.0 * (4 * cfg.d_model**2 + 2 * cfg.d_model * cfg.d_mlp)


def loop_flops(cfg, items: Sequence[AlignedPair], n_states: int) -> float:
    """FLOPs of one full forward per cell at each item's length (the loop and TL)."""
    return sum(n_states * a.length * cfg.n_layers * a.length * _row_flops(cfg) for a in items)


def floor_cells(model, items: Sequence[AlignedPair]) -> tuple[int, float]:
    """(cells that need compute, their FLOP floor) of a residual patching sweep.

    A cell (state l, position p) needs compute when no exact shortcut settles it: p at or after the
    first position where N and A differ (before it the patch is a no-op), 0 < l < L (layer 0 and
    the last state are settled exactly). Its floor is the least dense work any method must do: by
    causality only positions p..EOT change, from block l on; the last block needs K and V of those
    rows but the full block only on the pooled row."""
    cfg = model.cfg
    f_row, f_kv = _row_flops(cfg), 2.0 * 2 * cfg.d_model**2
    cells, total = 0, 0.0
    for a in items:
        n, first = a.length, a.negator_pos
        for start in range(1, cfg.n_layers):
            for p in range(first, n):
                rows = n - p
                cells += 1
                total += (cfg.n_layers - 1 - start) * rows * f_row + rows * f_kv + f_row
    return cells, total


def engine_flops(model, items: Sequence[AlignedPair]) -> float:
    """FLOPs the engine's fast path executes: the floor plus its clean runs (base, and the source
    from the first differing position; counted as two full runs, an upper bound)."""
    cfg = model.cfg
    clean = sum(2 * cfg.n_layers * a.length * _row_flops(cfg) for a in items)
    return floor_cells(model, items)[1] + clean


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


def _time_engine(model, items, chunk_items, budget_mb):
    from interp.runs.rundir import ItemTable
    from interp.tracing.sweep import run_sweep, text_directions

    directions = text_directions(model)
    with tempfile.TemporaryDirectory() as tmp:
        table = ItemTable(tmp)
        clock = _Clock()
        stats = run_sweep(model, items, lambda c, i: directions(c, i), table, TraceSpec(model.cfg.n_layers),
                          chunk_items=chunk_items, budget_mb=budget_mb, progress=False)
        return clock.stop(), stats


def _time_reference(model, items):
    from interp.tracing.inputs import TEXT_TARGET, build_runs
    from interp.tracing.reference import reference_patched_scores

    runs, _ = build_runs(model, items, TEXT_TARGET)
    clock = _Clock()
    result = reference_patched_scores(model, runs, TraceSpec(model.cfg.n_layers))
    return clock.stop(), result, runs


def _time_transformer_lens(model, items):
    """TL's get_act_patch_resid_pre per item; returns seconds and [item] of [n_layers, pos] scores."""
    import torch

    from transformer_lens import patching

    from interp.data.scoring import score
    from interp.tracing.sweep import explicit_text_directions

    patching.tqdm = lambda iterable, *a, **k: iterable  # silence TL's per-call progress bar
    directions = explicit_text_directions(model, items)
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
    parser.add_argument("--compare-chunks", default="",
                        help="also time the engine's full sweep at these --batch-size values, e.g. 1,4,16 (against the floor)")
    parser.add_argument("--budget-mb", type=float, default=DEFAULT_BUDGET_MB)
    parser.add_argument("--threads", type=int,
                        help="torch threads (default: the toolkit's choice, interp.runs.threads; 1 makes CPU time = work)")
    return parser


def floor_lines(model, items, seconds: tuple[float, float], rates: tuple[float, float], label: str) -> list[str]:
    """The engine's full sweep against its FLOP floor: achieved rate and CPU time over the CPU floor."""
    n_cells, floor = floor_cells(model, items)
    wall, cpu = seconds
    wall_rate, cpu_rate = rates
    floor_cpu = floor / (cpu_rate * 1e9)
    return [
        f"{label}: FLOP floor {floor / 1e12:.2f} TFLOP ({n_cells} cells need compute) = {floor_cpu:.1f} CPU s at the "
        f"measured {cpu_rate:.0f} GFLOP per CPU-s; engine {cpu:.1f} CPU s = {cpu / floor_cpu:.2f}x the floor; "
        f"achieved {floor / wall / 1e9:.1f} GFLOP/s wall (floor FLOPs / wall s) = {100 * floor / wall / 1e9 / wall_rate:.0f}% "
        f"of the matmul rate {wall_rate:.1f} GFLOP/s wall",
    ]


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import torch

    from interp.models.loading import load_text_encoder
    from interp.runs.threads import choose_threads
    from interp.tracing.engine import patched_scores, uses_fast_path

    torch.set_grad_enabled(False)  # a benchmark never needs autograd
    logging.basicConfig(level=logging.WARNING)
    n_threads, threads_reason = choose_threads(args.threads)
    torch.set_num_threads(n_threads)

    model = load_text_encoder(args.model, None, seed=args.seed)
    cfg = model.cfg
    aligned, _ = align_pairs(load_existence_pairs().pairs, model.tokenizer)
    items = aligned[: args.items] if args.items else aligned
    slow = items if args.slow_items == "all" else _subset(items, int(args.slow_items))
    n_cells = sum((cfg.n_layers + 1) * a.length for a in items)
    n_cells_tl = sum(cfg.n_layers * a.length for a in items)
    sub_cells = sum((cfg.n_layers + 1) * a.length for a in slow)
    sub_cells_tl = sum(cfg.n_layers * a.length for a in slow)

    compare_chunks = [int(c) for c in args.compare_chunks.split(",") if c.strip()]
    rates_before = measure_matmul_rates()
    peak = rates_before[0]
    engine_s, stats = _time_engine(model, items, args.batch_size, args.budget_mb)
    chunk_runs = [(c, _time_engine(model, items, c, args.budget_mb)[0]) for c in compare_chunks]
    engine_sub_s, _ = _time_engine(model, slow, args.batch_size, args.budget_mb)
    ref_s, ref, runs = _time_reference(model, slow)
    tl_s, tl = _time_transformer_lens(model, slow)
    rates_after = measure_matmul_rates()
    peak_after = rates_after[0]
    rates = ((rates_before[0] + rates_after[0]) / 2, (rates_before[1] + rates_after[1]) / 2)

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
        f"fp32, {torch.get_num_threads()} threads ({threads_reason}); fast path: {uses_fast_path(model)}",
        f"items: {len(items)} (lengths {min(a.length for a in items)}-{max(a.length for a in items)}), "
        f"cells: {n_cells} (engine/loop: {cfg.n_layers + 1} states x positions), {n_cells_tl} for TL ({cfg.n_layers} resid_pre)",
        f"slow methods on {len(slow)} items ({sub_cells} cells)" + (
            "; full-sweep times for them EXTRAPOLATED from their per-cell rate" if extrapolated else "; no extrapolation"),
        f"machine: float32 matmul {peak:.1f} GFLOP/s before, {peak_after:.1f} after "
        f"({rates_before[1]:.0f} and {rates_after[1]:.0f} GFLOP per CPU-s); load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}",
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
        "",
        *floor_lines(model, items, engine_s, rates, f"engine, full sweep, --batch-size {args.batch_size}"),
        *(line for c, s in chunk_runs for line in floor_lines(model, items, s, rates, f"engine, full sweep, --batch-size {c}")),
        f"parity on the subset: max |engine - loop| = {diff_ref:.2e}, max |engine - TL| = {diff_tl:.2e} (patched scores)",
    ]
    print("\n".join(lines))  # noqa: T201 - the benchmark's output
    return 0
