"""Centred kernel alignment (CKA) between two paired representation spaces (Kornblith et al., ICML 2019; docs/analyses.md).

Definitions (n paired items, H = I - 11^T / n):

- HSIC(K, L) = sum((H K H) * (H L H)) (the biased estimator; constants cancel in CKA).
- Debiased HSIC: the unbiased estimator of Song et al. (2012) on K~, L~ (kernels with zeroed diagonal):
  [tr(K~ L~) + (1^T K~ 1)(1^T L~ 1) / ((n-1)(n-2)) - 2/(n-2) 1^T K~ L~ 1] / (n (n-3)).
- CKA(K, L) = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)).
- Linear kernel K = X X^T; RBF kernel K_ij = exp(-||x_i - x_j||^2 / (2 sigma^2)) with sigma^2 the median
  of the non-zero pairwise squared distances, computed per space.

Linear CKA never forms an n x n matrix: it works in feature space (||Xc^T Yc||_F^2 = <H K H, H L H>) and
:class:`LinearCKAAccumulator` streams rows in chunks, so 50k x 1024 embeddings need only d x d memory.
RBF CKA needs the n x n kernels (8 n^2 bytes each).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from jaxtyping import Float
from tqdm.auto import tqdm

from analyses.validation import AnalysisInputError, as_matrix, as_paired, check_positive_int
from interp.runs.threads import single_blas_thread

log = logging.getLogger(__name__)

Kernel = Literal["linear", "rbf"]
KERNELS: tuple[str, ...] = ("linear", "rbf")
# The debiased estimator divides by n (n - 3) and (n - 1)(n - 2): it needs at least four items.
MIN_ROWS_DEBIASED = 4
MIN_ROWS = 2


def _min_rows(debiased: bool) -> int:
    return MIN_ROWS_DEBIASED if debiased else MIN_ROWS


def _check_kernel(kernel: str) -> None:
    if kernel not in KERNELS:
        raise AnalysisInputError(f"kernel must be one of {KERNELS}, got {kernel!r}.")


def _safe_ratio(num: float, den_x: float, den_y: float) -> float:
    """num / sqrt(den_x den_y); raise when a space is constant (its self-HSIC is zero)."""
    if den_x <= 0 or den_y <= 0:
        which = "X" if den_x <= 0 else "Y"
        raise AnalysisInputError(
            f"CKA is undefined: {which} has zero (or, debiased, non-positive) self-similarity HSIC, i.e. its rows "
            "are (nearly) identical. Pass representations that vary across items."
        )
    return float(num / np.sqrt(den_x * den_y))


# ---------------------------------------------------------------------------------------------------------
# Kernel (Gram) form: the reference definitions, O(n^2) memory.


def linear_gram(x: Float[np.ndarray, "n d"]) -> Float[np.ndarray, "n n"]:
    """K = X X^T."""
    x = as_matrix(x, "X")
    return x @ x.T


def squared_distances(x: Float[np.ndarray, "n d"]) -> Float[np.ndarray, "n n"]:
    """Pairwise squared Euclidean distances (centred first for precision, clipped at 0, zero diagonal)."""
    x = as_matrix(x, "X")
    xc = x - x.mean(axis=0)
    sq = np.einsum("nd,nd->n", xc, xc)
    dist = sq[:, None] + sq[None, :] - 2.0 * (xc @ xc.T)
    np.maximum(dist, 0.0, out=dist)
    np.fill_diagonal(dist, 0.0)
    return dist


def median_sq_distance(dist: Float[np.ndarray, "n n"]) -> float:
    """Median of the non-zero off-diagonal squared distances (the per-space RBF bandwidth sigma^2)."""
    upper = dist[np.triu_indices(dist.shape[0], k=1)]
    nonzero = upper[upper > 0]
    if nonzero.size == 0:
        raise AnalysisInputError(
            "All rows are identical, so the RBF median heuristic has no non-zero distance: pass varying rows "
            "or an explicit sigma2."
        )
    return float(np.median(nonzero))


def rbf_gram(x: Float[np.ndarray, "n d"], sigma2: float | None = None) -> Float[np.ndarray, "n n"]:
    """K_ij = exp(-||x_i - x_j||^2 / (2 sigma^2)); sigma^2 defaults to the median heuristic."""
    dist = squared_distances(x)
    if sigma2 is None:
        sigma2 = median_sq_distance(dist)
    if not sigma2 > 0:
        raise AnalysisInputError(f"sigma2 must be > 0, got {sigma2!r}.")
    return np.exp(-dist / (2.0 * sigma2))


def center_gram(k: Float[np.ndarray, "n n"]) -> Float[np.ndarray, "n n"]:
    """H K H without forming H."""
    k = k - k.mean(axis=0, keepdims=True)
    return k - k.mean(axis=1, keepdims=True)


def hsic(k: Float[np.ndarray, "n n"], l: Float[np.ndarray, "n n"]) -> float:
    """Biased HSIC: sum((H K H) * (H L H))."""
    return float(np.sum(center_gram(k) * center_gram(l)))


def hsic_unbiased(k: Float[np.ndarray, "n n"], l: Float[np.ndarray, "n n"]) -> float:
    """Unbiased HSIC estimator (Song et al. 2012); needs n >= 4."""
    n = k.shape[0]
    if n < MIN_ROWS_DEBIASED:
        raise AnalysisInputError(f"debiased HSIC needs at least {MIN_ROWS_DEBIASED} items, got {n}.")
    kt = k.copy()
    lt = l.copy()
    np.fill_diagonal(kt, 0.0)
    np.fill_diagonal(lt, 0.0)
    k1 = kt.sum(axis=1)
    l1 = lt.sum(axis=1)
    term = np.sum(kt * lt) + k1.sum() * l1.sum() / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * float(k1 @ l1)
    return float(term / (n * (n - 3)))


def cka_from_grams(k: Float[np.ndarray, "n n"], l: Float[np.ndarray, "n n"], *, debiased: bool = False) -> float:
    """CKA between two kernel matrices over the same n items."""
    if k.shape != l.shape or k.ndim != 2 or k.shape[0] != k.shape[1]:
        raise AnalysisInputError(f"kernels must be square and of one shape, got {k.shape} and {l.shape}.")
    h = hsic_unbiased if debiased else hsic
    return _safe_ratio(h(k, l), h(k, k), h(l, l))


def gram(x: Float[np.ndarray, "n d"], kernel: Kernel, sigma2: float | None = None) -> Float[np.ndarray, "n n"]:
    """The kernel matrix of one space."""
    _check_kernel(kernel)
    return linear_gram(x) if kernel == "linear" else rbf_gram(x, sigma2)


# ---------------------------------------------------------------------------------------------------------
# Feature form for the linear kernel: O(d^2) memory, streamable.


class LinearCKAAccumulator:
    """Streaming linear CKA (biased and debiased) from row chunks of two paired spaces.

    Keeps float64 sufficient statistics (sums, X^T X, Y^T Y, X^T Y and a few row-norm moments), so
    memory is O(p^2 + q^2 + p q) whatever n is. Rows are shifted by the first chunk's means for
    precision; both estimators are exactly invariant to such a shift.

    >>> acc = LinearCKAAccumulator()
    >>> for xb, yb in chunks: acc.update(xb, yb)      # doctest: +SKIP
    >>> acc.cka(), acc.cka(debiased=True)             # doctest: +SKIP
    """

    def __init__(self) -> None:
        self.n = 0
        self._shift: tuple[np.ndarray, np.ndarray] | None = None

    def update(self, x: Float[np.ndarray, "b p"], y: Float[np.ndarray, "b q"]) -> None:
        """Add a chunk of paired rows."""
        x, y = as_paired(x, y, ("X chunk", "Y chunk"))
        if self._shift is None:
            self._shift = (x.mean(axis=0), y.mean(axis=0))
            p, q = x.shape[1], y.shape[1]
            self.sx, self.sy = np.zeros(p), np.zeros(q)
            self.sxx, self.syy, self.sxy = np.zeros((p, p)), np.zeros((q, q)), np.zeros((p, q))
            self.sa = self.sb = self.saa = self.sbb = self.sab = 0.0
            self.sax, self.sbx, self.say, self.sby = np.zeros(p), np.zeros(p), np.zeros(q), np.zeros(q)
        elif x.shape[1] != self.sx.shape[0] or y.shape[1] != self.sy.shape[0]:
            raise AnalysisInputError(
                f"chunk widths ({x.shape[1]}, {y.shape[1]}) differ from the first chunk's "
                f"({self.sx.shape[0]}, {self.sy.shape[0]}): every chunk must have the same features."
            )
        x = x - self._shift[0]
        y = y - self._shift[1]
        a = np.einsum("np,np->n", x, x)
        b = np.einsum("nq,nq->n", y, y)
        self.n += x.shape[0]
        self.sx += x.sum(axis=0)
        self.sy += y.sum(axis=0)
        self.sxx += x.T @ x
        self.syy += y.T @ y
        self.sxy += x.T @ y
        self.sa += a.sum()
        self.sb += b.sum()
        self.saa += a @ a
        self.sbb += b @ b
        self.sab += a @ b
        self.sax += a @ x
        self.sbx += b @ x
        self.say += a @ y
        self.sby += b @ y

    def _biased(self) -> tuple[float, float, float]:
        n = self.n
        cxx = self.sxx - np.outer(self.sx, self.sx) / n
        cyy = self.syy - np.outer(self.sy, self.sy) / n
        cxy = self.sxy - np.outer(self.sx, self.sy) / n
        return float(np.sum(cxy**2)), float(np.sum(cxx**2)), float(np.sum(cyy**2))

    def _unbiased_term(self, kl: float, sab: float, k1: float, l1: float, k1l1: float) -> float:
        n = self.n
        return (kl - sab + k1 * l1 / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * k1l1) / (n * (n - 3))

    def _unbiased(self) -> tuple[float, float, float]:
        sx, sy = self.sx, self.sy
        k1 = float(sx @ sx) - self.sa  # 1^T K~ 1
        l1 = float(sy @ sy) - self.sb
        xy = self._unbiased_term(
            float(np.sum(self.sxy**2)), self.sab, k1, l1,
            float(sx @ self.sxy @ sy) - float(sx @ self.sbx) - float(sy @ self.say) + self.sab,
        )
        xx = self._unbiased_term(
            float(np.sum(self.sxx**2)), self.saa, k1, k1,
            float(sx @ self.sxx @ sx) - 2.0 * float(sx @ self.sax) + self.saa,
        )
        yy = self._unbiased_term(
            float(np.sum(self.syy**2)), self.sbb, l1, l1,
            float(sy @ self.syy @ sy) - 2.0 * float(sy @ self.sby) + self.sbb,
        )
        return xy, xx, yy

    def cka(self, *, debiased: bool = False) -> float:
        """Linear CKA of all rows seen so far."""
        need = _min_rows(debiased)
        if self.n < need:
            raise AnalysisInputError(f"linear CKA needs at least {need} rows, {self.n} were accumulated.")
        return _safe_ratio(*(self._unbiased() if debiased else self._biased()))


def linear_cka(
    x: Float[np.ndarray, "n p"], y: Float[np.ndarray, "n q"], *, debiased: bool = False, chunk_size: int = 8192
) -> float:
    """Linear CKA in feature space (no n x n matrix), streamed in ``chunk_size``-row chunks."""
    x, y = as_paired(x, y, min_rows=_min_rows(debiased))
    chunk_size = check_positive_int(chunk_size, "chunk_size")
    acc = LinearCKAAccumulator()
    for start in range(0, x.shape[0], chunk_size):
        acc.update(x[start : start + chunk_size], y[start : start + chunk_size])
    return acc.cka(debiased=debiased)


def rbf_cka(
    x: Float[np.ndarray, "n p"],
    y: Float[np.ndarray, "n q"],
    *,
    debiased: bool = False,
    sigma2_x: float | None = None,
    sigma2_y: float | None = None,
) -> float:
    """RBF-kernel CKA with the per-space median heuristic (unless ``sigma2_x`` / ``sigma2_y`` are given)."""
    x, y = as_paired(x, y, min_rows=_min_rows(debiased))
    return cka_from_grams(rbf_gram(x, sigma2_x), rbf_gram(y, sigma2_y), debiased=debiased)


def cka(x: Float[np.ndarray, "n p"], y: Float[np.ndarray, "n q"], *, kernel: Kernel = "linear", debiased: bool = False) -> float:
    """CKA between two paired spaces with the ``"linear"`` or ``"rbf"`` kernel."""
    _check_kernel(kernel)
    if kernel == "linear":
        return linear_cka(x, y, debiased=debiased)
    return rbf_cka(x, y, debiased=debiased)


# ---------------------------------------------------------------------------------------------------------
# Permutation baseline and layer-by-layer matrices.


@dataclass(frozen=True)
class PermutationResult:
    """Observed CKA, the CKA of ``n_permutations`` shuffled pairings, and the one-sided p-value."""

    observed: float
    null: np.ndarray
    p_value: float

    @property
    def null_mean(self) -> float:
        return float(self.null.mean())


def _hsic_cross_centered(kc: np.ndarray, lc: np.ndarray, perms: np.ndarray, debiased: bool,
                         progress: bool = True) -> np.ndarray:
    """HSIC(K, L[perm][:, perm]) for each permutation row (kernels already centred or diag-zeroed)."""
    out = np.empty(perms.shape[0])
    for i, perm in enumerate(tqdm(perms, desc="permutations", leave=False, disable=not progress or perms.shape[0] < 50)):
        out[i] = hsic_unbiased(kc, lc[np.ix_(perm, perm)]) if debiased else float(np.sum(kc * lc[np.ix_(perm, perm)]))
    return out


# Small matrices: extra BLAS threads only spin at barriers (interp.runs.threads); results are the same.
@single_blas_thread()
def permutation_test(
    x: Float[np.ndarray, "n p"],
    y: Float[np.ndarray, "n q"],
    *,
    kernel: Kernel = "linear",
    debiased: bool = False,
    n_permutations: int = 200,
    seed: int = 0,
    progress: bool = True,
) -> PermutationResult:
    """Permutation baseline: CKA with the pairing shuffled; p = (1 + #{null >= observed}) / (1 + N).

    Self-similarity terms do not change under a re-pairing, so only the cross term is recomputed.
    The linear kernel works in feature space (one ``[p, q]`` product per permutation); RBF uses the
    n x n kernels.
    """
    _check_kernel(kernel)
    x, y = as_paired(x, y, min_rows=_min_rows(debiased))
    n_permutations = check_positive_int(n_permutations, "n_permutations")
    for which, m in (("X", x), ("Y", y)):  # zero self-HSIC: CKA would be 0/0, reported as inf or NaN
        if _is_constant(m):
            raise AnalysisInputError(f"CKA is undefined: every row of {which} is the same (a constant representation). "
                                     "Pass representations that vary across items.")
    rng = np.random.default_rng(seed)
    n = x.shape[0]
    perms = np.stack([rng.permutation(n) for _ in range(n_permutations)])
    if kernel == "linear" and not debiased:
        xc, yc = x - x.mean(axis=0), y - y.mean(axis=0)
        den = np.sqrt(np.sum((xc.T @ xc) ** 2) * np.sum((yc.T @ yc) ** 2))
        observed = float(np.sum((xc.T @ yc) ** 2) / den)
        null = np.array([np.sum((xc.T @ yc[perm]) ** 2) for perm in perms]) / den
    else:
        k, l = gram(x, kernel), gram(y, kernel)
        if debiased:
            den = np.sqrt(hsic_unbiased(k, k) * hsic_unbiased(l, l))
            observed = hsic_unbiased(k, l) / den
            null = _hsic_cross_centered(k, l, perms, True, progress) / den
        else:
            kc, lc = center_gram(k), center_gram(l)
            den = np.sqrt(np.sum(kc * kc) * np.sum(lc * lc))
            observed = float(np.sum(kc * lc) / den)
            null = _hsic_cross_centered(kc, lc, perms, False, progress) / den
    if not (np.isfinite(observed) and np.isfinite(null).all() and den > 0):
        raise AnalysisInputError(f"CKA is undefined for these inputs ({kernel}, debiased={debiased}): a self-similarity "
                                 "HSIC is zero or negative (rows nearly identical, or too few rows). Pass representations "
                                 "that vary across items.")
    p_value = float((1 + np.sum(null >= observed)) / (1 + n_permutations))
    return PermutationResult(float(observed), null, p_value)


def _is_constant(x: np.ndarray) -> bool:
    """Every row equal, up to float rounding relative to the values' scale."""
    return bool(np.ptp(x, axis=0).max() <= 1e-12 * max(float(np.abs(x).max()), 1e-300))


def _linear_side(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centred features and their centred row norms (enough for biased and debiased linear HSIC)."""
    xc = x - x.mean(axis=0)
    return xc, np.einsum("nd,nd->n", xc, xc)


def _linear_hsic_centered(xc: np.ndarray, a: np.ndarray, yc: np.ndarray, b: np.ndarray, debiased: bool) -> float:
    """Linear HSIC from exactly centred features (the accumulator's formulas with zero sums)."""
    cross = float(np.sum((xc.T @ yc) ** 2)) if xc.shape[1] * yc.shape[1] <= xc.shape[0] ** 2 else float(
        np.sum((xc @ xc.T) * (yc @ yc.T))
    )
    if not debiased:
        return cross
    n = xc.shape[0]
    sab = float(a @ b)
    return (cross - sab + a.sum() * b.sum() / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * sab) / (n * (n - 3))


def cka_matrix(
    xs: Sequence[Float[np.ndarray, "n p"]],
    ys: Sequence[Float[np.ndarray, "n q"]],
    *,
    kernel: Kernel = "linear",
    debiased: bool = False,
    names: tuple[str, str] = ("X", "Y"),
    constant_layers: Literal["raise", "nan"] = "raise",
    progress: bool = True,
) -> Float[np.ndarray, "layers_x layers_y"]:
    """CKA between every layer of one model/tower (``xs``) and every layer of another (``ys``).

    Self-similarity terms are computed once per layer. Linear CKA stays in feature space; RBF keeps
    the ``ys`` kernels in memory (len(ys) * 8 n^2 bytes). A layer that is the same for every item
    (e.g. a CLS token before the first block) has no defined CKA: ``constant_layers="raise"`` names it,
    ``"nan"`` fills its row/column with NaN and logs a warning.
    """
    if constant_layers not in ("raise", "nan"):
        raise AnalysisInputError(f"constant_layers must be 'raise' or 'nan', got {constant_layers!r}.")
    _check_kernel(kernel)
    if len(xs) == 0 or len(ys) == 0:
        raise AnalysisInputError(f"cka_matrix needs at least one layer on each side, got {len(xs)} and {len(ys)}.")
    need = _min_rows(debiased)
    xs = [as_matrix(x, f"{names[0]} layer {i}", min_rows=need) for i, x in enumerate(xs)]
    ys = [as_matrix(y, f"{names[1]} layer {j}", min_rows=need) for j, y in enumerate(ys)]
    n = xs[0].shape[0]
    for name, layers in zip(names, (xs, ys)):
        for i, layer in enumerate(layers):
            if layer.shape[0] != n:
                raise AnalysisInputError(
                    f"{name} layer {i} has {layer.shape[0]} rows but {names[0]} layer 0 has {n}: every layer "
                    "of both sides must hold the same paired items."
                )
    out = np.full((len(xs), len(ys)), np.nan)

    def constant(name: str, i: int) -> None:
        msg = f"{name} layer {i} is constant across items (zero self-HSIC): its CKA is undefined"
        if constant_layers == "raise":
            raise AnalysisInputError(msg + "; drop that layer or pass constant_layers='nan'.")
        log.warning("%s; its CKA entries are NaN", msg)

    def usable(layers: list[np.ndarray], name: str) -> list[bool]:
        ok = [not _is_constant(layer) for layer in layers]
        for i in np.flatnonzero(~np.array(ok)):
            constant(name, int(i))
        return ok

    if kernel == "linear":
        xok, yok = usable(xs, names[0]), usable(ys, names[1])
        xside = [_linear_side(x) for x in xs]
        yside = [_linear_side(y) for y in ys]
        xself = [_linear_hsic_centered(*s, *s, debiased) for s in xside]
        yself = [_linear_hsic_centered(*s, *s, debiased) for s in yside]
        for i in tqdm(range(len(xs)), desc="CKA matrix", leave=False, disable=not progress or len(xs) < 4):
            for j in range(len(ys)):
                if xok[i] and yok[j]:
                    out[i, j] = _safe_ratio(_linear_hsic_centered(*xside[i], *yside[j], debiased), xself[i], yself[j])
        return out
    h = hsic_unbiased if debiased else hsic

    xok, yok = usable(xs, names[0]), usable(ys, names[1])
    lgrams = [rbf_gram(y) if ok else None for y, ok in zip(ys, yok)]
    lself = [None if l is None else h(l, l) for l in lgrams]
    for i in tqdm(range(len(xs)), desc="CKA matrix", leave=False, disable=not progress or len(xs) < 4):
        if not xok[i]:
            continue
        k = rbf_gram(xs[i])
        kself = h(k, k)
        for j, l in enumerate(lgrams):
            if l is not None:
                out[i, j] = _safe_ratio(h(k, l), kself, lself[j])
    return out
