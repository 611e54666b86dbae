"""Procrustes alignment, cosine / CSLS retrieval, P@k with aliases, k-fold cross-validation."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import ortho_group

from analyses.alignment.procrustes import (
    csls_scores,
    fit_least_squares,
    fit_procrustes,
    gold_ranks,
    kfold_alignment,
    match_dimensions,
    pca_reduce,
    precision_at_k,
)
from analyses.validation import AnalysisInputError


def test_procrustes_recovers_a_planted_rotation():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 20))
    rot = ortho_group.rvs(20, random_state=1)
    w = fit_procrustes(x, x @ rot)
    np.testing.assert_allclose(w, rot, atol=1e-6)
    np.testing.assert_allclose(w @ w.T, np.eye(20), atol=1e-10)
    # with noise it still beats any other orthogonal map on the training objective
    y = x @ rot + 0.1 * rng.normal(size=(200, 20))
    w = fit_procrustes(x, y)
    other = ortho_group.rvs(20, random_state=2)
    assert np.linalg.norm(x @ w - y) < np.linalg.norm(x @ rot - y) < np.linalg.norm(x @ other - y)
    # least squares on a planted general linear map
    a = rng.normal(size=(20, 7))
    np.testing.assert_allclose(fit_least_squares(x, x @ a), a, atol=1e-8)


def test_pca_reduce_matches_eigendecomposition_of_the_covariance():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(100, 6)) @ rng.normal(size=(6, 6)) + 3.0
    z = pca_reduce(x, 3)
    xc = x - x.mean(axis=0)
    evals, evecs = np.linalg.eigh(xc.T @ xc)
    top = evecs[:, ::-1][:, :3]
    ref = xc @ top
    np.testing.assert_allclose(np.abs(z), np.abs(ref), atol=1e-8)  # up to the sign of each component
    np.testing.assert_allclose(z.var(axis=0), evals[::-1][:3] / 100, rtol=1e-8)
    xr, yr = match_dimensions(x, rng.normal(size=(40, 4)))
    assert xr.shape == (100, 4) and yr.shape == (40, 4)
    np.testing.assert_allclose(yr.mean(axis=0), 0, atol=1e-12)


def test_gold_ranks_and_precision_match_a_sorting_loop_with_aliases():
    rng = np.random.default_rng(2)
    q, t = rng.normal(size=(30, 5)), rng.normal(size=(80, 5))
    gold = [list(rng.choice(80, size=rng.integers(1, 4), replace=False)) for _ in range(30)]
    for retrieval in ("cosine", "csls"):
        ranks = gold_ranks(q, t, gold, retrieval=retrieval, csls_k=7)
        if retrieval == "cosine":
            scores = (q / np.linalg.norm(q, axis=1, keepdims=True)) @ (t / np.linalg.norm(t, axis=1, keepdims=True)).T
        else:
            scores = csls_scores(q, t, k=7)
        for i in range(30):
            order = list(np.argsort(-scores[i], kind="stable"))
            assert ranks[i] == min(order.index(g) for g in gold[i])  # no ties in continuous data
        for k in (1, 5, 10):
            loop = np.mean([any(g in np.argsort(-scores[i])[:k] for g in gold[i]) for i in range(30)])
            assert precision_at_k(ranks, (k,))[f"P@{k}"] == pytest.approx(loop)


def test_csls_matches_its_definition_and_beats_cosine_on_planted_hubs():
    rng = np.random.default_rng(0)
    d, vocab, nq = 32, 500, 300
    t = rng.normal(size=(vocab, d))
    t /= np.linalg.norm(t, axis=1, keepdims=True)
    hub_dir = rng.normal(size=d)
    hub_dir /= np.linalg.norm(hub_dir)
    targets = np.vstack([t, hub_dir + 0.05 * rng.normal(size=(5, d))])  # 5 hubs near a shared direction
    queries = t[:nq] + 0.6 * rng.normal(size=(nq, d)) / np.sqrt(d) + 0.9 * hub_dir  # all queries lean to it
    # definition, by loops on a small slice
    s = csls_scores(queries[:4], targets, k=10, source_pool=queries)
    cos = lambda a, b: a @ b / np.linalg.norm(a) / np.linalg.norm(b)  # noqa: E731
    for i in range(4):
        for j in (0, 3, vocab + 1):
            r_t = np.mean(sorted([cos(queries[i], tt) for tt in targets])[-10:])
            r_s = np.mean(sorted([cos(qq, targets[j]) for qq in queries])[-10:])
            assert s[i, j] == pytest.approx(2 * cos(queries[i], targets[j]) - r_t - r_s, abs=1e-12)
    gold = np.arange(nq)
    p_cos = precision_at_k(gold_ranks(queries, targets, gold, retrieval="cosine"), (1,))["P@1"]
    p_csls = precision_at_k(gold_ranks(queries, targets, gold, retrieval="csls", csls_k=10), (1,))["P@1"]
    assert p_csls > p_cos + 0.2, (p_cos, p_csls)


def test_kfold_alignment_recovers_a_planted_relation_and_keeps_folds_disjoint():
    rng = np.random.default_rng(3)
    vocab = rng.normal(size=(400, 12))
    # sources: 150 items, each a rotated copy of target i (plus a second alias target 200 + i)
    src_to_tgt = rng.permutation(200)[:150]
    x = vocab[src_to_tgt] @ ortho_group.rvs(12, random_state=0) + 0.01 * rng.normal(size=(150, 12))
    x = np.c_[x, 0.001 * rng.normal(size=(150, 4))]  # 16 dims: PCA brings it back to 12
    vocab[200:] = vocab[:200] + 0.001 * rng.normal(size=(200, 12))  # near-duplicate alias targets
    pairs = np.r_[np.c_[np.arange(150), src_to_tgt], np.c_[np.arange(150), 200 + src_to_tgt]]
    table = kfold_alignment(x, vocab, pairs, n_folds=5, seed=0, csls_k=10)
    assert len(table) == 10 and set(table["retrieval"]) == {"cosine", "csls"}
    assert table["n_test"].sum() == 2 * 150  # each source is tested exactly once per retrieval
    assert (table["dim"] == 12).all()
    assert table["P@1"].min() == 1.0  # aliases: either near-duplicate counts as a hit
    # a random pairing has nothing to learn
    shuffled = np.c_[np.arange(150), rng.permutation(150)]
    table = kfold_alignment(x, vocab, shuffled, n_folds=3, seed=0)
    assert table["P@10"].max() < 0.2


def test_bad_input():
    x = np.random.default_rng(0).normal(size=(20, 3))
    with pytest.raises(AnalysisInputError, match="Procrustes needs equal dimensions"):
        fit_procrustes(x, x[:, :2])
    with pytest.raises(AnalysisInputError, match="X \\(train sources\\) has 20 rows but Y \\(train targets\\) has 19"):
        fit_procrustes(x, x[:19])
    with pytest.raises(AnalysisInputError, match="5-fold cross-validation needs at least 5"):
        kfold_alignment(x, x, np.c_[np.arange(3), np.arange(3)])
    with pytest.raises(AnalysisInputError, match="query 1 has no gold"):
        gold_ranks(x[:2], x, [[0], []])
    with pytest.raises(AnalysisInputError, match="pairs must be"):
        kfold_alignment(x, x, np.arange(5))
    with pytest.raises(AnalysisInputError, match="cannot keep 4 principal"):
        pca_reduce(x, 4)


def test_chunked_scoring_equals_one_chunk(monkeypatch):
    import analyses.alignment.procrustes as alignment

    rng = np.random.default_rng(4)
    q, t = rng.normal(size=(50, 6)), rng.normal(size=(90, 6))
    gold = [[i, (i * 7) % 90] for i in range(50)]
    whole = {r: gold_ranks(q, t, gold, retrieval=r, csls_k=5) for r in ("cosine", "csls")}
    whole_csls = csls_scores(q, t, k=5)
    monkeypatch.setattr(alignment, "_CHUNK", 7)
    for r in ("cosine", "csls"):
        np.testing.assert_array_equal(gold_ranks(q, t, gold, retrieval=r, csls_k=5), whole[r])
    np.testing.assert_allclose(csls_scores(q, t, k=5), whole_csls, atol=1e-12)
