"""Ideal words: the weighted decomposition of Trager et al. (ICCV 2023, Proposition 4) and its metrics.

For a factored concept set Z = Z_1 x ... x Z_k with one embedding u_z per combination, weights
alpha_{z_i} >= 0 summing to 1 within each factor and beta_z = prod_i alpha_{z_i}, the best decomposable
approximation (minimising sum_z beta_z ||u_z - u~_z||^2) is ``u~_z = u_0 + sum_i u_{z_i}`` with

    u_0       = sum_z beta_z u_z
    u_{z_i}   = (1 / alpha_{z_i}) sum_{z with that component} beta_z u_z  -  u_0
              = sum_{z_{-i}} prod_{j != i} alpha_{z_j} u_z  -  u_0

The second form (a conditional weighted mean, no division) is what is computed here, so a zero weight
(alpha_house = 1, every other object 0: "green as in greenhouse") is allowed. The ideal words u_{z_i}
are the per-factor vectors; with default weights u_0 is the mean of all u_z and u_{z_i} the mean of
the u_z sharing z_i, minus u_0.

This module is pure tensor maths on an embedding grid ``[n_1, ..., n_k, d]``; collecting embeddings
from an encoder is in :mod:`probes.embeddings`, the report CLI in :mod:`probes.cli.ideal_words`
(``python -m probes.ideal_words`` runs it).
"""

from __future__ import annotations

from interp.errors import ClipInterpError

from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

AlphaSpec = Sequence[Sequence[float] | Tensor | None] | None


class DecompositionError(ClipInterpError, ValueError):
    """The embeddings or weights given to the decomposition are malformed."""


@dataclass
class Decomposition:
    """Result of :func:`decompose`.

    Attributes:
        u0: ``[d]`` the weighted mean of all embeddings.
        ideal_words: one ``[n_i, d]`` tensor per factor (the u_{z_i}).
        approx: ``[n_1, ..., n_k, d]`` the decomposable approximation u~_z.
        alphas: one ``[n_i]`` weight vector per factor (each sums to 1).
    """

    u0: Float[Tensor, " d"]
    ideal_words: list[Float[Tensor, "n_i d"]]
    approx: Float[Tensor, "*grid d"]
    alphas: list[Float[Tensor, " n_i"]]


def _check_grid(grid: Tensor) -> None:
    if not isinstance(grid, Tensor) or grid.ndim < 2:
        raise DecompositionError(
            "embeddings must be a tensor [n_1, ..., n_k, d] with one axis per factor and the embedding "
            f"last; got {type(grid).__name__} of shape {getattr(grid, 'shape', None)}"
        )
    if not torch.is_floating_point(grid):
        raise DecompositionError(f"embeddings must be floating point, got {grid.dtype}")
    if any(s < 2 for s in grid.shape[:-1]):
        raise DecompositionError(
            f"every factor needs at least two values; the grid shape is {tuple(grid.shape)}"
        )
    if not torch.isfinite(grid).all():
        raise DecompositionError("embeddings contain NaN or inf; check the encoder output")


def normalise_alphas(shape: Sequence[int], alphas: AlphaSpec = None, *,
                     dtype: torch.dtype = torch.float64) -> list[Tensor]:
    """Per-factor weights: ``None`` (or a ``None`` entry) is uniform 1/n_i; given weights must be >= 0,
    not all zero, and are rescaled to sum to 1 (a message says which factor is wrong otherwise)."""
    if alphas is None:
        alphas = [None] * len(shape)
    if len(alphas) != len(shape):
        raise DecompositionError(f"got {len(alphas)} alpha vectors for {len(shape)} factors")
    out = []
    for i, (n, a) in enumerate(zip(shape, alphas)):
        if a is None:
            out.append(torch.full((n,), 1.0 / n, dtype=dtype))
            continue
        a = torch.as_tensor(a, dtype=dtype).flatten()
        if a.numel() != n:
            raise DecompositionError(f"alpha for factor {i} has {a.numel()} entries, the factor has {n} values")
        if (a < 0).any() or not torch.isfinite(a).all() or a.sum() <= 0:
            raise DecompositionError(
                f"alpha for factor {i} must be finite, >= 0 and not all zero; got {a.tolist()}"
            )
        out.append(a / a.sum())
    return out


def _conditional_mean(grid: Tensor, alphas: list[Tensor], keep: int) -> Tensor:
    """Contract every factor axis except ``keep`` with its alpha: ``[n_keep, d]`` (``keep=-1``: ``[d]``)."""
    out = grid
    k = len(alphas)
    # contract from the last factor axis to the first so axis indices stay valid
    for axis in reversed(range(k)):
        if axis == keep:
            continue
        out = torch.tensordot(out.movedim(axis, -1), alphas[axis], dims=1)
    return out


def decompose(grid: Float[Tensor, "*grid d"], alphas: AlphaSpec = None) -> Decomposition:
    """Weighted ideal-word decomposition (Proposition 4) of an embedding grid.

    Args:
        grid: ``[n_1, ..., n_k, d]`` embeddings, one per combination (normalise them first if you want
            the paper's setting: this function never normalises).
        alphas: optional per-factor weights (see :func:`normalise_alphas`); default uniform.

    Returns:
        a :class:`Decomposition`, computed in the grid's dtype (use float64 for exact checks).
    """
    _check_grid(grid)
    shape = tuple(grid.shape[:-1])
    a = normalise_alphas(shape, alphas, dtype=grid.dtype)
    a = [x.to(grid.device) for x in a]
    u0 = _conditional_mean(grid, a, keep=-1)
    words = [_conditional_mean(grid, a, keep=i) - u0 for i in range(len(shape))]
    approx = u0.expand(*shape, -1).clone()
    for i, w in enumerate(words):
        view = [1] * len(shape) + [w.shape[-1]]
        view[i] = shape[i]
        approx = approx + w.reshape(view)
    return Decomposition(u0=u0, ideal_words=words, approx=approx, alphas=a)


def residual_norms(grid: Float[Tensor, "*grid d"], dec: Decomposition) -> Float[Tensor, " *grid"]:
    """``||u_z - u~_z||`` per combination."""
    return (grid - dec.approx).norm(dim=-1)


def numerical_rank(vectors: Float[Tensor, "n d"], rtol: float | None = None) -> int:
    """Number of singular values above ``rtol * s_max`` (default ``max(n, d) * eps`` of the dtype)."""
    s = torch.linalg.svdvals(vectors)
    if s.numel() == 0 or s[0] == 0:
        return 0
    if rtol is None:
        rtol = max(vectors.shape) * torch.finfo(vectors.dtype).eps
    return int((s > rtol * s[0]).sum())


EFFECTIVE_RANK_SHARE = 0.99  # share of the spread around u_0 the effective rank's directions hold


def effective_rank(vectors: Float[Tensor, "n d"], u0: Float[Tensor, " d"], share: float = EFFECTIVE_RANK_SHARE) -> int:
    """1 + the fewest principal directions of ``vectors - u0`` that hold ``share`` of their spread
    (sum of squared singular values). Comparable to the decomposable bound 1 + sum(n_i - 1): the 1
    counts u_0, the directions the ideal words. 1 when the vectors all equal u_0."""
    if not 0 < share <= 1:
        raise DecompositionError(f"share must lie in (0, 1], got {share}")
    energy = torch.linalg.svdvals(vectors - u0).double().pow(2)
    total = float(energy.sum())
    if total == 0:
        return 1
    held = torch.cumsum(energy, 0) / total
    # tolerance: a share reached exactly by k directions must not ask for a (k+1)-th through rounding
    directions = int((held < share - 1e-12).sum()) + 1
    return 1 + directions


def mean_pairwise_sq_distance(vectors: Float[Tensor, "n d"]) -> float:
    """Avg: mean of ``||u_z - u_z'||^2`` over unordered pairs z != z'."""
    n = vectors.shape[0]
    if n < 2:
        raise DecompositionError("Avg needs at least two embeddings")
    sq = torch.cdist(vectors, vectors).pow(2)
    return float(sq.sum() / (n * (n - 1)))


def real_word_distance(grid: Float[Tensor, "*grid d"],
                       single_words: Sequence[Float[Tensor, "n_i d"]]) -> Float[Tensor, " *grid"]:
    """RW per combination: distance of u_z to the mean of its factors' single-word embeddings
    (each already normalised by the caller; the mean is not re-normalised)."""
    shape = tuple(grid.shape[:-1])
    if len(single_words) != len(shape) or any(w.shape[0] != n for w, n in zip(single_words, shape)):
        raise DecompositionError(
            f"need one [n_i, d] single-word tensor per factor for a grid of shape {shape}; got "
            f"{[tuple(w.shape) for w in single_words]}"
        )
    mean = torch.zeros_like(grid)
    for i, w in enumerate(single_words):
        view = [1] * len(shape) + [w.shape[-1]]
        view[i] = shape[i]
        mean = mean + w.reshape(view)
    mean = mean / len(shape)
    return (grid - mean).norm(dim=-1)


def compositionality_metrics(grid: Float[Tensor, "*grid d"], alphas: AlphaSpec = None,
                             single_words: Sequence[Tensor] | None = None,
                             rank_rtol: float | None = None) -> dict[str, float]:
    """The per-set metrics of Trager et al. Tables 6/7, plus ranks and explained variance.

    Returns a dict with ``IW`` (mean residual distance), ``RW`` (NaN without single words), ``Avg``
    (mean squared pairwise distance), ``effective_rank`` (:func:`effective_rank`: 1 + the principal
    directions holding 99% of the spread around u_0), ``rank_eps`` (numerical rank of the u_z at
    machine-epsilon tolerance: full as soon as there is any noise), ``rank_bound`` (1 + sum(n_i - 1),
    what an exactly decomposable set cannot exceed), ``r2`` (share of sum ||u_z - u_0||^2 the decomposition explains) and
    ``IW_rel`` (IW divided by the mean distance of u_z to u_0).
    """
    dec = decompose(grid, alphas)
    flat = grid.reshape(-1, grid.shape[-1])
    res = residual_norms(grid, dec)
    spread = (grid - dec.u0).norm(dim=-1)
    total = float(spread.pow(2).sum())
    rw = float("nan")
    if single_words is not None:
        rw = float(real_word_distance(grid, single_words).mean())
    return {
        "IW": float(res.mean()),
        "RW": rw,
        "Avg": mean_pairwise_sq_distance(flat),
        "effective_rank": effective_rank(flat, dec.u0),
        "rank_eps": numerical_rank(flat, rank_rtol),
        "rank_bound": 1 + sum(s - 1 for s in grid.shape[:-1]),
        "r2": 1.0 - float(res.pow(2).sum()) / total if total > 0 else float("nan"),
        "IW_rel": float(res.mean() / spread.mean()) if total > 0 else float("nan"),
    }


def alphas_from_mapping(factor_values: Sequence[Sequence[str]], factor_names: Sequence[str],
                        spec: Mapping[str, Mapping[str, float]]) -> list[Tensor | None]:
    """Weights from ``{factor: {value: weight}}``; values not named get weight 0, factors not named
    are uniform. Used by the CLI's ``--alpha object:house=1``."""
    out: list[Tensor | None] = []
    unknown = sorted(set(spec) - set(factor_names))
    if unknown:
        raise DecompositionError(f"--alpha names unknown factor(s) {unknown}; factors are {list(factor_names)}")
    for name, values in zip(factor_names, factor_values):
        if name not in spec:
            out.append(None)
            continue
        bad = sorted(set(spec[name]) - set(values))
        if bad:
            raise DecompositionError(f"--alpha for factor {name!r} names unknown value(s) {bad}; values are {list(values)}")
        out.append(torch.tensor([float(spec[name].get(v, 0.0)) for v in values], dtype=torch.float64))
    return out


def parse_alpha_args(items: Sequence[str]) -> dict[str, dict[str, float]]:
    """Parse ``["object:house=1", "colour:red=0.5,green=0.5"]`` into ``{factor: {value: weight}}``."""
    spec: dict[str, dict[str, float]] = {}
    for item in items:
        try:
            factor, rest = item.split(":", 1)
            for part in rest.split(","):
                value, weight = part.split("=", 1)
                spec.setdefault(factor.strip(), {})[value.strip()] = float(weight)
        except ValueError as exc:
            raise DecompositionError(
                f"--alpha {item!r} is not FACTOR:VALUE=WEIGHT[,VALUE=WEIGHT...], e.g. object:house=1"
            ) from exc
    return spec
