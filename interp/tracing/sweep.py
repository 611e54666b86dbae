"""A resumable tracing sweep over minimal pairs: fixed chunks of items, one table file per item.

Items are cut into fixed chunks (sorted by token length, so a chunk's runs pad little); a chunk
whose items are all in the table is skipped, any other chunk is computed whole and each of its
items is written as soon as the chunk finishes. The chunk composition depends only on the item
list and ``chunk_items``, so a resumed run recomputes exactly what an uninterrupted one computed:
the tables are bit-identical. A killed run loses at most the chunk in flight (``chunk_items=1``:
at most the item in flight).
"""

from __future__ import annotations

import contextlib
import csv
import functools
import io
import logging
import math
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from interp.data.negation import AlignedPair
from interp.runs.cluster import InProcessExecutor, ModelRecipe, ModelTask
from interp.runs.rundir import ItemTable
from interp.data.scoring import text_target_directions
from interp.tracing.atp import atp_patched_scores
from interp.tracing.engine import DEFAULT_BUDGET_MB, patched_scores, weights_fixed
from interp.tracing.inputs import TEXT_TARGET, NoiseConfig, build_runs, effects
from interp.tracing.spec import TraceSpec

log = logging.getLogger(__name__)

# Items traced together in one packed batch (they finish together, so a killed run loses at most
# this chunk: about 2 CPU s of compute on a ViT-B-32 text tower). The engine's clean runs take the
# whole chunk at once and its cells go through the blocks 8 runs at a time (engine.RUNS_PER_PASS),
# so larger chunks cost no attention padding. Engine CPU time over the 490 pairs, chunk sizes
# interleaved in one process: 8 items 34.7 s, 32 items 33.4, 64 items 33.8 (on every second pair:
# 16 items 18.6, 24 18.8, 32 18.1, 48 18.0).
from interp.tracing.options import DEFAULT_CHUNK_ITEMS  # noqa: E402,F401 - re-exported
CELL_COLUMNS = [
    "item_id", "negation_side", "segment", "d", "length", "layer", "position", "role",
    "token_negated", "token_affirmative", "effect", "patched", "base", "source",
]


@dataclass
class SweepStats:
    items_computed: int = 0
    items_skipped: int = 0
    cells_forward: int = 0
    cells_shortcut: int = 0
    seconds: float = 0.0


def text_directions(model) -> Callable[[Sequence[AlignedPair], Sequence[int]], str]:
    """Direction function for the text target ``normalize(e_N) - normalize(e_A)`` per item: it names
    the target (:data:`~interp.tracing.inputs.TEXT_TARGET`) and the engine reads ``e_N``, ``e_A``
    from the clean runs it computes anyway (no extra forward). ``model`` is kept for the signature
    shared with :func:`fixed_directions`' callers."""

    def directions(items: Sequence[AlignedPair], index: Sequence[int]) -> str:
        return TEXT_TARGET

    return directions


@torch.no_grad()
def explicit_text_directions(model, items: Sequence[AlignedPair]) -> Float[Tensor, "item d_embed"]:
    """The text target's directions by two plain forwards (N and A): what the engine reads from its
    clean runs, for code that needs the tensor itself (benchmarks, tests)."""
    return text_target_directions(model([a.pair.negated for a in items]), model([a.pair.affirmative for a in items]))


def fixed_directions(table: Float[Tensor, "item d_embed"]) -> Callable[[Sequence[AlignedPair], Sequence[int]], Tensor]:
    """Direction function reading precomputed per-item directions (image target) by item index."""

    def directions(items: Sequence[AlignedPair], index: Sequence[int]) -> Tensor:
        return table[torch.as_tensor(list(index), dtype=torch.long)]

    return directions


def chunk_plan(items: Sequence[AlignedPair], chunk_items: int) -> list[list[int]]:
    """Fixed chunks of item indices, sorted by (token length, position in the list)."""
    if chunk_items < 1:
        raise ValueError(f"chunk_items must be >= 1, got {chunk_items}")
    order = sorted(range(len(items)), key=lambda i: (items[i].length, i))
    return [order[k:k + chunk_items] for k in range(0, len(order), chunk_items)]


def item_rows(item: AlignedPair, effect: np.ndarray, patched: np.ndarray, base: float, source: float,
              segment: str | None, d: float | None) -> pd.DataFrame:
    """The per-cell rows of one item (``effect``/``patched``: ``[axis, pos]``, cut to its length)."""
    n = item.length
    n_axis = effect.shape[0]
    layers = np.repeat(np.arange(n_axis), n)
    positions = np.tile(np.arange(n), n_axis)
    return pd.DataFrame({
        "item_id": item.pair.item_id,
        "negation_side": item.pair.negation_side,
        "segment": segment if segment is not None else "",
        "d": np.nan if d is None else float(d),
        "length": n,
        "layer": layers,
        "position": positions,
        "role": [item.roles[p] for p in positions],
        "token_negated": [item.str_tokens_negated[p] for p in positions],
        "token_affirmative": [item.str_tokens_affirmative[p] for p in positions],
        "effect": effect[:, :n].reshape(-1).astype(np.float64),
        "patched": patched[:, :n].reshape(-1).astype(np.float64),
        "base": float(base),
        "source": float(source),
    }, columns=CELL_COLUMNS)


def item_csv(item: AlignedPair, effect: np.ndarray, patched: np.ndarray, base: float, source: float,
             segment: str | None, d: float | None) -> str:
    """``item_rows(...).to_csv(index=False)``, written directly: the same text (tests/test_trace_sweep_table.py
    holds it to pandas' on every item), without building a DataFrame per item, which cost a sweep
    of the 490 pairs about a CPU second (2% of it)."""
    n = item.length
    head = [item.pair.item_id, item.pair.negation_side, segment if segment is not None else "",
            _csv_float(math.nan if d is None else float(d)), n]
    tail = [_csv_float(float(base)), _csv_float(float(source))]
    tokens = [(item.roles[p], item.str_tokens_negated[p], item.str_tokens_affirmative[p]) for p in range(n)]
    effect_text = [[_csv_float(v) for v in row] for row in effect[:, :n].astype(np.float64).tolist()]
    patched_text = [[_csv_float(v) for v in row] for row in patched[:, :n].astype(np.float64).tolist()]
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")  # pandas' to_csv dialect: minimal quoting, "\n"
    writer.writerow(CELL_COLUMNS)
    writer.writerows([*head, layer, p, *tokens[p], effect_text[layer][p], patched_text[layer][p], *tail]
                     for layer in range(effect.shape[0]) for p in range(n))
    return text.getvalue()


def _csv_float(value: float) -> str:
    """A float as pandas writes it to CSV: the shortest repr that round-trips; NaN as an empty field."""
    return "" if math.isnan(value) else repr(value)


@dataclass
class ChunkResult:
    """What one traced chunk sends back to the driver: ``[item, axis, pos]`` effects and cell counts."""

    effect: np.ndarray
    patched: np.ndarray
    base: np.ndarray
    source: np.ndarray
    n_forward: int
    n_shortcut: int


def trace_chunk(model, payload: tuple[list[AlignedPair], Tensor | None], *, spec: TraceSpec, mode: str,
                direction: str, noise: NoiseConfig | None, budget_mb: float, method: str = "exact") -> ChunkResult:
    """Trace one chunk of items (a task: runs in the driver or on a cluster worker).

    ``payload`` = (items, their target directions ``[item, d_embed]``, or None for the text target,
    whose directions the task computes with its own model).
    """
    chunk_items, dirs = payload
    if dirs is None:
        dirs = text_directions(model)(chunk_items, range(len(chunk_items)))
    runs, per_item = build_runs(model, chunk_items, dirs, mode, direction, noise)
    if method == "atp":
        result = atp_patched_scores(model, runs, spec)
    else:
        result = patched_scores(model, runs, spec, budget_mb=budget_mb)
    effect, patched, base, source = (t.detach().double().cpu().numpy() for t in effects(result, per_item))
    return ChunkResult(effect, patched, base, source, result.n_forward, result.n_base_equal + result.n_source_equal)


def run_sweep(
    model,
    items: Sequence[AlignedPair],
    directions: Callable[[Sequence[AlignedPair], Sequence[int]], Tensor | str] | None,
    table: ItemTable,
    spec: TraceSpec,
    *,
    mode: str = "patch",
    direction: str = "denoise",
    noise: NoiseConfig | None = None,
    segments: Sequence[str | None] | None = None,
    d_values: Sequence[float | None] | None = None,
    chunk_items: int = DEFAULT_CHUNK_ITEMS,
    budget_mb: float = DEFAULT_BUDGET_MB,
    progress: bool = True,
    method: str = "exact",
    executor=None,
    recipe: ModelRecipe | None = None,
) -> SweepStats:
    """Trace every item not yet in ``table``; write each item's rows when its chunk finishes.

    ``directions(items, index)`` gives a chunk's target directions (None: the text target, computed
    inside each task). ``method="atp"`` writes first-order estimates (:mod:`interp.tracing.atp`)
    instead of re-runs. ``executor`` (:func:`interp.runs.cluster.open_executor`; default: this
    process) runs the chunks; a cluster needs ``recipe``, which names the model its workers load.
    """
    done = table.done()
    stats = SweepStats()
    plan = chunk_plan(items, chunk_items)
    todo = [chunk for chunk in plan if any(items[i].pair.item_id not in done for i in chunk)]
    stats.items_skipped = len(items) - sum(len(c) for c in todo)
    if stats.items_skipped:
        log.info("resuming: %d of %d items already in %s", stats.items_skipped, len(items), table.path)
    if executor is None:
        executor = InProcessExecutor()
    if recipe is None and not isinstance(executor, InProcessExecutor):
        raise ValueError("a cluster executor needs the model's recipe (interp.runs.cluster.model_recipe)")
    task = functools.partial(trace_chunk, model) if recipe is None else ModelTask(recipe, trace_chunk)
    payloads = []
    for chunk in todo:
        chunk_items_ = [items[i] for i in chunk]
        payloads.append((chunk_items_, None if directions is None else directions(chunk_items_, chunk)))
    shared = {"spec": spec, "mode": mode, "direction": direction, "noise": noise, "budget_mb": budget_mb, "method": method}
    start = time.perf_counter()
    bar = tqdm(total=sum(len(c) for c in todo), unit="item", desc="tracing", disable=not progress)
    # in this process the weights stay fixed for the whole sweep: the fast path fuses them once
    in_process = isinstance(executor, InProcessExecutor) and model is not None
    kept = weights_fixed(model) if in_process else contextlib.nullcontext()
    try:
        with kept:
            for index, result in executor.map(task, payloads, shared, name="trace-chunk"):
                chunk = todo[index]
                for k, i in enumerate(chunk):
                    text = item_csv(items[i], result.effect[k], result.patched[k], result.base[k], result.source[k],
                                    None if segments is None else segments[i],
                                    None if d_values is None else d_values[i])
                    table.write(items[i].pair.item_id, text)
                stats.items_computed += len(chunk)
                stats.cells_forward += result.n_forward
                stats.cells_shortcut += result.n_shortcut
                elapsed = time.perf_counter() - start
                bar.update(len(chunk))
                bar.set_postfix(cells_per_s=f"{(stats.cells_forward + stats.cells_shortcut) / max(elapsed, 1e-9):.0f}")
    finally:
        bar.close()
    stats.seconds = time.perf_counter() - start
    return stats
