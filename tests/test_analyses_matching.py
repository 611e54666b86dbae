"""Seeded QAP and local CKA: planted permutations, reference loops, protocol knobs, bad input."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy.stats import ortho_group

from analyses.matching import (
    hungarian_accuracy,
    local_cka_scores,
    matching_protocol,
    retrieval_topk,
    scaled_centered_kernel,
    seeded_qap,
    select_split,
)
from analyses.similarity import cka_from_grams
from analyses.validation import AnalysisInputError


def _planted(n: int, d: int, noise: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """y = x R + noise: a noisy rotated copy, paired row by row."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    return x, x @ ortho_group.rvs(d, random_state=seed) + noise * rng.normal(size=(n, d))


def test_local_cka_scores_match_a_loop_over_stacked_cka():
    rng = np.random.default_rng(0)
    xb, xq = rng.normal(size=(7, 4)), rng.normal(size=(5, 4)) + 2.0
    yb, yq = rng.normal(size=(7, 3)), rng.normal(size=(6, 3))
    fast = local_cka_scores(xb, xq, yb, yq, kernel="linear")
    loop = np.array([[cka_from_grams(np.vstack([xq[i], xb]) @ np.vstack([xq[i], xb]).T,
                                     np.vstack([yq[j], yb]) @ np.vstack([yq[j], yb]).T)
                      for j in range(6)] for i in range(5)])
    np.testing.assert_allclose(fast, loop, atol=1e-12)

    def rbf_loop(points: np.ndarray, pool: np.ndarray) -> np.ndarray:
        d_pool = [np.sum((a - b) ** 2) for a, b in itertools.combinations(pool, 2)]
        sigma2 = float(np.median([v for v in d_pool if v > 0]))
        return np.array([[np.exp(-np.sum((a - b) ** 2) / (2 * sigma2)) for b in points] for a in points])

    fast = local_cka_scores(xb, xq, yb, yq, kernel="rbf", bandwidth="shared")  # one bandwidth per space
    xpool, ypool = np.vstack([xb, xq]), np.vstack([yb, yq])
    loop = np.array([[cka_from_grams(rbf_loop(np.vstack([xq[i], xb]), xpool), rbf_loop(np.vstack([yq[j], yb]), ypool))
                      for j in range(6)] for i in range(5)])
    np.testing.assert_allclose(fast, loop, atol=1e-12)


def test_retrieval_and_hungarian_match_brute_force():
    rng = np.random.default_rng(1)
    scores = rng.normal(size=(6, 6))
    best = max(itertools.permutations(range(6)), key=lambda p: sum(scores[i, p[i]] for i in range(6)))
    assert hungarian_accuracy(scores) == pytest.approx(np.mean(np.array(best) == np.arange(6)))
    ranks = [sum(scores[i, j] > scores[i, i] for j in range(6)) for i in range(6)]
    got = retrieval_topk(scores, ks=(1, 3))
    assert got == {"top1": np.mean(np.array(ranks) < 1), "top3": np.mean(np.array(ranks) < 3)}


def test_qap_and_local_cka_accuracy_rise_to_one_as_noise_falls():
    base, query = np.arange(60), np.arange(60, 160)
    qap_acc, lcka_acc = [], []
    for noise in (3.0, 1.0, 0.3, 0.0):
        x, y = _planted(160, 16, noise, seed=3)
        qap_acc.append(seeded_qap(x, y, base, query, n_restarts=3, seed=0).accuracy)
        lcka_acc.append(hungarian_accuracy(local_cka_scores(x[base], x[query], y[base], y[query])))
    for acc in (qap_acc, lcka_acc):
        assert acc[0] < 0.3, acc  # heavy noise: near chance (1/100) territory
        assert all(b >= a - 0.02 for a, b in zip(acc, acc[1:])), acc
        assert acc[-1] == 1.0, acc


def test_qap_objective_is_the_trace_of_the_returned_matching():
    x, y = _planted(90, 8, 0.0, seed=4)
    base, query = np.arange(40), np.arange(40, 90)
    res = seeded_qap(x, y, base, query, n_restarts=2, seed=1)
    assert res.accuracy == 1.0 and np.array_equal(res.match, np.arange(50))
    # A perfect matching of a rotated copy: trace(A P B P^T) = sum(A * B) in gold order, and = 1
    a = scaled_centered_kernel(x)
    b = scaled_centered_kernel(y)
    assert res.objective == pytest.approx(np.sum(a * b), abs=1e-9)
    assert res.objective == pytest.approx(1.0, abs=1e-9)
    assert res.restart_objectives.shape == (2,) and res.objective == res.restart_objectives.max()


def test_qap_is_reproducible_per_seed():
    x, y = _planted(100, 8, 1.5, seed=5)
    a = seeded_qap(x, y, np.arange(30), np.arange(30, 100), n_restarts=2, seed=7)
    b = seeded_qap(x, y, np.arange(30), np.arange(30, 100), n_restarts=2, seed=7)
    assert np.array_equal(a.match, b.match) and a.objective == b.objective


def test_kmeans_base_selection_covers_every_cluster():
    rng = np.random.default_rng(6)
    centres = rng.normal(size=(10, 5)) * 50
    x = np.repeat(centres, 30, axis=0) + rng.normal(size=(300, 5))
    base, query = select_split(x, 10, 50, seed=0, base_selection="kmeans")
    assert len(set(base.tolist())) == 10 and not set(base.tolist()) & set(query.tolist())
    assert sorted(base // 30) == list(range(10))  # one anchor per planted cluster


def test_protocol_rows_and_stretching_rescues_a_swamping_nuisance_dimension():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(300, 12))
    # two huge-variance pure-noise columns in each space swamp the shared signal unless standardised
    x = np.c_[z, 30 * rng.normal(size=(300, 2))]
    y = np.c_[z @ ortho_group.rvs(12, random_state=0) + 0.3 * rng.normal(size=(300, 12)), 30 * rng.normal(size=(300, 2))]
    plain = matching_protocol(x, y, n_base=60, n_query=100, seeds=(0, 1), qap_restarts=2)
    stretched = matching_protocol(x, y, n_base=60, n_query=100, seeds=(0, 1), qap_restarts=2, stretching=True,
                                  base_selection="kmeans")
    assert list(plain["method"]) == ["qap", "local_cka", "qap", "local_cka"]
    assert set(plain.columns) >= {"seed", "method", "accuracy", "top1", "top5", "top10", "seconds"}
    assert plain["accuracy"].max() < 0.2
    assert stretched["accuracy"].min() > 0.9


def test_bad_input():
    x, y = _planted(50, 4, 0.1)
    with pytest.raises(AnalysisInputError, match="requested 40 base \\+ 20 query pairs but only 50"):
        matching_protocol(x, y, n_base=40, n_query=20)
    with pytest.raises(AnalysisInputError, match="distinct"):
        seeded_qap(x, y, [0, 1, 2], [2, 3, 4])
    with pytest.raises(AnalysisInputError, match="X has 50 rows but Y has 49"):
        seeded_qap(x, y[:49], [0, 1], [2, 3])
    with pytest.raises(AnalysisInputError, match="y_query must be"):
        local_cka_scores(x[:5], x[5:9], y[:5], y[5:9, :2])
    with pytest.raises(AnalysisInputError, match="unknown matching method"):
        matching_protocol(x, y, n_base=5, n_query=5, methods=("qap", "ot"))
