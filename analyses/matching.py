"""Training-free matching between two paired spaces (Maniparambil et al., CVPR 2024; docs/analyses.md).

Given ``n_base`` known pairs and ``n_query`` items of each space whose pairing is hidden, recover
the pairing:

- **Seeded QAP**: stack [base; queries] in both spaces, build centred kernels A, B scaled by
  sqrt(HSIC(K, K)) (RBF with the median bandwidth by default, as seed 002's code; linear as an
  option), and maximise trace(A P B P^T) over permutations P with the base block fixed
  (``scipy.optimize.quadratic_assignment``, FAQ, ``partial_match``, ``maximize``), best of N seeded
  random restarts.
- **Local CKA**: score(i, j) = CKA([x_i; X_base], [y_j; Y_base]); retrieval ranks the candidates j
  per query i (top-1/5/10), matching runs the Hungarian algorithm on the score matrix. With the RBF
  kernel the authors recompute the median bandwidth on each augmented set [x_i; X_base]
  (``bandwidth="per_set"``, exact, the default); ``"shared"`` uses one bandwidth per space over base +
  all queries, which allows a closed form (faster, an approximation of the paper's score).

Protocol (:func:`matching_protocol`): by default the base set is drawn once (``base_seed``) and only
the queries are redrawn per seed (``protocol="fixed_base"``, the authors' code); ``"redraw"`` draws a
new base and new queries per seed.

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
from interp.runs.threads import single_blas_thread

log = logging.getLogger(__name__)

BaseSelection = Literal["random", "kmeans"]
Protocol = Literal["fixed_base", "redraw"]
Bandwidth = Literal["per_set", "shared"]
from analyses.options import BANDWIDTHS, PROTOCOLS  # noqa: E402,F401 - re-exported (light home: the CLI's choices)
DEFAULT_KERNEL: Kernel = "rbf"  # seed 002's graph kernel
_PAIR_CHUNK = 64  # queries per block of the exact per-set local CKA (bounds memory)
_KEEP_BYTES = 256 * 2**20  # the per-set local CKA keeps all Y-side kernels only below this size
TOP_K: tuple[int, ...] = (1, 5, 10)


def scaled_centered_kernel(x: Float[np.ndarray, "n d"], kernel: Kernel = DEFAULT_KERNEL) -> Float[np.ndarray, "n n"]:
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
    kernel: Kernel = DEFAULT_KERNEL,
    maxiter: int = 30,
    progress: bool = True,
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
    for r, child in enumerate(tqdm(rng.spawn(n_restarts), desc="QAP restarts", leave=False, disable=not progress or n_restarts < 5)):
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


def _local_cka_closed_form(
    x_base: Float[np.ndarray, "m p"],
    x_query: Float[np.ndarray, "nq p"],
    y_base: Float[np.ndarray, "m q"],
    y_query: Float[np.ndarray, "nq2 q"],
    kernel: Kernel,
) -> Float[np.ndarray, "nq nq2"]:
    """score[i, j] = CKA([x_query[i]; x_base], [y_query[j]; y_base]) for all pairs, by matrix products.

    HSIC(K, L) = tr(KL) - 2/N 1^T K L 1 + (1^T K 1)(1^T L 1)/N^2 with N = m + 1; each term splits into
    per-query vectors and one [nq, m] x [m, nq2] product, so the cost is O(nq nq2 m), not O(nq nq2 m^2).
    For RBF, sigma^2 is the median heuristic over base + queries of each space (``bandwidth="shared"``).
    """
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


def _augmented_sq_distances(base: np.ndarray, query: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Base-base squared distances [m, m] and query-to-base ones [nq, m], centred on the base first."""
    mu = base.mean(axis=0)
    b, q = base - mu, query - mu
    bn, qn = np.einsum("nd,nd->n", b, b), np.einsum("nd,nd->n", q, q)
    db = np.maximum(bn[:, None] + bn[None, :] - 2 * b @ b.T, 0)
    np.fill_diagonal(db, 0.0)
    return db, np.maximum(qn[:, None] + bn[None, :] - 2 * q @ b.T, 0)


def _per_set_centred_kernels(db: np.ndarray, dq: np.ndarray, base_upper: np.ndarray) -> np.ndarray:
    """Per query i: the centred RBF kernel H K_i H of the augmented set [q_i; base] with sigma^2 the
    median of its non-zero pairwise squared distances, flattened -> [nq, (m + 1)^2]."""
    m = db.shape[0]
    out = np.empty((dq.shape[0], (m + 1) ** 2))
    for i, row in enumerate(dq):
        pooled = np.concatenate([base_upper, row])
        pooled = pooled[pooled > 0]
        if pooled.size == 0:
            raise AnalysisInputError("an augmented set has identical rows only: the RBF bandwidth is undefined.")
        sigma2 = float(np.median(pooled))
        d = np.empty((m + 1, m + 1))
        d[0, 0], d[0, 1:], d[1:, 0], d[1:, 1:] = 0.0, row, row, db
        out[i] = center_gram(np.exp(-d / (2.0 * sigma2))).ravel()
    return out


def _local_cka_per_set(x_base, x_query, y_base, y_query) -> Float[np.ndarray, "nq nq2"]:
    """Exact RBF local CKA with each augmented set's own median bandwidth (seed 002's score).

    HSIC(K_i, L_j) = <H K_i H, H L_j H> for every (i, j) is one product of the flattened centred
    kernels, taken in blocks of queries: O(nq nq2 m^2) flops, memory O(block m^2).
    """
    dbx, dqx = _augmented_sq_distances(x_base, x_query)
    dby, dqy = _augmented_sq_distances(y_base, y_query)
    upper = np.triu_indices(dbx.shape[0], k=1)
    ux, uy = dbx[upper], dby[upper]
    scores = np.empty((x_query.shape[0], y_query.shape[0]))

    def y_blocks():
        for j0 in range(0, y_query.shape[0], _PAIR_CHUNK):
            yield j0, _per_set_centred_kernels(dby, dqy[j0:j0 + _PAIR_CHUNK], uy)

    # keep the Y kernels between X blocks when they fit the budget, else rebuild them per X block
    fits = y_query.shape[0] * (dby.shape[0] + 1) ** 2 * 8 <= _KEEP_BYTES
    kept = list(y_blocks()) if fits else None
    for i0 in range(0, x_query.shape[0], _PAIR_CHUNK):
        kx = _per_set_centred_kernels(dbx, dqx[i0:i0 + _PAIR_CHUNK], ux)
        kx_norm = np.sqrt(np.einsum("ij,ij->i", kx, kx))
        for j0, ly in (kept if fits else y_blocks()):
            ly_norm = np.sqrt(np.einsum("ij,ij->i", ly, ly))
            scores[i0:i0 + len(kx), j0:j0 + len(ly)] = (kx @ ly.T) / np.outer(kx_norm, ly_norm)
    return scores


def local_cka_scores(
    x_base: Float[np.ndarray, "m p"],
    x_query: Float[np.ndarray, "nq p"],
    y_base: Float[np.ndarray, "m q"],
    y_query: Float[np.ndarray, "nq2 q"],
    *,
    kernel: Kernel = DEFAULT_KERNEL,
    bandwidth: Bandwidth = "per_set",
) -> Float[np.ndarray, "nq nq2"]:
    """score[i, j] = CKA([x_query[i]; x_base], [y_query[j]; y_base]) for all pairs.

    ``kernel="rbf"`` with ``bandwidth="per_set"`` (default) is seed 002's score: each augmented set
    gets its own median bandwidth (exact, O(nq nq2 m^2)). ``"shared"`` is the toolkit's closed form with
    one bandwidth per space (O(nq nq2 m), an approximation). The linear kernel has no bandwidth.
    """
    x_base, y_base = as_paired(x_base, y_base, ("x_base", "y_base"), min_rows=2)
    for name, q, b in (("x_query", x_query, x_base), ("y_query", y_query, y_base)):
        q = np.asarray(q)
        if q.ndim != 2 or q.shape[1] != b.shape[1]:
            raise AnalysisInputError(f"{name} must be [n, {b.shape[1]}] like its base, got shape {q.shape}.")
    if bandwidth not in BANDWIDTHS:
        raise AnalysisInputError(f"bandwidth must be one of {', '.join(BANDWIDTHS)}, got {bandwidth!r}.")
    x_query, y_query = as_matrix(x_query, "x_query"), as_matrix(y_query, "y_query")
    if kernel == "rbf" and bandwidth == "per_set":
        return _local_cka_per_set(x_base, x_query, y_base, y_query)
    return _local_cka_closed_form(x_base, x_query, y_base, y_query, kernel)


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


def protocol_splits(
    x: Float[np.ndarray, "n p"], n_base: int, n_query: int, seeds: Sequence[int], *,
    protocol: Protocol = "fixed_base", base_seed: int = 0, base_selection: BaseSelection = "random",
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(base, query) indices per seed: ``"fixed_base"`` draws the base once with ``base_seed`` and the
    queries per seed from the remaining items; ``"redraw"`` calls :func:`select_split` per seed."""
    if protocol not in PROTOCOLS:
        raise AnalysisInputError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}.")
    if protocol == "redraw":
        return [select_split(x, n_base, n_query, seed=seed, base_selection=base_selection) for seed in seeds]
    base = select_split(x, n_base, n_query, seed=base_seed, base_selection=base_selection)[0]
    rest = np.setdiff1d(np.arange(x.shape[0]), base)
    return [(base, np.random.default_rng(seed).permutation(rest)[:n_query]) for seed in seeds]


# Small matrices: extra BLAS threads only spin at barriers (interp.runs.threads); results are the same.
@single_blas_thread()
def matching_protocol(
    x: Float[np.ndarray, "n p"],
    y: Float[np.ndarray, "n q"],
    *,
    n_base: int = 320,
    n_query: int = 500,
    seeds: Sequence[int] = (0, 1, 2),
    stretching: bool = False,
    base_selection: BaseSelection = "random",
    kernel: Kernel = DEFAULT_KERNEL,
    qap_restarts: int = 50,
    methods: Sequence[str] = ("qap", "local_cka"),
    protocol: Protocol = "fixed_base",
    base_seed: int = 0,
    local_cka_bandwidth: Bandwidth = "per_set",
    progress: bool = True,
) -> pd.DataFrame:
    """Seed 002's protocol by default: one base set (drawn with ``base_seed``), queries redrawn per
    seed from the other items, RBF QAP and RBF local CKA with per-set bandwidths. ``protocol="redraw"``
    draws base and queries anew per seed (the toolkit's earlier split).

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
    splits = protocol_splits(x, n_base, n_query, seeds, protocol=protocol, base_seed=base_seed,
                             base_selection=base_selection)
    for seed, (base, query) in zip(seeds, splits):
        common = {"seed": seed, "n_base": n_base, "n_query": n_query, "stretching": stretching,
                  "base_selection": base_selection, "kernel": kernel, "protocol": protocol}
        if "qap" in methods:
            t0 = time.perf_counter()
            res = seeded_qap(x, y, base, query, n_restarts=qap_restarts, seed=seed, kernel=kernel, progress=progress)
            rows.append({**common, "method": "qap", "accuracy": res.accuracy, "objective": res.objective,
                         "restarts": qap_restarts, "seconds": time.perf_counter() - t0})
        if "local_cka" in methods:
            t0 = time.perf_counter()
            scores = local_cka_scores(x[base], x[query], y[base], y[query], kernel=kernel, bandwidth=local_cka_bandwidth)
            rows.append({**common, "method": "local_cka", "bandwidth": local_cka_bandwidth if kernel == "rbf" else "none", "accuracy": hungarian_accuracy(scores),
                         **retrieval_topk(scores), "seconds": time.perf_counter() - t0})
        log.info("matching seed %s done", seed)
    return pd.DataFrame(rows)
