"""The plain per-cell tracing loop: one forward per cell at batch 1. The engine's test oracle.

Deliberately naive and independent of :mod:`interp.tracing.engine`: every run is cut to its own
length and run alone, every cell is one full forward from the layer-0 residual with hooks that
overwrite the patched sites (no shortcuts, no resumed runs, no packed rows), and each score is read
with ``.item()``. Use it to check the engine, never for sweeps.
"""

from __future__ import annotations

import torch

from interp.models.tokenization import TokenBatch
from interp.tracing.engine import PatchedScores, TextTarget, TraceRuns
from interp.tracing.metric import run_scores
from interp.tracing.spec import TraceSpec


def _row(batch: TokenBatch, r: int) -> TokenBatch:
    n = int(batch.attention_mask[r].sum())
    return TokenBatch(
        tokens=batch.tokens[r:r + 1, :n], attention_mask=batch.attention_mask[r:r + 1, :n],
        pool_index=batch.pool_index[r:r + 1], token_type_ids=batch.token_type_ids[r:r + 1, :n],
        texts=[batch.texts[r]],
    )


def _set_position(pos: int, value: torch.Tensor):
    def hook(act: torch.Tensor, hook=None) -> torch.Tensor:
        act = act.clone()
        act[0, pos] = value
        return act

    return hook


@torch.no_grad()
def reference_patched_scores(model, runs: TraceRuns, spec: TraceSpec) -> PatchedScores:
    """Patched scores ``[run, axis, pos]`` by one batch-1 forward per cell (NaN past each run's length)."""
    device = model.device
    n_runs, n_pos = runs.batch.tokens.shape
    patched = torch.full((n_runs, spec.n_axis, n_pos), float("nan"), dtype=torch.float64)
    base_scores, source_scores = torch.empty(n_runs, dtype=torch.float64), torch.empty(n_runs, dtype=torch.float64)
    names = spec.hook_names(model)
    for r in range(n_runs):
        one = _row(runs.batch, r).to(device)
        n = one.tokens.shape[1]
        base_x0 = runs.base_x0[r:r + 1, :n].to(device)
        source_x0 = runs.source_x0[r:r + 1, :n].to(device)
        source_out, cache = model.run_with_cache(one, start_at_layer=0, residual=source_x0,
                                                 names_filter=lambda name: name in names)
        base_out = model(one, start_at_layer=0, residual=base_x0)
        if isinstance(runs.direction, TextTarget):  # the text target, from this run's own clean outputs
            direction = runs.direction.directions(base_out, source_out)
        else:
            direction = runs.direction[r:r + 1].to(device)
        source_scores[r] = run_scores(source_out, direction).item()
        base_scores[r] = run_scores(base_out, direction).item()
        for layer in range(spec.n_axis):
            for pos in range(n):
                hooks = [(names[j], _set_position(pos, cache[names[j]][0, pos])) for j in spec.window_layers(layer)]
                out = model.run_with_hooks(one, start_at_layer=0, residual=base_x0, fwd_hooks=hooks)
                patched[r, layer, pos] = run_scores(out, direction).item()
    return PatchedScores(patched=patched, base=base_scores, source=source_scores, n_forward=int((~patched.isnan()).sum()))
