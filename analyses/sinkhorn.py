"""Entropic optimal transport (Sinkhorn-Knopp) in the log domain, for assignment targets.

Given scores S [n, K] (higher = more alike), row marginal a [n] and column marginal b [K] (each summing
to 1), the plan is P = diag(u) exp(S / eps) diag(v) with P 1 = a and P^T 1 = b. Iterations alternate
column and row scalings and end on the rows, so each row's mass is exact; the columns converge.
Used by :mod:`analyses.assignment_map` (VLAP-style assignment prediction, Park et al., ICLR 2024; docs/analyses.md).
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from analyses.validation import AnalysisInputError


def _check_marginal(m: Tensor | None, size: int, name: str, like: Tensor) -> Tensor:
    if m is None:
        return torch.full((size,), 1.0 / size, dtype=like.dtype, device=like.device)
    m = torch.as_tensor(m, dtype=like.dtype, device=like.device)
    if m.shape != (size,):
        raise AnalysisInputError(f"{name} must have shape ({size},), got {tuple(m.shape)}.")
    if not torch.isfinite(m).all() or (m < 0).any() or m.sum() <= 0:
        raise AnalysisInputError(f"{name} must be finite, non-negative and not all zero (e.g. word frequencies).")
    return m / m.sum()


@torch.no_grad()
def sinkhorn(
    scores: Float[Tensor, "n k"],
    *,
    eps: float = 0.05,
    n_iters: int = 50,
    row_marginal: Float[Tensor, "n"] | None = None,
    col_marginal: Float[Tensor, "k"] | None = None,
) -> Float[Tensor, "n k"]:
    """Entropic OT plan for ``scores`` (total mass 1); uniform marginals unless given.

    ``eps`` is the entropic temperature (smaller = closer to a hard assignment, needs more iterations).
    Zero-mass marginal entries get zero rows/columns. Computed without gradient.
    """
    if scores.ndim != 2 or scores.shape[0] == 0 or scores.shape[1] == 0:
        raise AnalysisInputError(f"scores must be a non-empty [n, K] matrix, got shape {tuple(scores.shape)}.")
    if not eps > 0:
        raise AnalysisInputError(f"eps must be > 0, got {eps!r}.")
    if not torch.isfinite(scores).all():
        raise AnalysisInputError("scores contain NaN or inf: check the embeddings fed to the assignment step.")
    n, k = scores.shape
    log_a = _check_marginal(row_marginal, n, "row_marginal", scores).log()
    log_b = _check_marginal(col_marginal, k, "col_marginal", scores).log()
    logits = scores / eps
    f = torch.zeros(n, dtype=scores.dtype, device=scores.device)
    g = torch.zeros(k, dtype=scores.dtype, device=scores.device)
    for _ in range(n_iters):
        g = log_b - torch.logsumexp(logits + f[:, None], dim=0)
        g = torch.where(torch.isfinite(log_b), g, torch.full_like(g, -torch.inf))
        f = log_a - torch.logsumexp(logits + g[None, :], dim=1)
        f = torch.where(torch.isfinite(log_a), f, torch.full_like(f, -torch.inf))
    return torch.exp(logits + f[:, None] + g[None, :])


def assignments(
    scores: Float[Tensor, "n k"], *, eps: float = 0.05, n_iters: int = 50, col_marginal: Float[Tensor, "k"] | None = None
) -> Float[Tensor, "n k"]:
    """Soft assignments of n items to K prototypes: the Sinkhorn plan with uniform rows, rescaled so each
    row sums to 1; ``col_marginal`` (e.g. word frequencies) sets how much of the batch each prototype gets."""
    plan = sinkhorn(scores, eps=eps, n_iters=n_iters, col_marginal=col_marginal)
    return plan * scores.shape[0]
