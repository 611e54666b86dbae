"""Attribution patching (AtP) of tracing cells: every (layer, position) from one backward pass.

The exact engine (:mod:`interp.tracing.engine`) re-runs the encoder for every cell. AtP (Nanda
2023; Kramar et al. 2024) estimates each cell's patched score to first order around the base run:
with ``b`` and ``s`` the base's and the source's state at the cell's site and ``g = dS/db`` the
gradient of the base run's score,

    S(base with s written at the site) ~= S(base) + (s - b) . g

Windows of several layers are refused: the later overwrite cuts paths the earlier one opened, so
their terms do not add. Per chunk of runs: one forward of the source (no
gradient), one forward and one backward of the base. Exact when the score is affine in the
state (tested on :func:`interp.testing.build_linear_encoder`), approximate otherwise; check it
against the exact engine on a sample (:func:`interp.heads.atp.fidelity`).
"""

from __future__ import annotations

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from interp.errors import ClipInterpError
from interp.models.tokenization import TokenBatch
from interp.tracing.engine import PatchedScores, TextTarget, TraceRuns
from interp.tracing.metric import run_scores
from interp.tracing.spec import TraceSpec


def _trimmed(model, batch: TokenBatch) -> int:
    return int(batch.lengths.max()) if model.cfg.trims_to_longest else batch.tokens.shape[1]


def _states(model, batch: TokenBatch, x0: Tensor, names: list[str], target, with_grad: bool):
    """States at ``names`` ``[axis, b, pos, d]``, scores ``[b]`` and (with_grad) dS/dstate."""
    acts: dict[str, Tensor] = {}

    def keep(act: Tensor, hook) -> Tensor:
        acts[hook.name] = act
        return act

    with torch.set_grad_enabled(with_grad):
        x0 = x0.detach().requires_grad_(with_grad)
        with model.hooks(fwd_hooks=[(name, keep) for name in names]):
            scores = run_scores(model(batch, start_at_layer=0, residual=x0), target)
        states = torch.stack([acts[n] for n in names])
        grads = torch.stack(torch.autograd.grad(scores.sum(), [acts[n] for n in names])) if with_grad else None
    return states.detach(), scores.detach(), grads


def atp_patched_scores(model, runs: TraceRuns, spec: TraceSpec, *, batch_size: int = 64) -> PatchedScores:
    """First-order estimates of every cell's patched score, the same layout as
    :func:`~interp.tracing.engine.patched_scores`: ``patched`` ``[run, axis, pos]`` (NaN past each
    run's length), exact clean ``base`` and ``source`` scores. ``n_forward`` counts the forward
    passes run (two per chunk; the backward pass is not counted)."""
    if spec.window > 1:
        raise ClipInterpError(
            f"AtP estimates one site per cell (window 1), not window {spec.window}: writing the source's "
            "value at a later layer of the window overrides what the earlier write carried through that "
            "site, so the sites' first-order terms do not add up; use window 1 or the exact engine"
        )
    device = model.device
    names = spec.hook_names(model)
    n_runs, n_pos = runs.batch.tokens.shape
    patched = torch.full((n_runs, spec.n_axis, n_pos), float("nan"), device=device, dtype=model.dtype)
    base_scores = torch.empty(n_runs, device=device, dtype=model.dtype)
    source_scores = torch.empty(n_runs, device=device, dtype=model.dtype)
    n_forward = 0
    order = torch.argsort(runs.batch.lengths, stable=True)
    for start in range(0, n_runs, batch_size):
        idx = order[start:start + batch_size]
        sub = runs.batch[idx]
        width = _trimmed(model, sub)
        sub = TokenBatch(sub.tokens[:, :width], sub.attention_mask[:, :width], sub.pool_index,
                         sub.token_type_ids[:, :width], sub.texts).to(device)
        base_x0 = runs.base_x0[idx, :width].to(device)
        source_x0 = runs.source_x0[idx, :width].to(device)
        if isinstance(runs.direction, TextTarget):  # the text target: from the clean outputs, held fixed
            with torch.no_grad():
                target = runs.direction.directions(model(sub, start_at_layer=0, residual=base_x0),
                                                   model(sub, start_at_layer=0, residual=source_x0))
            n_forward += 2
        else:
            target = runs.direction[idx].to(device)
        source, s_scores, _ = _states(model, sub, source_x0, names, target, with_grad=False)
        base, b_scores, grads = _states(model, sub, base_x0, names, target, with_grad=True)
        n_forward += 2
        contribution = ((source - base) * grads).sum(-1)  # [axis, b, pos]
        estimate = b_scores[None, :, None] + contribution
        estimate = estimate.masked_fill(~sub.attention_mask[None], float("nan"))
        patched[idx.to(device), :, :width] = estimate.permute(1, 0, 2)
        base_scores[idx.to(device)] = b_scores
        source_scores[idx.to(device)] = s_scores
    return PatchedScores(patched=patched, base=base_scores, source=source_scores, n_forward=n_forward)



def cell_fidelity(
    estimate: Float[Tensor, "item axis pos"], exact: Float[Tensor, "item axis pos"], *, k: int = 10
) -> pd.DataFrame:
    """How far AtP's cell effects can be trusted: per layer (and ``"all"``), Spearman correlation
    and top-k overlap (by |effect|) of the estimated vs the exact effects over every real
    (item, position) cell, and the largest absolute error. NaN cells (padding) are dropped."""
    from interp.heads.atp import spearman, top_k_overlap

    est, exa = estimate.double().cpu(), exact.double().cpu()
    keep = ~(est.isnan() | exa.isnan())
    rows = []
    for layer in ["all", *range(est.shape[1])]:
        sel = keep.clone()
        if layer != "all":
            sel[:, [j for j in range(est.shape[1]) if j != layer]] = False
        x, y = est[sel].numpy(), exa[sel].numpy()
        rows.append({"layer": layer, "n_cells": int(sel.sum()), "spearman": spearman(x, y),
                     f"top{k}_overlap": top_k_overlap(x, y, k),
                     "max_abs_error": float(abs(x - y).max()) if len(x) else float("nan")})
    return pd.DataFrame(rows)


def atp_check(model, items, directions: Tensor, spec: TraceSpec, *, mode: str = "patch", direction: str = "denoise",
              noise=None, k: int = 10, budget_mb: float | None = None) -> pd.DataFrame:
    """Re-run ``items`` with the exact engine and AtP; :func:`cell_fidelity` of their effects."""
    from interp.tracing.engine import DEFAULT_BUDGET_MB, patched_scores
    from interp.tracing.inputs import build_runs, effects

    runs, per_item = build_runs(model, items, directions, mode, direction, noise)
    exact = effects(patched_scores(model, runs, spec, budget_mb=budget_mb or DEFAULT_BUDGET_MB), per_item)[0]
    estimate = effects(atp_patched_scores(model, runs, spec), per_item)[0]
    return cell_fidelity(estimate, exact, k=k)
