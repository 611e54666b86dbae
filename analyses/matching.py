"""Training-free matching between two paired spaces (Maniparambil et al., CVPR 2024; docs/analyses.md).

Given ``n_base`` known pairs and ``n_query`` items of each space whose pairing is hidden, recover
the pairing:

- **Seeded QAP**: stack [base; queries] in both spaces, build centred kernels A, B scaled by
  sqrt(HSIC(K, K)), and maximise trace(A P B P^T) over permutations P with the base block fixed
  (``scipy.optimize.quadratic_assignment``, FAQ, ``partial_match``, ``maximize``), best of N seeded
  random restarts.
- **Local CKA**: score(i, j) = CKA([x_i; X_base], [y_j; Y_base]); retrieval ranks the candidates j
  per query i (top-1/5/10), matching runs the Hungarian algorithm on the score matrix.

The Y-side queries are shuffled by a hidden permutation before matching, so no method can profit
from the identity being a tie-breaking default.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
from jaxtyping import Float, Int
from scipy.cluster.vq import kmeans2
from scipy.optimize import linear_sum_assignment, quadratic_assignment
from tqdm.auto import tqdm

from analyses.similarity import Kernel, center_gram, linear_gram, median_sq_distance, squared_distances
from analyses.validation import AnalysisInputError, as_matrix, as_paired, check_positive_int

log = logging.getLogger(__name__)

BaseSelection = Literal["random", "kmeans"]
TOP_K: tuple[int, ...] = (1, 5, 10)


def scaled_centered_kernel(x: Float[np.ndarray, "n d"], kernel: Kernel = "linear") -> Float[np.ndarray, "n n"]:
    """H K H / sqrt(HSIC(K, K)): the graph QAP aligns (unit Frobenius norm)."""
    if kernel == "linear":
        k = linear_gram(x)
    elif kernel == "rbf":
        dist = squared_distances(x)
        k = np.exp(-dist / (2.0 * median_sq_distance(dist)))
    else:
        raise AnalysisInputError(f"kernel must be 'linear' or 'rbf', got {kernel!r}.")
    kc = center_gram(k)
    norm = np.sqrt(np.sum(kc * kc))
    if norm == 0:
        raise AnalysisInputError("all rows are identical: the kernel carries no structure to match.")
    return kc / norm


def _check_split(n: int, base_idx: np.ndarray, query_idx: np.ndarray) -> None:
    both = np.concatenate([base_idx, query_idx])
    if both.size == 0 or both.min() < 0 or both.max() >= n:
        raise AnalysisInputError(f"base/query indices must lie in [0, {n}), got range [{both.min()}, {both.max()}].")
    if np.unique(both).size != both.size:
        raise AnalysisInputError("base and query indices must be distinct (no item in both sets or twice).")
    if query_idx.size < 2:
        raise AnalysisInputError(f"matching needs at least 2 queries, got {query_idx.size}.")


@dataclass(frozen=True)
class QAPResult:
    """``match[i]`` = index (into ``query_idx``) of the Y item matched to X query i; gold is ``i``."""

    match: Int[np.ndarray, "n_query"]
    accuracy: float
    objective: float
    restart_objectives: np.ndarray


def seeded_qap(
    x: Float[np.ndarray, "n p"],
    y: Float[np.ndarray, "n q"],
    base_idx: Sequence[int],
    query_idx: Sequence[int],
    *,
    n_restarts: int = 50,
    seed: int = 0,
    kernel: Kernel = "linear",
    maxiter: int = 30,
) -> QAPResult:
    """Seeded graph matching of the query items of ``x`` and ``y`` with the base pairs fixed."""
    x, y = as_paired(x, y)
    base_idx, query_idx = np.asarray(base_idx, dtype=int), np.asarray(query_idx, dtype=int)
    _check_split(x.shape[0], base_idx, query_idx)
    n_restarts = check_positive_int(n_restarts, "n_restarts")
    rng = np.random.default_rng(seed)
    hidden = rng.permutation(query_idx.size)  # Y query j sits at position where hidden == j
    m = base_idx.size
    a = scaled_centered_kernel(x[np.concatenate([base_idx, query_idx])], kernel)
    b = scaled_centered_kernel(y[np.concatenate([base_idx, query_idx[hidden]])], kernel)
    seeds = np.stack([np.arange(m), np.arange(m)], axis=1)
    best, objectives = None, np.empty(n_restarts)
    for r, child in enumerate(tqdm(rng.spawn(n_restarts), desc="QAP restarts", leave=False, disable=n_restarts < 5)):
        res = quadratic_assignment(
            a, b, method="faq",
            options={"maximize": True, "partial_match": seeds, "P0": "randomized", "rng": child, "maxiter": maxiter},
        )
        objectives[r] = res.fun
        if best is None or res.fun > best.fun:
            best = res
    match = hidden[best.col_ind[m:] - m]
    accuracy = float(np.mean(match == np.arange(query_idx.size)))
    return QAPResult(match, accuracy, float(best.fun), objectives)


def _side_kernels(
    base: np.ndarray, query: np.ndarray, kernel: Kernel
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Base kernel [m, m], query-to-base kernel [nq, m], query self-kernel [nq]."""
    if kernel == "linear":
        mu = base.mean(axis=0)  # linear CKA is translation invariant; centring keeps the sums small
        b, q = base - mu, query - mu
        return b @ b.T, q @ b.T, np.einsum("nd,nd->n", q, q)
    if kernel == "rbf":
        both = np.concatenate([base, query])
        sigma2 = median_sq_distance(squared_distances(both))
        mu = both.mean(axis=0)
        b, q = base - mu, query - mu
        bn, qn = np.einsum("nd,nd->n", b, b), np.einsum("nd,nd->n", q, q)
        kb = np.exp(-np.maximum(bn[:, None] + bn[None, :] - 2 * b @ b.T, 0) / (2 * sigma2))
        np.fill_diagonal(kb, 1.0)
        kq = np.exp(-np.maximum(qn[:, None] + bn[None, :] - 2 * q @ b.T, 0) / (2 * sigma2))
        return kb, kq, np.ones(q.shape[0])
    raise AnalysisInputError(f"kernel must be 'linear' or 'rbf', got {kernel!r}.")


def _augmented_hsic_terms(kb: np.ndarray, kq: np.ndarray, kqq: np.ndarray):
    """Per-query pieces of the (m+1)-point kernel [[k_qq, k_q^T], [k_q, K_b]]."""
    row_first = kqq + kq.sum(axis=1)  # first entry of K_i 1
    row_rest = kq + kb.sum(axis=1)[None, :]  # remaining entries of K_i 1
    total = kqq + 2 * kq.sum(axis=1) + kb.sum()  # 1^T K_i 1
    return row_first, row_rest, total


def local_cka_scores(
    x_base: Float[np.ndarray, "m p"],
    x_query: Float[np.ndarray, "nq p"],
    y_base: Float[np.ndarray, "m q"],
    y_query: Float[np.ndarray, "nq2 q"],
    *,
    kernel: Kernel = "linear",
) -> Float[np.ndarray, "nq nq2"]:
    """score[i, j] = CKA([x_query[i]; x_base], [y_query[j]; y_base]) for all pairs, by matrix products.

    HSIC(K, L) = tr(KL) - 2/N 1^T K L 1 + (1^T K 1)(1^T L 1)/N^2 with N = m + 1; each term splits into
    per-query vectors and one [nq, m] x [m, nq2] product, so the cost is O(nq nq2 m), not O(nq nq2 m^2).
    For RBF, sigma^2 is the median heuristic over base + queries of each space.
    """
    x_base, y_base = as_paired(x_base, y_base, ("x_base", "y_base"), min_rows=2)
    for name, q, b in (("x_query", x_query, x_base), ("y_query", y_query, y_base)):
        q = np.asarray(q)
        if q.ndim != 2 or q.shape[1] != b.shape[1]:
            raise AnalysisInputError(f"{name} must be [n, {b.shape[1]}] like its base, got shape {q.shape}.")

    x_query, y_query = as_matrix(x_query, "x_query"), as_matrix(y_query, "y_query")
    n = x_base.shape[0] + 1
    kb, kq, kqq = _side_kernels(x_base, x_query, kernel)
    lb, lq, lqq = _side_kernels(y_base, y_query, kernel)
    kf, kr, kt = _augmented_hsic_terms(kb, kq, kqq)
    lf, lr, lt = _augmented_hsic_terms(lb, lq, lqq)
    cross = (
        np.outer(kqq, lqq) + 2 * kq @ lq.T + np.sum(kb * lb)
        - 2.0 / n * (np.outer(kf, lf) + kr @ lr.T)
        + np.outer(kt, lt) / n**2
    )
    kself = kqq**2 + 2 * np.einsum("im,im->i", kq, kq) + np.sum(kb * kb) - 2.0 / n * (kf**2 + np.einsum("im,im->i", kr, kr)) + kt**2 / n**2
    lself = lqq**2 + 2 * np.einsum("im,im->i", lq, lq) + np.sum(lb * lb) - 2.0 / n * (lf**2 + np.einsum("im,im->i", lr, lr)) + lt**2 / n**2
    return cross / np.sqrt(np.outer(kself, lself))


def retrieval_topk(scores: Float[np.ndarray, "nq nq"], ks: Sequence[int] = TOP_K) -> dict[str, float]:
    """Share of queries whose gold candidate (the diagonal) ranks within the top k.

    rank = number of candidates scoring strictly higher than the gold (ties resolved in the gold's favour).
    """
    gold = np.diag(scores)
    rank = np.sum(scores > gold[:, None], axis=1)
    return {f"top{k}": float(np.mean(rank < k)) for k in ks}


def hungarian_accuracy(scores: Float[np.ndarray, "nq nq"]) -> float:
    """Share of queries the maximum-score one-to-one assignment pairs with their gold (diagonal) partner."""
    rows, cols = linear_sum_assignment(scores, maximize=True)
    return float(np.mean(cols[np.argsort(rows)] == np.arange(scores.shape[0])))


def stretch(x: Float[np.ndarray, "n d"]) -> Float[np.ndarray, "n d"]:
    """Per-dimension standardisation ("stretching"); constant dimensions are only centred."""
    sd = x.std(axis=0)
    return (x - x.mean(axis=0)) / np.where(sd > 0, sd, 1.0)


def select_split(
    x: Float[np.ndarray, "n p"], n_base: int, n_query: int, *, seed: int, base_selection: BaseSelection = "random"
) -> tuple[np.ndarray, np.ndarray]:
    """Pick base and query indices; ``"kmeans"`` takes the item nearest each of ``n_base`` k-means centroids
    of ``x`` as the base (diverse anchors), then random queries from the rest."""
    n = x.shape[0]
    if n_base + n_query > n:
        raise AnalysisInputError(
            f"requested {n_base} base + {n_query} query pairs but only {n} pairs are available: lower "
            "--n-base/--n-query or pass more paired items."
        )
    rng = np.random.default_rng(seed)
    if base_selection == "random":
        order = rng.permutation(n)
        return order[:n_base], order[n_base : n_base + n_query]
    if base_selection != "kmeans":
        raise AnalysisInputError(f"base_selection must be 'random' or 'kmeans', got {base_selection!r}.")
    centroids, _ = kmeans2(x, n_base, seed=rng, minit="++")
    dist = np.sum(x**2, axis=1)[None, :] - 2 * centroids @ x.T
    chosen: list[int] = []
    taken = np.zeros(n, dtype=bool)
    for row in dist:  # nearest not-yet-chosen item per centroid
        row = np.where(taken, np.inf, row)
        idx = int(np.argmin(row))
        taken[idx] = True
        chosen.append(idx)
    rest = np.flatnonzero(~taken)
    return np.asarray(chosen), rng.permutation(rest)[:n_query]


def matching_protocol(
    x: Float[np.ndarray, "n p"],
    y: Float[np.ndarray, "n q"],
    *,
    n_base: int = 320,
    n_query: int = 500,
    seeds: Sequence[int] = (0, 1, 2),
    stretching: bool = False,
    base_selection: BaseSelection = "random",
    kernel: Kernel = "linear",
    qap_restarts: int = 50,
    methods: Sequence[str] = ("qap", "local_cka"),
) -> pd.DataFrame:
    """The paper's protocol: per seed, one base/query split, QAP and local-CKA matching.

    Returns one row per (seed, method) with accuracy (one-to-one matching) and, for local CKA,
    top-1/5/10 retrieval.
    """
    x, y = as_paired(x, y)
    n_base = check_positive_int(n_base, "n_base", minimum=2)
    n_query = check_positive_int(n_query, "n_query", minimum=2)
    unknown = set(methods) - {"qap", "local_cka"}
    if unknown:
        raise AnalysisInputError(f"unknown matching method(s) {sorted(unknown)}: use 'qap' and/or 'local_cka'.")
    if stretching:
        x, y = stretch(x), stretch(y)
    rows = []
    for seed in seeds:
        base, query = select_split(x, n_base, n_query, seed=seed, base_selection=base_selection)
        common = {"seed": seed, "n_base": n_base, "n_query": n_query, "stretching": stretching,
                  "base_selection": base_selection, "kernel": kernel}
        if "qap" in methods:
            t0 = time.perf_counter()
            res = seeded_qap(x, y, base, query, n_restarts=qap_restarts, seed=seed, kernel=kernel)
            rows.append({**common, "method": "qap", "accuracy": res.accuracy, "objective": res.objective,
                         "restarts": qap_restarts, "seconds": time.perf_counter() - t0})
        if "local_cka" in methods:
            t0 = time.perf_counter()
            scores = local_cka_scores(x[base], x[query], y[base], y[query], kernel=kernel)
            rows.append({**common, "method": "local_cka", "accuracy": hungarian_accuracy(scores),
                         **retrieval_topk(scores), "seconds": time.perf_counter() - t0})
        log.info("matching seed %s done", seed)
    return pd.DataFrame(rows)
