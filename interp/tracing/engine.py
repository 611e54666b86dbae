"""The batched tracing engine: the patched score of every (layer, position) cell of many runs.

For each run (a base input and a source input, e.g. A and N) and each cell (l, p), the patched
score is the score of the base run with the source's state at (l, p) (or at a window of layers)
written in. Three ideas make a full sweep cheap; none changes a result:

1. **Exact shortcuts.** A cell whose every patched site holds the same value in base and source
   (or is never read by the output) *is* the base run: its score is the clean base score, exactly.
   A residual patch that leaves the state equal to the source's on every position the output can
   read *is* the source run. With the causal mask this settles the positions before the first
   token that differs (CTE exactly 0), the embedding of the differing token (exactly 1) and every
   cell at the last layer (EOT exactly 1, the rest exactly 0) without a forward.
2. **The causal fast path** (causal, pre-LN, pooled at one position: CLIP). A patch at position p
   leaves every position before p unchanged at every layer, so a cell recomputes only positions
   p..EOT, starting at the patched layer from the cached clean state, with the unchanged prefix's
   keys and values read from the clean base run. All cells' positions are packed as rows of one
   matrix (no padding in the matmuls), cells join the sweep at their start layer, and the last
   block computes only the pooled row.
3. **The generic batched path** (any encoder, e.g. bidirectional MiniLM): cells packed into the
   batch dimension, each run resumed at its start layer (``forward(start_at_layer=l)``), later
   sites of a window patched by batched hooks.

Both paths chunk cells to a memory budget and keep scores on the device. The plain per-cell loop
in :mod:`interp.tracing.reference` is the oracle they are tested against.
"""

from __future__ import annotations

import contextlib
import logging
import math
import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor

from interp.data.scoring import text_target_directions
from interp.errors import ClipInterpError, NonFiniteError
from interp.models.tokenization import TokenBatch
from interp.tracing.clean import CleanRun, clean_run
from interp.tracing.metric import RowMetric, run_scores
from interp.tracing.spec import POSITIONAL_POOLS, TraceSpec

log = logging.getLogger(__name__)

from interp.tracing.options import DEFAULT_BUDGET_MB  # noqa: E402,F401 - re-exported
_FLOAT_BYTES = 4
RUNS_PER_PASS = 8  # runs whose cells go through the blocks together (see _fast_sweep)
FAST_POOLS = ("argmax", "eos", "last")


@dataclass(frozen=True)
class TextTarget:
    """The text target's score direction, read from the clean runs the sweep computes anyway:
    ``normalize(e_N) - normalize(e_A)`` (:func:`interp.data.scoring.text_target_directions`), with N
    the source run (``negated="source"``: patching N into A) or the base run (``"base"``). Saves the
    two extra forwards per item that computing it beforehand would cost."""

    negated: str = "source"

    def directions(self, e_base: Float[Tensor, "run d_embed"], e_source: Float[Tensor, "run d_embed"]) -> Float[Tensor, "run d_embed"]:
        if self.negated not in ("source", "base"):
            raise ValueError(f"TextTarget.negated must be 'source' or 'base', got {self.negated!r}")
        e_n, e_a = (e_source, e_base) if self.negated == "source" else (e_base, e_source)
        return text_target_directions(e_n, e_a)


@dataclass
class TraceRuns:
    """Runs to trace (one per item, or per item x noise sample).

    Attributes:
        batch: tokens ``[run, pos]`` (masks and pooling positions; padded to the longest run).
        base_x0: ``[run, pos, d_model]`` layer-0 residual of the run that is patched into.
        source_x0: ``[run, pos, d_model]`` layer-0 residual of the run the patched states come from.
        direction: ``[run, d_embed]`` score direction (:func:`interp.data.scoring.score`), or a
            :class:`TextTarget` (computed from the clean runs' own embeddings), or a
            :class:`~interp.tracing.metric.RowMetric` (any metric of the output embedding).
    """

    batch: TokenBatch
    base_x0: Float[Tensor, "run pos d_model"]
    source_x0: Float[Tensor, "run pos d_model"]
    direction: Float[Tensor, "run d_embed"] | TextTarget | RowMetric

    def __len__(self) -> int:
        return self.base_x0.shape[0]


@dataclass
class PatchedScores:
    """Result of a sweep, on the model's device.

    Attributes:
        patched: ``[run, axis, pos]`` score with the cell patched (NaN at padded positions).
        base, source: ``[run]`` clean scores of the base and source runs.
        direction: ``[run, d_embed]`` the score directions used (resolved from a :class:`TextTarget`).
        n_forward, n_base_equal, n_source_equal: cells computed by a forward, and cells settled
            exactly by the shortcuts (equal to the base run / to the source run).
    """

    patched: Float[Tensor, "run axis pos"]
    base: Float[Tensor, " run"]
    source: Float[Tensor, " run"]
    direction: Float[Tensor, "run d_embed"] | RowMetric | None = None
    n_forward: int = 0
    n_base_equal: int = 0
    n_source_equal: int = 0


def pool_positions(model, batch: TokenBatch) -> Int[Tensor, " run"]:
    """Where the model reads its output for each row (the pooled position), for positional pools."""
    tokens = batch.tokens.to(model.device)
    pool = model.cfg.pool
    if pool == "argmax":
        return tokens.argmax(dim=-1)
    if pool == "eos":
        return (tokens == model.cfg.eos_token_id).int().argmax(dim=-1)
    if pool == "last":
        return torch.full((tokens.shape[0],), tokens.shape[1] - 1, device=tokens.device)
    return torch.zeros(tokens.shape[0], dtype=torch.long, device=tokens.device)


def uses_fast_path(model) -> bool:
    """The causal fast path applies to causal, pre-LN encoders pooled at one position (CLIP), with no
    hook attached: it computes the blocks from the weights, past the hook points, so a model
    carrying hooks (``model.add_hook``) takes the generic path, whose forwards run them."""
    cfg = model.cfg
    return bool(cfg.causal) and cfg.norm == "pre" and cfg.pool in FAST_POOLS and not attached_hooks(model)


def attached_hooks(model) -> list[str]:
    """Names of the model's hook points that have a forward or backward hook attached."""
    return [name for name, point in model.hook_dict.items() if point._forward_hooks or point._backward_hooks]


# ------------------------------------------------------------------------------------ shortcuts
def _window_masks(spec: TraceSpec, device) -> tuple[Bool[Tensor, "axis axis"], Int[Tensor, " axis"], Int[Tensor, " axis"]]:
    """``in_window[l, j]``: cell layer l patches layer j; window start and end per cell layer."""
    in_window = torch.zeros(spec.n_axis, spec.n_axis, dtype=torch.bool, device=device)
    low = torch.empty(spec.n_axis, dtype=torch.long, device=device)
    high = torch.empty(spec.n_axis, dtype=torch.long, device=device)
    for layer in range(spec.n_axis):
        window = spec.window_layers(layer)
        in_window[layer, window.start:window.stop] = True
        low[layer], high[layer] = window.start, window.stop
    return in_window, low, high


def classify_cells(
    model, spec: TraceSpec, batch: TokenBatch, base: CleanRun, source: CleanRun
) -> tuple[Bool[Tensor, "run axis pos"], Bool[Tensor, "run axis pos"], Bool[Tensor, "run axis pos"]]:
    """Which cells equal the base run, which equal the source run, and which need a forward.

    A site (layer j, position p) is *inert* when base and source hold bit-identical values there,
    or when the output never reads it (after the last block with positional pooling, only the
    pooled position is read; with the causal mask nothing after the pooled position is). A cell
    whose sites are all inert equals the base run. A residual cell whose patched state equals the
    source's on every read position equals the source run.
    """
    cfg = model.cfg
    n_axis, device = spec.n_axis, base.states.device
    n_runs, n_pos = batch.tokens.shape
    positions = torch.arange(n_pos, device=device)
    real = batch.attention_mask.to(device)  # [run, pos]
    pool = pool_positions(model, batch)
    last = n_axis - 1
    read = real.unsqueeze(0).expand(n_axis, -1, -1).clone()  # [axis, run, pos]: can the output read it?
    if cfg.causal and cfg.pool in POSITIONAL_POOLS:
        read &= positions[None, None, :] <= pool[None, :, None]
    if cfg.pool in POSITIONAL_POOLS:
        read[last] &= positions[None, :] == pool[:, None]
    equal = (base.states == source.states).all(dim=-1)  # [axis, run, pos]
    inert = equal | ~read
    in_window, low, _ = _window_masks(spec, device)
    # base-equal: all sites of the window inert. [axis(cell), axis(site)] x [axis(site), run, pos]
    live_sites = (~inert).float()
    base_equal = torch.einsum("lj,jrp->lrp", in_window.float(), live_sites) == 0
    source_equal = torch.zeros_like(base_equal)
    if spec.kind == "resid":
        differs = read & ~equal  # [axis, run, pos]: read positions where base and source differ
        n_differ = differs.sum(-1, keepdim=True)  # [axis, run, 1]
        start = differs[low]  # [axis(cell), run, pos], at the window's first layer
        source_equal = (n_differ[low] - start.long()) == 0
        source_equal &= ~base_equal
    valid = real.unsqueeze(0).expand(n_axis, -1, -1)
    to_run = valid & ~base_equal & ~source_equal
    return (base_equal & valid).permute(1, 0, 2), (source_equal & valid).permute(1, 0, 2), to_run.permute(1, 0, 2)


class TraceInputError(ClipInterpError, ValueError):
    """A tracing call that cannot run as asked (memory budget, fast path on a model without one)."""


# ------------------------------------------------------------------------------------ sweep
@torch.no_grad()
def patched_scores(
    model,
    runs: TraceRuns,
    spec: TraceSpec,
    *,
    budget_mb: float = DEFAULT_BUDGET_MB,
    fast: bool | None = None,
) -> PatchedScores:
    """Patched scores of every cell of every run, batched.

    Args:
        model: a :class:`~interp.models.text_encoder.HookedTextEncoder` (CLIP-like or BERT-like).
        runs: base/source inputs and score directions.
        spec: kind of state and window.
        budget_mb: rough memory budget of one chunk of cells (activations, float32).
        fast: force (True) or forbid (False) the causal fast path; None = use it when it applies.
    """
    with weights_fixed(model):  # the clean runs and the sweep share one fusing of the weights
        return _patched_scores(model, runs, spec, budget_mb, fast)


def _patched_scores(model, runs: TraceRuns, spec: TraceSpec, budget_mb: float, fast: bool | None) -> PatchedScores:
    if not (isinstance(budget_mb, (int, float)) and math.isfinite(budget_mb) and budget_mb > 0):
        raise TraceInputError(f"budget_mb={budget_mb!r} must be a positive number of megabytes (e.g. {DEFAULT_BUDGET_MB})")
    device = model.device
    batch = runs.batch.to(device)
    use_fast = uses_fast_path(model) if fast is None else fast
    if use_fast and not uses_fast_path(model):
        hooked = attached_hooks(model)
        if hooked:
            raise TraceInputError(f"fast=True would bypass the hooks attached to {', '.join(hooked[:3])}"
                                  f"{' ...' if len(hooked) > 3 else ''}: pass fast=None (the generic path runs them) "
                                  "or remove them (model.reset_hooks(including_permanent=True))")
        raise TraceInputError("fast=True: the causal fast path needs a causal, pre-LN encoder pooled at one position; pass fast=None")
    if use_fast and spec.kind == "resid":
        base, source = clean_runs_fast(model, batch, runs.base_x0.to(device), runs.source_x0.to(device))
    else:
        base = clean_run(model, batch, runs.base_x0.to(device), spec, with_kv=use_fast)
        source = clean_run(model, batch, runs.source_x0.to(device), spec)
    if isinstance(runs.direction, TextTarget):
        direction = runs.direction.directions(base.embedding, source.embedding)
    else:
        direction = runs.direction.to(device)
    base.scores, source.scores = run_scores(base.embedding, direction), run_scores(source.embedding, direction)
    for name, clean in (("base", base.scores), ("source", source.scores)):
        bad = (~torch.isfinite(clean)).nonzero().flatten().tolist()
        if bad:
            raise NonFiniteError(f"the clean {name} score of run {bad[0]} ({len(bad)} runs in all) is NaN or infinite: "
                                 "the model's weights or the score directions hold NaN; check the checkpoint and targets")
    base_equal, source_equal, to_run = classify_cells(model, spec, batch, base, source)
    n_runs, n_pos = batch.tokens.shape
    patched = torch.full((n_runs, spec.n_axis, n_pos), float("nan"), device=device, dtype=base.scores.dtype)
    patched = torch.where(base_equal, base.scores[:, None, None], patched)
    patched = torch.where(source_equal, source.scores[:, None, None], patched)
    cells = to_run.nonzero()  # [cell, 3] = (run, layer, position)
    if len(cells):
        sweep = _fast_sweep if use_fast else _generic_sweep
        values = sweep(model, spec, batch, direction, base, source, cells, budget_mb)
        bad = (~torch.isfinite(values)).nonzero().flatten()
        if bad.numel():
            run, layer, pos = cells[bad[0]].tolist()
            raise NonFiniteError(f"the patched score of run {run} at layer {layer}, position {pos} ({bad.numel()} cells in all) "
                                 "is NaN or infinite: the model's activations overflow or its weights hold NaN")
        patched[cells[:, 0], cells[:, 1], cells[:, 2]] = values
    return PatchedScores(
        patched=patched, base=base.scores, source=source.scores, direction=direction, n_forward=len(cells),
        n_base_equal=int(base_equal.sum()), n_source_equal=int(source_equal.sum()),
    )


# ------------------------------------------------------------------------------------ generic path
def _generic_sweep(model, spec, batch, direction, base, source, cells, budget_mb) -> Tensor:
    """Cells as batch rows; each group resumes at its start layer; later sites patched by hooks."""
    _, low, high = _window_masks(spec, cells.device)
    n_pos = batch.tokens.shape[1]
    cfg = model.cfg
    per_cell = n_pos * (cfg.d_mlp * 2 + cfg.d_model * 10 + cfg.n_heads * n_pos * 2) * _FLOAT_BYTES
    max_cells = max(1, int(budget_mb * 2**20 // per_cell))
    out = torch.empty(len(cells), device=cells.device, dtype=base.scores.dtype)
    start = low[cells[:, 1]]
    order = torch.argsort(start, stable=True)
    for first in range(0, len(order), max_cells):
        chunk = order[first:first + max_cells]
        for s in torch.unique(start[chunk]).tolist():
            idx = chunk[start[chunk] == s]
            out[idx] = _generic_group(model, spec, batch, direction, base, source, cells[idx], s, low, high)
    return out


def _generic_group(model, spec, batch, direction, base, source, cells, s, low, high) -> Tensor:
    run, layer, pos = cells[:, 0], cells[:, 1], cells[:, 2]
    rows = torch.arange(len(cells), device=cells.device)
    lo, hi = low[layer], high[layer]
    hooks = []
    if spec.kind == "resid":
        residual = base.resid[s, run].clone()
        residual[rows, pos] = source.resid[s, run, pos]  # the window's first site, written directly
        first_hooked = s + 1
    else:
        residual = base.resid[s, run].clone()
        first_hooked = s
    for j in range(first_hooked, int(hi.max())):
        active = (lo <= j) & (j < hi)
        if not bool(active.any()):
            continue
        hooks.append((spec.hook_name(model, j), _overwrite_hook(rows[active], pos[active],
                                                                source.states[j, run[active], pos[active]])))
    with model.hooks(fwd_hooks=hooks):
        embedding = model(batch[run], start_at_layer=s, residual=residual)
    return run_scores(embedding, direction[run])


def _overwrite_hook(rows: Tensor, pos: Tensor, values: Tensor):
    def hook(act: Tensor, hook=None) -> Tensor:
        act = act.clone()
        act[rows, pos] = values
        return act

    return hook


# ------------------------------------------------------------------------------------ fast path
def _fast_sweep(model, spec, batch, direction, base, source, cells, budget_mb) -> Tensor:
    """Causal fast path: rows = (cell, position >= patched position), packed; see module docstring."""
    cfg = model.cfg
    device = cells.device
    pool = pool_positions(model, batch)
    _, low, high = _window_masks(spec, device)
    run, layer, pos = cells[:, 0], cells[:, 1], cells[:, 2]
    start = low[layer]
    if spec.kind == "resid" and bool((start >= cfg.n_layers).any()):
        raise AssertionError("a residual cell starting after the last block must be settled by the shortcuts")
    n_rows = pool[run] - pos + 1
    n_pos = batch.tokens.shape[1]
    row_bytes = (cfg.d_mlp * 2 + cfg.d_model * 8) * _FLOAT_BYTES
    cell_bytes = n_pos * (cfg.d_model * 4 + cfg.n_heads * n_pos * 3) * _FLOAT_BYTES
    # Cells pass through the blocks in groups of RUNS_PER_PASS runs, each group in start order: the
    # clean runs above take all runs at once (larger products), while the attention of a pass pads
    # to the longest of its own runs only (the sweep hands runs over sorted by length).
    group = torch.div(run, RUNS_PER_PASS, rounding_mode="floor")
    order = torch.argsort(group * (cfg.n_layers + 1) + start, stable=True)
    cost = (n_rows * row_bytes + cell_bytes)[order]
    new_group = torch.ones_like(order, dtype=torch.bool)
    new_group[1:] = group[order][1:] != group[order][:-1]
    budget = budget_mb * 2**20
    out = torch.empty(len(cells), device=device, dtype=base.scores.dtype)
    # Greedy chunks in (group, start) order, so each chunk's cells still join the sweep in order.
    bounds, acc, begin = [], 0.0, 0
    for i, (c, first_of_group) in enumerate(zip(cost.tolist(), new_group.tolist())):
        if i > begin and (first_of_group or acc + c > budget):
            bounds.append((begin, i))
            begin, acc = i, 0.0
        acc += c
    bounds.append((begin, len(order)))
    fast = fast_model(model)
    for begin, end in bounds:
        idx = order[begin:end]
        out[idx] = _fast_chunk(model, spec, direction, base, source, run[idx], pos[idx], start[idx],
                               low[layer[idx]], high[layer[idx]], pool[run[idx]], fast)
    return out


def _fast_chunk(model, spec, direction, base, source, run, pos, start, lo, hi, pool, fast: _FastModel) -> Tensor:
    """One chunk of cells, sorted by start layer. Rows of cell c: positions pos[c]..pool[c].

    At its start block a cell's rows still hold the base run's state, except the row a residual
    patch writes: their Q, K and V are the base run's (cached by the clean run), so the block
    computes Q/K/V only for the rows already running and the patched rows. Rows are ordered by
    start layer, then patched before unchanged, so at each block the rows that need Q/K/V are a
    prefix and the unchanged ones the segment after it."""
    n_layers = model.cfg.n_layers
    device = run.device
    row_cell, row_pos = _packed_rows(pos, pool)
    # unchanged at the start block: every row but the one a residual patch writes (an attention /
    # MLP patch replaces the sublayer's output, after Q/K/V)
    is_patch_row = row_pos == pos[row_cell]
    unchanged = ~is_patch_row if spec.kind == "resid" else torch.ones_like(is_patch_row)
    reuse = base.queries is not None
    if reuse:  # stable sort on (start, unchanged): cells stay in order within each segment
        order = torch.argsort(start[row_cell] * 2 + unchanged.long(), stable=True)
        row_cell, row_pos, is_patch_row, unchanged = row_cell[order], row_pos[order], is_patch_row[order], unchanged[order]
    row_run = run[row_cell]
    # rows/cells active at block j are a prefix, since cells (and rows) are sorted by start layer
    layers = torch.arange(n_layers, device=device)
    cells_by_block = torch.searchsorted(start, layers, right=True).tolist()
    row_start = start[row_cell]
    rows_by_block = torch.searchsorted(row_start, layers, right=True).tolist()
    # rows before which every row runs Q/K/V at block j: the earlier cells' and this block's patched rows
    computed_by_block = (torch.searchsorted(row_start * 2 + unchanged.long(), layers * 2, right=True).tolist()
                         if reuse else rows_by_block)
    # every row starts from the clean base state at its cell's start layer; blocks update it in place
    hidden = base.resid[start[row_cell], row_run, row_pos]
    # the attention's layout, padded to the widest cell (in a residual sweep those start at the first
    # block, so no block pads more than it must), keys to the longest of these cells' runs
    n_pos = int(pool.max()) + 1
    all_rows = _rows_layout(row_cell, row_pos, pos, model.cfg.n_heads, model.cfg.d_head, n_pos, hidden)
    for j in range(n_layers):
        n_cells, n_rows = cells_by_block[j], rows_by_block[j]
        if n_rows == 0:
            continue
        rows = all_rows.prefix(n_cells, n_rows)
        rows_run, active = row_run[:n_rows], hidden[:n_rows]
        n_computed = computed_by_block[j]
        in_win = (lo[rows.cell] <= j) & (j < hi[rows.cell]) & is_patch_row[:n_rows]
        if spec.kind == "resid" and bool(in_win.any()):  # hidden is this sweep's own tensor: edit in place
            active[in_win] = source.resid[j, rows_run[in_win], rows.pos[in_win]]
        last = j == n_layers - 1
        if last:  # the pooled rows, in cell order (the rows are ordered by start layer first)
            query_rows = (rows.pos == pool[rows.cell]).nonzero().squeeze(-1)
            query_rows = query_rows[torch.argsort(rows.cell[query_rows])]
        else:
            query_rows = None
        # this block's cells' unchanged rows: Q from the clean base run (their K/V are in the gathered copy)
        base_q = None
        if reuse and not last and n_computed < n_rows:
            fresh = slice(n_computed, n_rows)
            base_q = base.queries[j, rows_run[fresh], :, rows.pos[fresh]]
        # gathered copies of the base run's keys/values: the block writes the rows' own over them
        cell_run = run[:n_cells]
        n_heads, d_head = base.values.shape[2], base.values.shape[4]
        keys = torch.index_select(base.keys[j, :, :, :, :n_pos], 0, cell_run,
                                  out=fast.scratch.take("keys", (n_cells, n_heads, d_head, n_pos), hidden))
        values = torch.index_select(base.values[j, :, :, :n_pos], 0, cell_run,
                                    out=fast.scratch.take("values", (n_cells, n_heads, n_pos, d_head), hidden))
        out, _, _, _ = _block(model, fast.blocks[j], fast.scratch, spec.kind, j, active, rows, keys, values, cell_run,
                              pool[:n_cells], source, in_win, query_rows, base_q=base_q)
    hidden = out
    # hidden now holds one row per cell: the pooled position after the last block
    if spec.kind == "resid":
        at_end = (lo <= n_layers) & (n_layers < hi)  # pooled position patched at state L
        patch_end = at_end & (pos == pool)
        if bool(patch_end.any()):
            hidden[patch_end] = source.resid[n_layers, run[patch_end], pool[patch_end]]
    return _pooled_scores(model, hidden, direction[run])


def _pooled_scores(model, pooled: Float[Tensor, "row d_model"], direction: Float[Tensor, "row d_embed"] | RowMetric) -> Tensor:
    """Scores of final residual rows taken at the pooled position (ln_final, projection, score)."""
    return run_scores(_pooled_embeddings(model, pooled), direction)


def _pooled_embeddings(model, pooled: Float[Tensor, "row d_model"]) -> Float[Tensor, "row d_embed"]:
    """Embeddings of final residual rows taken at the pooled position (ln_final, projection)."""
    n, device = pooled.shape[0], pooled.device
    one_position = TokenBatch(
        tokens=torch.zeros(n, 1, dtype=torch.long, device=device),
        attention_mask=torch.ones(n, 1, dtype=torch.bool, device=device),
        pool_index=torch.zeros(n, dtype=torch.long, device=device),
        token_type_ids=torch.zeros(n, 1, dtype=torch.long, device=device),
        texts=[""] * n,
    )
    return model.pool_and_project(pooled.unsqueeze(1), one_position)


def _packed_rows(first: Tensor, last: Tensor) -> tuple[Tensor, Tensor]:
    """Rows (cell, position) for positions first[c]..last[c] of every cell, packed in cell order."""
    counts = (last - first + 1).clamp(min=0)
    offsets = torch.cumsum(counts, 0) - counts
    row_cell = torch.repeat_interleave(torch.arange(len(first), device=first.device), counts)
    row_pos = first[row_cell] + torch.arange(len(row_cell), device=first.device) - offsets[row_cell]
    return row_cell, row_pos


@dataclass(frozen=True)
class _Rows:
    """Packed rows of the fast path and the attention's layout of them, built once per sweep of
    blocks (:func:`_rows_layout`) and cut to the active cells per block (:meth:`prefix`).

    Row r is position ``pos[r]`` of cell ``cell[r]``; a cell's rows are in position order (not
    necessarily next to each other), from its first position ``first[cell]``, at ``slot[r]`` =
    ``pos[r] - first[cell]``.
    Queries are padded per cell to ``width`` slots (the most rows any cell has): ``queries``
    ``[cell, head, width, d_head]`` is zero outside the rows' slots and is kept from block to block
    (a cell's rows keep their slots, so only those are rewritten); ``blocked`` ``[cell, width, key]``
    is the causal mask (key after the slot's position); ``head_index`` ``[row, head]`` is where each
    row's heads sit in the flattened ``[cell * head * width]`` attention output."""

    cell: Int[Tensor, " row"]
    pos: Int[Tensor, " row"]
    first: Int[Tensor, " cell"]
    width: int
    slot: Int[Tensor, " row"]
    queries: Float[Tensor, "cell head width d_head"]
    blocked: Bool[Tensor, "cell width key"]
    head_index: Int[Tensor, "row head"]

    def prefix(self, n_cells: int, n_rows: int) -> "_Rows":
        """The first ``n_cells`` cells and their ``n_rows`` rows (the cells active at a block)."""
        return _Rows(self.cell[:n_rows], self.pos[:n_rows], self.first[:n_cells], self.width, self.slot[:n_rows],
                     self.queries[:n_cells], self.blocked[:n_cells], self.head_index[:n_rows])


def _rows_layout(cell: Tensor, pos: Tensor, first: Tensor, n_heads: int, d_head: int, n_pos: int, like: Tensor) -> _Rows:
    """The :class:`_Rows` of packed rows ``(cell, pos)`` whose cells start at ``first``."""
    slot = pos - first[cell]
    width = int(slot.max()) + 1
    device = like.device
    query_pos = first[:, None] + torch.arange(width, device=device)  # [cell, slot]
    return _Rows(cell, pos, first, width, slot,
                 queries=like.new_zeros(len(first), n_heads, width, d_head),
                 blocked=torch.arange(n_pos, device=device) > query_pos[:, :, None],
                 head_index=(cell[:, None] * n_heads + torch.arange(n_heads, device=device)) * width + slot[:, None])


@dataclass(frozen=True)
class _BlockWeights:
    """One block's weights as plain matrices: ``qkv`` ``[d_model, 3 * head * d_head]`` (Q, K, V side
    by side, so a block needs one matmul for all three), ``out`` ``[head * d_head, d_model]``, and
    ``mlp_in`` ``[d_model + 1, d_mlp]``, the MLP's input weights with its bias as a last row.

    The bias row multiplies a column of ones appended to the LayerNorm's output
    (:meth:`_Scratch.normed_ones`), so the product adds the bias itself: ``addmm(b_in, x, W_in)``
    first copies the bias into every row of its ``[row, d_mlp]`` output and then reads it back, a
    memory pass four times as wide as the ones column's (measured: the product's CPU time fell 5%,
    and copying the LayerNorm's output beside the ones column gives half of that back). The Q/K/V
    product keeps ``addmm``: its output is only three times as wide, and there the copy costs what
    the product saves."""

    qkv: Float[Tensor, "d_model qkv"]
    qkv_bias: Float[Tensor, " qkv"]
    out: Float[Tensor, "hd d_model"]
    mlp_in: Float[Tensor, "d_model_1 d_mlp"]


class _Scratch:
    """Buffers the blocks reuse for their large intermediates (the products' outputs, the LayerNorm's
    output): a fresh ``[row, d_mlp]`` tensor per block is new memory the kernel hands over page by
    page on first touch, and the product that writes it pays for that (measured on the MLP's input
    product: 2% of its CPU time). Each buffer grows to the largest block it has served and is reused
    from then on."""

    def __init__(self):
        self._flat: dict[str, Tensor] = {}

    def take(self, name: str, shape: tuple[int, ...], like: Tensor) -> Tensor:
        """A contiguous ``shape`` view of buffer ``name`` (uninitialised: the caller overwrites it)."""
        n = math.prod(shape)
        buf = self._flat.get(name)
        if buf is None or buf.numel() < n or buf.dtype != like.dtype or buf.device != like.device:
            grown = n if buf is None else max(n, buf.numel() + buf.numel() // 4)
            buf = self._flat[name] = like.new_empty(grown)
        return buf[:n].view(shape)

    def normed_ones(self, ln, x: Float[Tensor, "row d_model"]) -> Float[Tensor, "row d_model_1"]:
        """``[LayerNorm(x) | 1]``: the LayerNorm's output with a column of ones, the input of a product
        whose weights carry the bias as a last row (:class:`_BlockWeights`)."""
        n, d = x.shape
        out = self.take("normed", (n, d + 1), x)
        out[:, d] = 1  # a strided column: n writes
        out[:, :d] = _layer_norm(ln, x)
        return out


@dataclass(frozen=True)
class _FastModel:
    """What the fast path computes with: each block's fused weights, and the buffers they share."""

    blocks: list[_BlockWeights]
    scratch: _Scratch


_KEPT: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # model -> [depth, _FastModel or None]


@contextlib.contextmanager
def weights_fixed(model):
    """Within this block the model's weights do not change, so the fast path fuses its weights (and
    keeps its buffers) once instead of once per :func:`patched_scores` call (a sweep of many chunks)."""
    entry = _KEPT.setdefault(model, [0, None])
    entry[0] += 1
    try:
        yield
    finally:
        entry[0] -= 1
        if entry[0] == 0:
            del _KEPT[model]


def fast_model(model) -> _FastModel:
    """The fast path's per-block weights and buffers: built per call, or once inside :func:`weights_fixed`."""
    entry = _KEPT.get(model)
    if entry is None:
        return _FastModel(_fuse_weights(model), _Scratch())
    if entry[1] is None:
        entry[1] = _FastModel(_fuse_weights(model), _Scratch())
    return entry[1]


def _fuse_weights(model) -> list[_BlockWeights]:
    weights = []
    for block in model.blocks:
        attn, mlp = block.attn, block.mlp
        # the attention's 1/sqrt(d_head) rides on the query weights (exact when d_head is a power of 4, e.g. 64)
        scale = 1 / math.sqrt(attn.cfg.d_head)
        weights.append(_BlockWeights(
            qkv=torch.cat([w.permute(1, 0, 2).flatten(1) for w in (attn.W_Q * scale, attn.W_K, attn.W_V)], dim=1),
            qkv_bias=torch.cat([b.flatten() for b in (attn.b_Q * scale, attn.b_K, attn.b_V)]),
            out=attn.W_O.flatten(0, 1),
            mlp_in=torch.cat([mlp.W_in, mlp.b_in[None]]),
        ))
    return weights


@torch.no_grad()
def clean_runs_fast(model, batch: TokenBatch, base_x0: Tensor, source_x0: Tensor) -> tuple[CleanRun, CleanRun]:
    """Clean base and source runs with the fast path's packed blocks (residual kind), in one pass.

    The base run computes every real position up to the pooled one. The source run shares the
    base's prefix up to the first position where the two layer-0 inputs differ (by causality those
    states are the base's, copied exactly) and computes only the positions from there on, reading
    the base's keys and values of the prefix. Both runs' rows go through each block together (one
    set of products per block instead of two). As in the sweep, the last block computes keys and
    values of every row but the rest only on the pooled rows: the final state (``resid[L]``) is
    filled at the pooled position only, the one position the output reads.
    """
    cfg = model.cfg
    n_layers, device, dtype = cfg.n_layers, base_x0.device, base_x0.dtype
    n_runs, n_pos = batch.tokens.shape
    n_heads, d_head = cfg.n_heads, cfg.d_head
    fast = fast_model(model)
    pool = pool_positions(model, batch)
    runs = torch.arange(n_runs, device=device)
    real = batch.attention_mask.to(device)
    differs = (base_x0 != source_x0).any(-1) & real
    first = torch.where(differs.any(-1), differs.int().argmax(-1), pool + 1)  # pool + 1: no rows of its own
    # cells 0..run-1: the base runs, from position 0; cells run..2 run-1: the source runs, from `first`
    cell_first, cell_pool, cell_run = torch.cat([torch.zeros_like(first), first]), pool.repeat(2), runs.repeat(2)
    row_cell, row_pos = _packed_rows(cell_first, cell_pool)
    n_base_rows = int((pool + 1).sum())  # the base cells' rows come first
    hidden = torch.cat([base_x0, source_x0])[row_cell, row_pos]
    rows = _rows_layout(row_cell, row_pos, cell_first, n_heads, d_head, n_pos, hidden)
    from_base = _PrefixFromBase(torch.arange(n_pos, device=device) < first[:, None])
    base_rows = (row_cell[:n_base_rows], row_pos[:n_base_rows])
    source_rows = (row_cell[n_base_rows:] - n_runs, row_pos[n_base_rows:])
    # head-major, as the attention reads them: keys [pos] per d_head (transposed), values [d_head] per pos
    keys = torch.zeros(n_layers, n_runs, n_heads, d_head, n_pos, device=device, dtype=dtype)
    values = torch.zeros(n_layers, n_runs, n_heads, n_pos, d_head, device=device, dtype=dtype)
    queries = torch.zeros_like(values)  # scaled by 1/sqrt(d_head), as the fast path's attention uses them
    resid_b = torch.zeros(n_layers + 1, n_runs, n_pos, cfg.d_model, device=device, dtype=dtype)
    resid_s = torch.empty_like(resid_b)
    cell_keys, cell_values = keys.new_zeros(2 * n_runs, *keys.shape[2:]), values.new_zeros(2 * n_runs, *values.shape[2:])
    no_window = torch.zeros(len(row_cell), dtype=torch.bool, device=device)
    pooled_rows = (row_pos == cell_pool[row_cell]).nonzero().squeeze(-1)  # one per cell with rows, in cell order
    for j in range(n_layers):
        resid_b[j][base_rows] = hidden[:n_base_rows]
        resid_s[j] = resid_b[j]  # the source's prefix is the base's
        resid_s[j][source_rows] = hidden[n_base_rows:]
        last = j == n_layers - 1
        hidden, q, k, v = _block(model, fast.blocks[j], fast.scratch, "resid", j, hidden, rows, cell_keys, cell_values,
                                 cell_run, cell_pool, None, no_window, pooled_rows if last else None, from_base)
        keys[j][base_rows[0], :, :, base_rows[1]] = k[:n_base_rows]
        values[j][base_rows[0], :, base_rows[1]] = v[:n_base_rows]
        if not last:  # the sweep reuses them below the last block only
            queries[j][base_rows[0], :, base_rows[1]] = q[:n_base_rows]
    # hidden: the pooled rows after the last block, the base runs' first (every base run has one)
    has_rows = first <= pool
    resid_b[n_layers, runs, pool] = hidden[:n_runs]
    resid_s[n_layers] = resid_b[n_layers]
    resid_s[n_layers, runs[has_rows], pool[has_rows]] = hidden[n_runs:]
    embedding = _pooled_embeddings(model, hidden)
    base_embedding = embedding[:n_runs]
    source_embedding = base_embedding.clone()  # runs whose source equals the base: the base's output
    source_embedding[has_rows] = embedding[n_runs:]
    base = CleanRun(states=resid_b, resid=resid_b, keys=keys, values=values, embedding=base_embedding, queries=queries)
    source = CleanRun(states=resid_s, resid=resid_s, keys=None, values=None, embedding=source_embedding)
    return base, source


@dataclass(frozen=True)
class _PrefixFromBase:
    """For :func:`clean_runs_fast`'s joint pass: the second half of the cells (source runs) read the
    keys and values of the first half (their base runs) at the positions where ``prefix`` ``[run,
    pos]`` is True (before the first position where the two runs differ)."""

    prefix: Bool[Tensor, "run pos"]

    def copy(self, keys: Float[Tensor, "cell head d_head pos"], values: Float[Tensor, "cell head pos d_head"]) -> None:
        n_runs = self.prefix.shape[0]
        keys[n_runs:] = torch.where(self.prefix[:, None, None, :], keys[:n_runs], keys[n_runs:])
        values[n_runs:] = torch.where(self.prefix[:, None, :, None], values[:n_runs], values[n_runs:])


def _block(model, weights: _BlockWeights, scratch: _Scratch, kind, j, hidden, rows: _Rows, keys, values, cell_run,
           cell_pool, source, in_win, query_rows, from_base: _PrefixFromBase | None = None,
           base_q: Float[Tensor, "fresh head d_head"] | None = None):
    """Block j (pre-LN) on packed rows.

    ``keys`` ``[cell, head, d_head, pos]`` and ``values`` ``[cell, head, pos, d_head]`` hold the keys
    and values of the positions before each cell's rows (from the clean base run; the caller's own
    copies): the rows' own are written over them. Keys are stored transposed so that the score
    product reads both operands contiguously (on these many tiny products, half the time of a
    transposed operand). Queries are padded per cell to ``rows.width`` slots (not to the whole
    sequence), so the attention works on ``[cell, head, width, pos]`` scores (:class:`_Rows`).

    ``base_q`` (not at the last block): the queries of the last ``len(base_q)`` rows, which hold the
    base run's state unchanged (their cell starts here): Q/K/V are computed for the other rows only,
    these rows' keys and values being the base's already in ``keys``/``values``.

    Returns (new rows: all, or only ``query_rows`` at the last block; the computed rows' queries
    (scaled), keys and values as ``[row, head, d_head]``). When every row queries (``query_rows``
    None), the new rows are ``hidden`` itself, updated in place: it must be the caller's own tensor.
    """
    block = model.blocks[j]
    n_cells, n_heads, d_head, n_pos = keys.shape
    hd = n_heads * d_head
    n_computed = len(hidden) - (0 if base_q is None else len(base_q))
    normed = _layer_norm(block.ln1, hidden[:n_computed])
    if query_rows is None:  # every row queries: Q, K and V in one matmul
        qkv = torch.addmm(weights.qkv_bias, normed, weights.qkv, out=scratch.take("qkv", (n_computed, 3 * hd), hidden))
        q, kv = qkv[:, :hd], qkv[:, hd:]
        q_rows, q_cell, q_slot = slice(None), rows.cell[:n_computed], rows.slot[:n_computed]
        queries, blocked, head_index = rows.queries, rows.blocked, rows.head_index
        if base_q is not None:
            queries[rows.cell[n_computed:], :, rows.slot[n_computed:]] = base_q
    else:  # last block: keys and values of every row, the query of the pooled row only
        kv = torch.addmm(weights.qkv_bias[hd:], normed, weights.qkv[:, hd:])
        q = torch.addmm(weights.qkv_bias[:hd], normed[query_rows], weights.qkv[:, :hd])
        q_rows, q_cell = query_rows, rows.cell[query_rows]
        q_slot = torch.zeros_like(query_rows)
        queries = hidden.new_zeros(n_cells, n_heads, 1, d_head)
        blocked = torch.arange(n_pos, device=hidden.device) > cell_pool[:, None, None]  # [cell, 1, key]
        head_index = q_cell[:, None] * n_heads + torch.arange(n_heads, device=hidden.device)
    k, v = kv.unflatten(1, (2, n_heads, d_head)).unbind(1)
    k_cell, k_pos = rows.cell[:n_computed], rows.pos[:n_computed]
    keys[k_cell, :, :, k_pos] = k
    values[k_cell, :, k_pos] = v
    if from_base is not None:
        from_base.copy(keys, values)
    q = q.unflatten(1, (n_heads, d_head))  # pre-scaled by 1/sqrt(d_head) (_fuse_weights)
    queries[q_cell, :, q_slot] = q
    scores = torch.matmul(queries, keys).masked_fill_(blocked[:, None], float("-inf"))  # [cell, head, slot, key]
    z = _head_rows(torch.matmul(_softmax_(scores), values), head_index)  # [row, head * d_head]
    # The residual adds ride on the output products: resid.addmm_(z, W_O) adds z @ W_O into the
    # residual rows in the GEMM's own pass (no attention-output tensor, no bias copy, no extra add).
    mid = hidden if query_rows is None else hidden[q_rows]  # all rows: in place; last block: a copy
    win = in_win[q_rows]
    kept = _patched_sum(source, kind == "attn", j, mid, rows, cell_run, q_rows, win)
    mid.addmm_(z, weights.out).add_(block.attn.b_O)
    if kept is not None:
        mid[win] = kept
    mlp = block.mlp
    normed = scratch.normed_ones(block.ln2, mid)
    hidden_mlp = torch.mm(normed, weights.mlp_in, out=scratch.take("mlp", (len(normed), weights.mlp_in.shape[1]), mid))
    kept = _patched_sum(source, kind == "mlp", j, mid, rows, cell_run, q_rows, win)
    mid.addmm_(_activation_(model.cfg.act_fn, mlp, hidden_mlp), mlp.W_out).add_(mlp.b_out)
    if kept is not None:
        mid[win] = kept
    return mid, q, k, v


def _patched_sum(source, patched: bool, j, resid, rows: _Rows, cell_run, q_rows, win) -> Tensor | None:
    """``resid + source output`` on the window's rows when this block's sublayer output is patched
    (attention or MLP kind), computed before the fused product overwrites ``resid``: the same sum,
    rounded the same way, as adding the patched output would give. None when nothing is patched."""
    if not (patched and bool(win.any())):
        return None
    return resid[win] + _sub_rows(source, j, rows.cell, rows.pos, cell_run, q_rows, win)


def _activation_(act_fn: str, mlp, x: Tensor) -> Tensor:
    """The MLP's activation applied in place on its own hidden buffer (no second [row, d_mlp]
    tensor); the same kernels as the module's out-of-place activation, so the same values."""
    if act_fn == "gelu":
        return torch.ops.aten.gelu_(x)
    if act_fn == "gelu_tanh":
        return torch.ops.aten.gelu_(x, approximate="tanh")
    if act_fn == "quick_gelu":  # x * sigmoid(1.702 x), as interp.models.components computes it
        return x.mul_(torch.sigmoid(1.702 * x))
    if act_fn == "relu":
        return x.relu_()
    return mlp.act(x)  # any other activation: the module's own, out of place


def _softmax_(scores: Tensor) -> Tensor:
    """Softmax over the last axis, in place: ``exp(x - max) / sum``, as torch.softmax computes it, but
    several times faster on these short rows (a dozen keys) than torch's kernel, which vectorises
    along the row. Every row holds at least one finite score (key 0 is always allowed)."""
    scores.sub_(scores.amax(-1, keepdim=True)).exp_()
    return scores.div_(scores.sum(-1, keepdim=True))


def _head_rows(x: Float[Tensor, "cell head slot d_head"], head_index: Int[Tensor, "row head"]) -> Float[Tensor, "row hd"]:
    """Rows ``x[cell[r], :, slot[r]]`` as ``[row, head * d_head]``, ``head_index[r, h]`` being
    ``(cell[r] * head + h) * slot + slot[r]``: index_select on a flat view (advanced indexing around
    a sliced axis takes a generic path several times slower)."""
    n_rows, n_heads = head_index.shape
    return x.reshape(-1, x.shape[-1]).index_select(0, head_index.flatten()).view(n_rows, n_heads * x.shape[-1])


def _layer_norm(ln, x: Tensor) -> Tensor:
    """The block's LayerNorm as one fused kernel (fp32/fp64; half precision keeps the module's fp32 path)."""
    if x.dtype in (torch.float32, torch.float64):
        return F.layer_norm(x, (x.shape[-1],), ln.w, ln.b, ln.eps)
    return ln(x)


def _sub_rows(source, j, row_cell, row_pos, cell_run, q_rows, win) -> Tensor:
    cells = row_cell[q_rows][win]
    return source.states[j, cell_run[cells], row_pos[q_rows][win]]
