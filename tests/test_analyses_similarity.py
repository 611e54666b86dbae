"""CKA: closed forms on hand-computed data, invariances, reference loops, streaming, permutation baseline."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy.stats import ortho_group

from analyses.similarity import (
    LinearCKAAccumulator,
    cka,
    cka_from_grams,
    cka_matrix,
    hsic_unbiased,
    linear_cka,
    permutation_test,
    rbf_cka,
)
from analyses.validation import AnalysisInputError


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


# ------------------------------------------------------------------ references written as plain loops


def _ref_hsic_loop(k: np.ndarray, l: np.ndarray) -> float:
    """sum((HKH) * (HLH)) with H built explicitly."""
    n = k.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    return float(np.sum((h @ k @ h) * (h @ l @ h)))


def _ref_hsic_unbiased_ustat(k: np.ndarray, l: np.ndarray) -> float:
    """The U-statistic over distinct ordered 4-tuples: E[k_ij l_ij] + E[k_ij l_qr] - 2 E[k_ij l_iq]."""
    n = k.shape[0]
    total, count = 0.0, 0
    for i, j, q, r in itertools.permutations(range(n), 4):
        total += k[i, j] * l[i, j] + k[i, j] * l[q, r] - 2 * k[i, j] * l[i, q]
        count += 1
    return total / count


def _ref_rbf_gram_loop(x: np.ndarray) -> np.ndarray:
    n = x.shape[0]
    d = np.array([[np.sum((x[i] - x[j]) ** 2) for j in range(n)] for i in range(n)])
    nonzero = [d[i, j] for i in range(n) for j in range(i + 1, n) if d[i, j] > 0]
    sigma2 = float(np.median(nonzero))
    return np.exp(-d / (2 * sigma2))


def _ref_cka(k: np.ndarray, l: np.ndarray, h=_ref_hsic_loop) -> float:
    return h(k, l) / np.sqrt(h(k, k) * h(l, l))


# ------------------------------------------------------------------ hand-computed closed forms


def test_linear_cka_hand_computed_one_dimensional():
    # 1-D features: linear CKA = squared Pearson correlation. x = [1,2,3], y = [1,3,2]: centred
    # x = [-1,0,1], y = [-1,1,0]; cov = 1, var = 2 each, so CKA = 1^2 / (2 * 2) = 0.25.
    x = np.array([[1.0], [2.0], [3.0]])
    y = np.array([[1.0], [3.0], [2.0]])
    assert linear_cka(x, y) == pytest.approx(0.25, abs=1e-12)


def test_linear_cka_hand_computed_two_dimensional():
    # X centred = [[1,0],[-1,0],[0,1],[0,-1]] (already zero-mean); Y = X with its 2nd column doubled.
    # Xc^T Yc = diag(2, 4); Xc^T Xc = diag(2, 2); Yc^T Yc = diag(2, 8).
    # CKA = (4 + 16) / (sqrt(4 + 4) * sqrt(4 + 64)) = 20 / sqrt(544).
    x = np.array([[1.0, 0], [-1, 0], [0, 1], [0, -1]])
    y = x * np.array([1.0, 2.0])
    assert linear_cka(x, y) == pytest.approx(20 / np.sqrt(544), abs=1e-12)


def test_cka_self_is_one():
    x = _rng().normal(size=(50, 7))
    for kernel in ("linear", "rbf"):
        for debiased in (False, True):
            assert cka(x, x, kernel=kernel, debiased=debiased) == pytest.approx(1.0, abs=1e-10)


# ------------------------------------------------------------------ invariances


def test_linear_cka_invariant_to_rotation_and_isotropic_scaling_not_to_general_linear_maps():
    rng = _rng(1)
    x = rng.normal(size=(200, 10))
    y = x @ rng.normal(size=(10, 6)) + 0.5 * rng.normal(size=(200, 6))
    base = linear_cka(x, y)
    rot = ortho_group.rvs(10, random_state=2)
    assert linear_cka(x @ rot * 3.7 + 5.0, y) == pytest.approx(base, abs=1e-10)
    assert linear_cka(x, y * 0.01) == pytest.approx(base, abs=1e-10)
    # An anisotropic linear map changes the value (not invariant to arbitrary invertible maps).
    stretch = np.diag(np.geomspace(0.05, 20.0, 10)) @ rot
    assert abs(linear_cka(x @ stretch, y) - base) > 0.05
    # RBF CKA with the median heuristic is invariant to rotations and isotropic scaling too.
    base_rbf = rbf_cka(x, y)
    assert rbf_cka(x @ rot * 3.7, y) == pytest.approx(base_rbf, abs=1e-10)


def test_random_pairing_on_independent_data_is_near_zero():
    rng = _rng(3)
    x, y = rng.normal(size=(2000, 8)), rng.normal(size=(2000, 8))
    # Biased linear CKA of independent data is ~ d/n-ish; the debiased estimator is centred on 0.
    assert linear_cka(x, y) < 0.02
    assert abs(linear_cka(x, y, debiased=True)) < 0.005


# ------------------------------------------------------------------ parity with reference loops


@pytest.mark.parametrize("seed", [0, 1])
def test_kernel_forms_match_reference_loops(seed):
    rng = _rng(seed)
    x = rng.normal(size=(9, 4))
    y = np.tanh(x @ rng.normal(size=(4, 3))) + 0.3 * rng.normal(size=(9, 3))
    klin, llin = x @ x.T, y @ y.T
    krbf, lrbf = _ref_rbf_gram_loop(x), _ref_rbf_gram_loop(y)
    # biased
    assert linear_cka(x, y) == pytest.approx(_ref_cka(klin, llin), abs=1e-12)
    assert rbf_cka(x, y) == pytest.approx(_ref_cka(krbf, lrbf), abs=1e-12)
    # debiased: Song et al.'s closed form equals the U-statistic over 4-tuples
    assert hsic_unbiased(klin, llin) == pytest.approx(_ref_hsic_unbiased_ustat(klin, llin), rel=1e-10)
    assert linear_cka(x, y, debiased=True) == pytest.approx(_ref_cka(klin, llin, _ref_hsic_unbiased_ustat), abs=1e-10)
    assert rbf_cka(x, y, debiased=True) == pytest.approx(_ref_cka(krbf, lrbf, _ref_hsic_unbiased_ustat), abs=1e-10)


def test_streaming_accumulator_matches_full_kernel_form_with_offset_features():
    rng = _rng(4)
    # A large common offset stresses the uncentred sufficient statistics.
    x = rng.normal(size=(1000, 12)) + 50.0
    y = x[:, :5] @ rng.normal(size=(5, 9)) + rng.normal(size=(1000, 9)) - 30.0
    # The references use centred features: linear CKA (biased and debiased) does not change under a
    # common offset, and Gram matrices of raw +50/-30 features lose ~1e-8 to cancellation, an error
    # that depends on the BLAS kernel (it failed on AVX-512 at 1e-9). Centred Grams are well conditioned.
    xc, yc = x - x.mean(0), y - y.mean(0)
    ref_b = cka_from_grams(xc @ xc.T, yc @ yc.T)
    ref_u = cka_from_grams(xc @ xc.T, yc @ yc.T, debiased=True)
    acc = LinearCKAAccumulator()
    for start in range(0, 1000, 137):  # uneven chunks
        acc.update(x[start : start + 137], y[start : start + 137])
    assert acc.n == 1000
    assert acc.cka() == pytest.approx(ref_b, abs=1e-9)
    assert acc.cka(debiased=True) == pytest.approx(ref_u, abs=1e-9)
    assert linear_cka(x, y, chunk_size=64) == pytest.approx(ref_b, abs=1e-9)


def test_cka_matrix_matches_pairwise_calls_and_finds_the_planted_layer():
    rng = _rng(5)
    base = rng.normal(size=(120, 6))
    # layer 0 embeds `base` isometrically in 8 dims; ys[1] rotates it: their linear CKA is exactly 1.
    xs = [2.0 * base @ ortho_group.rvs(8, random_state=0)[:6], rng.normal(size=(120, 5)), np.tanh(base)]
    ys = [rng.normal(size=(120, 4)), base @ ortho_group.rvs(6, random_state=1)]
    for kernel in ("linear", "rbf"):
        for debiased in (False, True):
            mat = cka_matrix(xs, ys, kernel=kernel, debiased=debiased)
            loop = np.array([[cka(x, y, kernel=kernel, debiased=debiased) for y in ys] for x in xs])
            np.testing.assert_allclose(mat, loop, atol=1e-10)
    mat = cka_matrix(xs, ys)
    assert mat[0, 1] == pytest.approx(1.0, abs=1e-10)
    assert mat[1, 1] < 0.2 and mat[0, 0] < 0.2 and 0.5 < mat[2, 1] < 1.0


# ------------------------------------------------------------------ permutation baseline


def test_permutation_baseline_separates_true_pairs_from_shuffled():
    rng = _rng(6)
    x = rng.normal(size=(300, 10))
    y = x @ rng.normal(size=(10, 10)) + rng.normal(size=(300, 10))
    for kernel, debiased in (("linear", False), ("linear", True), ("rbf", False)):
        res = permutation_test(x, y, kernel=kernel, debiased=debiased, n_permutations=30, seed=0)
        assert res.observed == pytest.approx(cka(x, y, kernel=kernel, debiased=debiased), abs=1e-10)
        assert res.p_value == pytest.approx(1 / 31)
        assert res.null_mean < 0.1 < res.observed
    # the null values are CKAs of re-paired data, computed here by re-pairing explicitly
    res = permutation_test(x, y, n_permutations=3, seed=7)
    perms = np.random.default_rng(7)
    expected = [linear_cka(x, y[perms.permutation(300)]) for _ in range(3)]
    np.testing.assert_allclose(res.null, expected, atol=1e-12)
    # independent data: not significant
    res = permutation_test(x, rng.normal(size=(300, 4)), n_permutations=50, seed=0)
    assert res.p_value > 0.05


# ------------------------------------------------------------------ bad input


def test_bad_input_errors_name_the_input():
    x = np.zeros((5, 3)) + np.arange(5)[:, None]
    with pytest.raises(AnalysisInputError, match="X has 5 rows but Y has 4"):
        linear_cka(x, x[:4])
    bad = x.copy()
    bad[2, 1] = np.nan
    with pytest.raises(AnalysisInputError, match="Y contains NaN or inf in 1 row"):
        rbf_cka(x, bad)
    with pytest.raises(AnalysisInputError, match="dimension 0"):
        linear_cka(np.zeros((5, 0)), x)
    with pytest.raises(AnalysisInputError, match="at least 4"):
        linear_cka(x[:3], x[:3], debiased=True)
    with pytest.raises(AnalysisInputError, match="identical"):
        linear_cka(np.ones((5, 2)), x)
    with pytest.raises(AnalysisInputError, match="kernel must be one of"):
        cka(x, x, kernel="cosine")
    with pytest.raises(AnalysisInputError, match="layer 1 has 4 rows"):
        cka_matrix([x], [x, x[:4]])
    const = np.ones((5, 3))
    for kernel in ("linear", "rbf"):
        with pytest.raises(AnalysisInputError, match="Y layer 1 is constant across items"):
            cka_matrix([x], [x, const], kernel=kernel)
        mat = cka_matrix([x, const], [x, const], kernel=kernel, constant_layers="nan")
        assert mat[0, 0] == pytest.approx(1.0) and np.isnan(mat[1]).all() and np.isnan(mat[:, 1]).all()
    # equal up to float rounding (0.1 + 0.2 != 0.3) still counts as constant, not as a tiny real signal
    rounded = np.array([[0.1 + 0.2, 1.0], [0.3, 1.0], [0.3, 1.0], [0.1 + 0.2, 1.0], [0.3, 1.0]])
    assert np.ptp(rounded[:, 0]) > 0
    with pytest.raises(AnalysisInputError, match="X layer 0 is constant"):
        cka_matrix([rounded], [x])
