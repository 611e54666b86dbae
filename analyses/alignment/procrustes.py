"""Vector-space alignment by orthogonal Procrustes with cosine / CSLS retrieval (Li et al.; CSLS: Conneau et al., ICLR 2018; docs/analyses.md).

Protocol: PCA the larger space down to the smaller one's dimension and centre both (unsupervised,
fitted on all source rows and the full target vocabulary); fit W = U V^T from SVD(X^T Y) on a training
dictionary so that X W ~ Y; map held-out sources; retrieve over the full target vocabulary with cosine
or CSLS (k = 100 by default); precision@k for k in {1, 5, 10, 30, 50, 100}, a hit when any gold alias is
in the top k; k-fold cross-validation over the dictionary (folds split by source item or group).

``python -m analyses.alignment --x a.npz --y b.npz --out DIR`` writes the full report
(see :mod:`analyses.cli.alignment`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd
from jaxtyping import Float, Int, Shaped

from analyses.validation import AnalysisInputError, as_matrix, as_paired, check_positive_int
from interp.runs.threads import single_blas_thread

log = logging.getLogger(__name__)

Retrieval = Literal["cosine", "csls"]
PRECISION_KS: tuple[int, ...] = (1, 5, 10, 30, 50, 100)
from analyses.options import CSLS_K  # noqa: E402,F401 - re-exported
_CHUNK = 256  # query rows scored at once: 256 x vocabulary float64 scores (100 MB at 50k targets)


def pca_reduce(x: Float[np.ndarray, "n d"], n_components: int) -> Float[np.ndarray, "n k"]:
    """Centre and project onto the top ``n_components`` principal directions (SVD)."""
    x = as_matrix(x, "X")
    n_components = check_positive_int(n_components, "n_components")
    if n_components > min(x.shape):
        raise AnalysisInputError(
            f"cannot keep {n_components} principal components of a {x.shape} matrix (at most {min(x.shape)})."
        )
    xc = x - x.mean(axis=0)
    _, _, vt = np.linalg.svd(xc, full_matrices=False)
    return xc @ vt[:n_components].T


def match_dimensions(
    x: Float[np.ndarray, "n p"], y: Float[np.ndarray, "v q"]
) -> tuple[Float[np.ndarray, "n d"], Float[np.ndarray, "v d"]]:
    """PCA the larger space down to the smaller one's dimension d = min(p, q); centre both."""
    x, y = as_matrix(x, "X (sources)"), as_matrix(y, "Y (targets)")
    d = min(x.shape[1], y.shape[1])
    if d > min(x.shape[0], y.shape[0]):
        d = min(x.shape[0], y.shape[0])
        log.warning("fewer rows than features: both spaces reduced to %d principal components", d)
    xr = pca_reduce(x, d) if x.shape[1] > d else x - x.mean(axis=0)
    yr = pca_reduce(y, d) if y.shape[1] > d else y - y.mean(axis=0)
    return xr, yr


def fit_procrustes(x: Float[np.ndarray, "n d"], y: Float[np.ndarray, "n d"]) -> Float[np.ndarray, "d d"]:
    """The orthogonal W minimising ||X W - Y||_F: W = U V^T with U S V^T = SVD(X^T Y)."""
    x, y = as_paired(x, y, ("X (train sources)", "Y (train targets)"))
    if x.shape[1] != y.shape[1]:
        raise AnalysisInputError(
            f"Procrustes needs equal dimensions, got {x.shape[1]} and {y.shape[1]}: call match_dimensions first."
        )
    u, _, vt = np.linalg.svd(x.T @ y)
    return u @ vt


def fit_least_squares(x: Float[np.ndarray, "n p"], y: Float[np.ndarray, "n q"]) -> Float[np.ndarray, "p q"]:
    """The unconstrained linear map minimising ||X W - Y||_F (minimum-norm lstsq solution)."""
    x, y = as_paired(x, y, ("X (train sources)", "Y (train targets)"))
    return np.linalg.lstsq(x, y, rcond=None)[0]


def _normalize(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norm > 0, norm, 1.0)


def _mean_topk_cos(a: np.ndarray, b: np.ndarray, k: int) -> np.ndarray:
    """For each (normalised) row of a: mean cosine of its k nearest rows of b; chunked over a."""
    k = min(k, b.shape[0])
    out = np.empty(a.shape[0])
    for s in range(0, a.shape[0], _CHUNK):
        sims = a[s : s + _CHUNK] @ b.T
        out[s : s + _CHUNK] = np.partition(sims, sims.shape[1] - k, axis=1)[:, -k:].mean(axis=1)
    return out


def csls_scores(
    queries: Float[np.ndarray, "nq d"],
    targets: Float[np.ndarray, "v d"],
    *,
    k: int = CSLS_K,
    source_pool: Float[np.ndarray, "ns d"] | None = None,
) -> Float[np.ndarray, "nq v"]:
    """CSLS(q, t) = 2 cos(q, t) - r_T(q) - r_S(t) (Conneau et al. 2018).

    r_T(q) = mean cosine of q's k nearest targets; r_S(t) = mean cosine of t's k nearest mapped sources
    (``source_pool``, default the queries). k is capped at the pool sizes.
    """
    k = check_positive_int(k, "csls k")
    q, t = _normalize(queries), _normalize(targets)
    pool = q if source_pool is None else _normalize(source_pool)
    r_t = _mean_topk_cos(q, t, k)
    r_s = _mean_topk_cos(t, pool, k)
    return 2.0 * (q @ t.T) - r_t[:, None] - r_s[None, :]


def _pad_gold(gold: Sequence[Sequence[int]] | np.ndarray, n_queries: int, vocab: int) -> np.ndarray:
    if isinstance(gold, np.ndarray) and gold.ndim == 1:
        gold = gold[:, None]
    if len(gold) != n_queries:
        raise AnalysisInputError(f"gold has {len(gold)} entries but there are {n_queries} queries: one alias list per query.")
    width = max((len(g) for g in gold), default=0)
    padded = np.full((n_queries, max(width, 1)), -1, dtype=int)
    for i, g in enumerate(gold):
        if len(g) == 0:
            raise AnalysisInputError(f"query {i} has no gold target: every query needs at least one alias.")
        padded[i, : len(g)] = g
    if padded.max() >= vocab or (padded[padded != -1] < 0).any():
        raise AnalysisInputError(f"gold target indices must lie in [0, {vocab}).")
    return padded


def gold_ranks(
    queries: Float[np.ndarray, "nq d"],
    targets: Float[np.ndarray, "v d"],
    gold: Sequence[Sequence[int]] | Int[np.ndarray, "nq"],
    *,
    retrieval: Retrieval = "cosine",
    csls_k: int = CSLS_K,
    source_pool: np.ndarray | None = None,
) -> Int[np.ndarray, "nq"]:
    """0-based rank of the best gold alias per query over the full vocabulary.

    rank = number of targets scoring strictly higher than the best-scoring alias (ties in the gold's favour).
    """
    if retrieval not in ("cosine", "csls"):
        raise AnalysisInputError(f"retrieval must be 'cosine' or 'csls', got {retrieval!r}.")
    gold = _pad_gold(gold, queries.shape[0], targets.shape[0])
    tn = _normalize(targets)
    if retrieval == "csls":
        pool = _normalize(queries if source_pool is None else source_pool)
        r_s = _mean_topk_cos(tn, pool, min(csls_k, pool.shape[0]))
    ranks = np.empty(queries.shape[0], dtype=int)
    for s in range(0, queries.shape[0], _CHUNK):
        q = _normalize(queries[s : s + _CHUNK])
        scores = q @ tn.T
        if retrieval == "csls":
            r_t = np.partition(scores, scores.shape[1] - min(csls_k, scores.shape[1]), axis=1)
            r_t = r_t[:, -min(csls_k, scores.shape[1]) :].mean(axis=1)
            scores = 2.0 * scores - r_t[:, None] - r_s[None, :]
        g = gold[s : s + _CHUNK]
        gold_scores = np.where(g >= 0, np.take_along_axis(scores, np.maximum(g, 0), axis=1), -np.inf)
        ranks[s : s + _CHUNK] = np.sum(scores > gold_scores.max(axis=1, keepdims=True), axis=1)
    return ranks


def precision_at_k(ranks: Int[np.ndarray, "nq"], ks: Sequence[int] = PRECISION_KS) -> dict[str, float]:
    """P@k = share of queries with a gold alias in the top k (rank < k)."""
    ranks = np.asarray(ranks)
    return {f"P@{k}": float(np.mean(ranks < k)) for k in ks}


def _folds(groups: np.ndarray, n_folds: int, seed: int) -> list[np.ndarray]:
    unique = np.unique(groups)
    if unique.size < n_folds:
        raise AnalysisInputError(
            f"{n_folds}-fold cross-validation needs at least {n_folds} dictionary items, got {unique.size}."
        )
    order = np.random.default_rng(seed).permutation(unique)
    return [np.isin(groups, part) for part in np.array_split(order, n_folds)]


# Small matrices: extra BLAS threads only spin at barriers (interp.runs.threads); results are the same.
@single_blas_thread()
def kfold_alignment(
    x: Float[np.ndarray, "n p"],
    y: Float[np.ndarray, "v q"],
    pairs: Int[np.ndarray, "n_pairs 2"],
    *,
    groups: Shaped[np.ndarray, "n"] | None = None,  # any labels (ints or strings)
    n_folds: int = 5,
    seed: int = 0,
    csls_k: int = CSLS_K,
    ks: Sequence[int] = PRECISION_KS,
) -> pd.DataFrame:
    """k-fold cross-validated Procrustes alignment of sources ``x`` to the target vocabulary ``y``.

    ``pairs`` rows are (source index, target index) dictionary entries; a source with several target
    entries has several gold aliases. Folds split sources by ``groups`` (default: the source index), so
    items of one group never sit on both sides. Returns one row per (fold, retrieval) with P@k.
    """
    x, y = as_matrix(x, "X (sources)"), as_matrix(y, "Y (targets)")
    pairs = np.asarray(pairs, dtype=int)
    if pairs.ndim != 2 or pairs.shape[1] != 2 or pairs.shape[0] == 0:
        raise AnalysisInputError(f"pairs must be [n_pairs, 2] (source index, target index), got shape {pairs.shape}.")
    if pairs[:, 0].min() < 0 or pairs[:, 0].max() >= x.shape[0] or pairs[:, 1].min() < 0 or pairs[:, 1].max() >= y.shape[0]:
        raise AnalysisInputError(f"pairs index outside X ({x.shape[0]} rows) or Y ({y.shape[0]} rows).")
    groups = np.arange(x.shape[0]) if groups is None else np.asarray(groups)
    if groups.shape != (x.shape[0],):
        raise AnalysisInputError(f"groups must have one entry per source row ({x.shape[0]}), got shape {groups.shape}.")
    xr, yr = match_dimensions(x, y)
    sources = np.unique(pairs[:, 0])
    aliases = {s: pairs[pairs[:, 0] == s, 1] for s in sources}
    rows = []
    for fold, test_mask in enumerate(_folds(groups[sources], check_positive_int(n_folds, "n_folds", minimum=2), seed)):
        train_pairs = pairs[np.isin(pairs[:, 0], sources[~test_mask])]
        test_sources = sources[test_mask]
        w = fit_procrustes(xr[train_pairs[:, 0]], yr[train_pairs[:, 1]])
        mapped_all = xr @ w
        gold = [aliases[s] for s in test_sources]
        for retrieval in ("cosine", "csls"):
            ranks = gold_ranks(mapped_all[test_sources], yr, gold, retrieval=retrieval, csls_k=csls_k,
                               source_pool=mapped_all)
            rows.append({"fold": fold, "retrieval": retrieval, "n_train_pairs": len(train_pairs),
                         "n_test": len(test_sources), "vocabulary": y.shape[0], "dim": xr.shape[1],
                         **precision_at_k(ranks, ks)})
    return pd.DataFrame(rows)
