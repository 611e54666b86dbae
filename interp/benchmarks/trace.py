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
import math
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
    """float32 matmul rate of one big MLP-shaped product: (GFLOP per wall second, GFLOP per CPU second).

    The CPU rate is what one CPU-second of this process buys, whatever else loads the machine: the
    yardstick of the CPU-time floor."""
    return gemm_rates([_MATMUL_SHAPE] * repeats)


def gemm_rates(shapes: Sequence[tuple[int, int, int]], repeats: int = 2) -> tuple[float, float]:
    """float32 rate of the products ``[m x k] @ [k x n]`` (plus a bias row, as the engine's addmm),
    each run ``repeats`` times after one warm-up: (GFLOP per wall second, GFLOP per CPU second) over
    all of them, i.e. weighted by each product's FLOPs."""
    import torch

    operands = {}
    for m, k, n in set(shapes):
        operands[m, k, n] = (torch.randn(n), torch.randn(m, k), torch.randn(k, n))
        torch.addmm(*operands[m, k, n])
    clock = _Clock()
    for _ in range(repeats):
        for shape in shapes:
            torch.addmm(*operands[shape])
    wall, cpu = clock.stop()
    flops = repeats * sum(2.0 * m * k * n for m, k, n in shapes)
    return flops / max(wall, 1e-9) / 1e9, flops / max(cpu, 1e-9) / 1e9


def engine_gemm_shapes(model, items: Sequence[AlignedPair], batch_size: int, budget_mb: float,
                       n_chunks: int = 4) -> tuple[list[tuple[int, int, int]], int]:
    """The (m, k, n) of every dense product (addmm, addmm_, mm, and their out= forms) the engine runs on ``n_chunks`` chunks of the
    sweep's own plan, spread evenly over it (chunks hold items of similar length, so a sample of
    whole chunks has the full sweep's shapes). Returns the shapes and how many chunks they cover."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    from interp.tracing.engine import patched_scores
    from interp.tracing.inputs import TEXT_TARGET, build_runs
    from interp.tracing.sweep import chunk_plan

    plan = chunk_plan(items, batch_size)
    picked = [plan[int(i * len(plan) / n_chunks)] for i in range(min(n_chunks, len(plan)))]
    shapes: list[tuple[int, int, int]] = []

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            # addmm_: into the residual; .out: into a reused buffer
            if func in (torch.ops.aten.addmm.default, torch.ops.aten.addmm_.default, torch.ops.aten.addmm.out):
                shapes.append((args[1].shape[0], args[1].shape[1], args[2].shape[1]))
            elif func in (torch.ops.aten.mm.default, torch.ops.aten.mm.out):
                shapes.append((args[0].shape[0], args[0].shape[1], args[1].shape[1]))
            return func(*args, **(kwargs or {}))

    spec = TraceSpec(model.cfg.n_layers)
    for chunk in picked:
        runs, _ = build_runs(model, [items[i] for i in chunk], TEXT_TARGET)
        with Record():
            patched_scores(model, runs, spec, budget_mb=budget_mb)
    return shapes, len(picked)


def first_difference(a: AlignedPair) -> int:
    """The first position where the pair's token ids differ (before it, patching changes nothing)."""
    return next((p for p, (x, y) in enumerate(zip(a.tokens_negated, a.tokens_affirmative)) if x != y), a.length)


def _row_flops(cfg) -> float:
    """Dense FLOPs of one block on one position (QKV, O, MLP; attention scores are negligible)."""
    return 2.0 * (4 * cfg.d_model**2 + 2 * cfg.d_model * cfg.d_mlp)


def loop_flops(cfg, items: Sequence[AlignedPair], n_states: int) -> float:
    """FLOPs of one full forward per cell at each item's length (the loop and TL)."""
    return sum(n_states * a.length * cfg.n_layers * a.length * _row_flops(cfg) for a in items)


def floor_cells(model, items: Sequence[AlignedPair]) -> tuple[int, float]:
    """(cells that need compute, their FLOP floor) of a residual patching sweep.

    A cell (state l, position p) needs compute when no exact shortcut settles it: p at or after the
    first position where N and A token ids differ (before it the patch is a no-op), 0 < l < L (layer 0 and
    the last state are settled exactly). Its floor is the dense work of the issue's definition: by
    causality only positions p..EOT change, from block l on; the last block needs K and V of those
    rows but the full block only on the pooled row. One more exact saving is left in this count
    (:func:`unchanged_rows_flops`)."""
    cfg = model.cfg
    f_row, f_kv = _row_flops(cfg), 2.0 * 2 * cfg.d_model**2
    cells, total = 0, 0.0
    for a in items:
        n, first = a.length, first_difference(a)
        for start in range(1, cfg.n_layers):
            for p in range(first, n):
                rows = n - p
                cells += 1
                total += (cfg.n_layers - 1 - start) * rows * f_row + rows * f_kv + f_row
    return cells, total


def unchanged_rows_flops(model, items: Sequence[AlignedPair]) -> float:
    """Dense FLOPs :func:`floor_cells` counts that an exact method need not do: at its first block l a
    cell's rows after p still hold the base run's state, so their Q/K/V (at the last block, their K/V)
    are the base run's, which the clean run has computed. The least exact work is the floor minus
    this (3.2% of the cells' floor on the 490 pairs). The engine skips it below the last block."""
    cfg = model.cfg
    f_qkv, f_kv = 2.0 * 3 * cfg.d_model**2, 2.0 * 2 * cfg.d_model**2
    total = 0.0
    for a in items:
        n, first = a.length, first_difference(a)
        for start in range(1, cfg.n_layers):
            total += sum(n - p - 1 for p in range(first, n)) * (f_qkv if start < cfg.n_layers - 1 else f_kv)
    return total


def clean_floor(model, items: Sequence[AlignedPair]) -> float:
    """FLOP floor of the two clean runs every patching method needs (the base and source scores, and
    the states a patch writes and reads): the base run on every position, the source run from the
    first position where N and A differ (before it the two runs are the same); each through blocks
    0..L-2 on all its rows and, at the last block, keys and values of its rows and the full block on
    the pooled row only."""
    cfg = model.cfg
    f_row, f_kv = _row_flops(cfg), 2.0 * 2 * cfg.d_model**2
    total = 0.0
    for a in items:
        for rows in (a.length, a.length - first_difference(a)):
            total += (cfg.n_layers - 1) * rows * f_row + rows * f_kv + f_row
    return total


def engine_flops(model, items: Sequence[AlignedPair]) -> float:
    """Dense FLOPs the engine's fast path executes, to within 1% (``tests/test_trace_floor.py``
    records them): the least exact work, i.e. the cells' and clean runs' floors less the unchanged
    rows' Q/K/V it reads from the clean run."""
    return floor_cells(model, items)[1] + clean_floor(model, items) - unchanged_rows_flops(model, items)


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


class _RateSampler:
    """The big product's matmul rate sampled between the sweep's chunks, so that the floor's yardstick
    is measured while the sweep runs: on a shared machine the rate drifts by 10% or more within a
    minute, and a rate taken only before and after can fall in another phase than the sweep."""

    def __init__(self, products: int = 2):
        import torch

        m, k, n = _MATMUL_SHAPE
        self.operands = (torch.randn(n), torch.randn(m, k), torch.randn(k, n))
        torch.addmm(*self.operands)
        self.products, self.flops, self.wall, self.cpu = products, 0.0, 0.0, 0.0
        self.overhead = (0.0, 0.0)  # (wall, CPU) of the untimed warm-up products

    def sample(self) -> None:
        """One untimed product (the sweep has evicted the operands from the caches: timed cold, the
        rate would read low and flatter the sweep), then ``products`` timed ones."""
        import torch

        warm = _Clock()
        torch.addmm(*self.operands)
        self.overhead = tuple(a + b for a, b in zip(self.overhead, warm.stop()))
        clock = _Clock()
        for _ in range(self.products):
            torch.addmm(*self.operands)
        wall, cpu = clock.stop()
        self.flops += self.products * 2.0 * math.prod(_MATMUL_SHAPE)
        self.wall, self.cpu = self.wall + wall, self.cpu + cpu

    def rates(self) -> tuple[float, float]:
        """(GFLOP per wall second, GFLOP per CPU second) over all samples."""
        return self.flops / max(self.wall, 1e-9) / 1e9, self.flops / max(self.cpu, 1e-9) / 1e9


def _time_engine(model, items, chunk_items, budget_mb, sampler: _RateSampler | None = None):
    """The CLI's sweep, timed; ``stats.engine_cpu`` is the CPU time spent inside the engine
    (:func:`~interp.tracing.engine.patched_scores`), the rest being token batches, layer-0 inputs and the table.
    With a ``sampler``, the big product's rate is sampled after every chunk; the samples' time is
    taken out of the sweep's."""
    from interp.runs.rundir import ItemTable
    from interp.tracing import sweep

    directions = sweep.text_directions(model)
    engine_cpu = [0.0]
    inner = sweep.patched_scores

    def timed(*args, **kwargs):
        start = time.process_time()
        try:
            return inner(*args, **kwargs)
        finally:
            engine_cpu[0] += time.process_time() - start
            if sampler is not None:
                sampler.sample()

    sweep.patched_scores = timed
    try:
        with tempfile.TemporaryDirectory() as tmp:
            table = ItemTable(tmp)
            clock = _Clock()
            stats = sweep.run_sweep(model, items, lambda c, i: directions(c, i), table, TraceSpec(model.cfg.n_layers),
                                    chunk_items=chunk_items, budget_mb=budget_mb, progress=False)
            wall, cpu = clock.stop()
            if sampler is not None:  # the samples' own time is not the sweep's
                wall, cpu = wall - sampler.wall - sampler.overhead[0], cpu - sampler.cpu - sampler.overhead[1]
            seconds = (wall, cpu)
    finally:
        sweep.patched_scores = inner
    stats.engine_cpu = engine_cpu[0]
    return seconds, stats


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


def floor_lines(model, items, seconds: tuple[float, float], engine_cpu: float, rates: dict[str, tuple[float, float]],
                label: str) -> list[str]:
    """The engine's full sweep against its FLOP floor, in CPU time, at each measured matmul rate.

    Three floors: the cells that need compute alone; those cells plus the two clean runs (which any
    method needs for the base and source scores): the issue's 4.37 TFLOP; and that less the unchanged
    rows' Q/K/V (:func:`unchanged_rows_flops`), the least exact work. ``rates`` maps a name to
    (GFLOP per wall s, GFLOP per CPU s)."""
    n_cells, cells = floor_cells(model, items)
    clean = clean_floor(model, items)
    unchanged = unchanged_rows_flops(model, items)
    wall, cpu = seconds
    lines = [f"{label}: {wall:.1f} s wall, {cpu:.1f} CPU s, of which {engine_cpu:.1f} CPU s inside the engine "
             f"(patched_scores; the rest: token batches, layer-0 inputs, the per-item table)"]
    for floor_name, flops in (("cells", cells), ("cells + clean runs", cells + clean),
                              ("cells + clean runs - unchanged rows' Q/K/V", cells + clean - unchanged)):
        ratios = []
        for rate_name, (_, cpu_rate) in rates.items():
            floor_cpu = flops / (cpu_rate * 1e9)
            ratios.append(f"{floor_cpu:.1f} CPU s at the {rate_name} rate -> sweep {cpu / floor_cpu:.2f}x, "
                          f"engine {engine_cpu / floor_cpu:.2f}x")
        lines.append(f"  floor of the {floor_name}: {flops / 1e12:.2f} TFLOP = " + "; ".join(ratios))
    lines.append(f"  ({n_cells} cells need compute; clean runs {clean / 1e12:.2f} TFLOP; achieved "
                 f"{cells / wall / 1e9:.1f} GFLOP/s wall on the cells' floor FLOPs)")
    return lines


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
    sampler = _RateSampler()
    engine_s, stats = _time_engine(model, items, args.batch_size, args.budget_mb, sampler)
    chunk_runs = [(c, *_time_engine(model, items, c, args.budget_mb)) for c in compare_chunks]
    # the matmul rate on the engine's own GEMM shapes (recorded on a sample of the plan's chunks), per batch size
    shape_rates = {}
    for c in [args.batch_size, *compare_chunks]:
        shapes, n_sampled = engine_gemm_shapes(model, items, c, args.budget_mb)
        shape_rates[c] = (gemm_rates(shapes), len(shapes), n_sampled)
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
        f"matmul rates (GFLOP per CPU-s): one big [2048 x 512] @ [512 x 2048] product {sampler.rates()[1]:.0f} "
        f"sampled between the sweep's chunks ({sampler.products} timed products after each chunk and "
        f"one warm-up, their time not counted in the sweep's), {rates[1]:.0f} before and after (mean); the engine's own GEMM shapes " + ", ".join(
            f"{r[0][1]:.0f} at --batch-size {c} ({r[1]} products of {r[2]} chunks)" for c, r in shape_rates.items()),
        *floor_lines(model, items, engine_s, stats.engine_cpu,
                     {"in-sweep big-matmul": sampler.rates(), "before/after big-matmul": rates,
                      "engine-shape": shape_rates[args.batch_size][0]}, f"engine, full sweep, --batch-size {args.batch_size}"),
        *(line for c, s, st in chunk_runs
          for line in floor_lines(model, items, s, st.engine_cpu,
                                  {"before/after big-matmul": rates, "engine-shape": shape_rates[c][0]},
                                  f"engine, full sweep, --batch-size {c}")),
        f"parity on the subset: max |engine - loop| = {diff_ref:.2e}, max |engine - TL| = {diff_tl:.2e} (patched scores)",
    ]
    print("\n".join(lines))  # noqa: T201 - the benchmark's output
    return 0
