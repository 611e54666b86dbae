"""Negator-selective attention: batched engine vs a plain loop, planted head, role table, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import interp
from interp.heads.attention import (
    AttentionInputError,
    head_label,
    negator_attention,
    negator_attention_reference,
)
from interp.data.negation import ROLES, align_pairs, load_existence_pairs
from interp.testing import build_negator_selective_encoder


@pytest.fixture(scope="module")
def tiny():
    return interp.load_text_encoder("tiny", seed=1)


@pytest.fixture(scope="module")
def pairs():
    return load_existence_pairs().pairs


def _aligned(model, pairs, n):
    # Mix lengths so chunks pad differently: take items of different token lengths.
    aligned, rejected = align_pairs(pairs[:60], model.tokenizer)
    assert not rejected
    by_len = {}
    for a in aligned:
        by_len.setdefault(a.length, a)
    return sorted(by_len.values(), key=lambda a: a.pair.item_id)[:n]


def test_batched_equals_per_item_loop(tiny, pairs):
    aligned = _aligned(tiny, pairs, 5)
    assert len({a.length for a in aligned}) >= 3
    result = negator_attention(tiny, aligned, batch_size=2, progress=False)
    oracle = negator_attention_reference(tiny, aligned)
    torch.testing.assert_close(result.scores(), oracle, atol=1e-6, rtol=0)
    # padding positions are NaN, never a score
    for i, a in enumerate(aligned):
        assert torch.isnan(result.diff[i, :, :, a.length:]).all()
        assert not torch.isnan(result.diff[i, :, :, : a.length]).any()


def test_planted_copy_head_ranked_first_and_idle_head_zero(pairs):
    planted = build_negator_selective_encoder()
    aligned, _ = align_pairs(pairs[:10], planted.model.tokenizer)
    result = negator_attention(planted.model, aligned, progress=False)
    mean = result.mean_scores()
    best = divmod(int(mean.argmax()), planted.model.cfg.n_heads)
    assert best == (planted.copy_layer, planted.copy_head)
    # the copy head reads "no" with gain 40 in N and finds nothing in A: a_N - a_A near 1
    assert float(mean[planted.copy_layer, planted.copy_head]) > 0.9
    assert abs(float(mean[planted.copy_layer, planted.idle_head])) < 1e-6
    others = mean.clone()
    others[planted.copy_layer, planted.copy_head] = 0
    assert others.abs().max() < 1e-6


def test_role_table_causal_rows_and_pooling(tiny, pairs):
    aligned = _aligned(tiny, pairs, 5)
    result = negator_attention(tiny, aligned, progress=False)
    for layer in range(tiny.cfg.n_layers):
        table = result.role_table(layer, further_pool="mean")
        assert list(table.index) == list(ROLES)
        heads = [c for c in table.columns if c.startswith("head")]
        # queries before the negator cannot see it under the causal mask
        assert (table.loc[["SOT", "there", "is/are"], heads].to_numpy() == 0).all()
        # "further": pooled over every (item, further position), by hand
        values = [result.diff[i, layer, :, p].numpy() for i, a in enumerate(aligned) for p in a.positions("further")]
        np.testing.assert_allclose(table.loc["further", heads].to_numpy(dtype=float), np.mean(values, axis=0), atol=1e-6)
        assert table.loc["further", "n_positions"] == len(values)
    with pytest.raises(AttentionInputError, match=r"0\.\.1"):
        result.role_table(tiny.cfg.n_layers)


def test_correlation_with_d(tiny, pairs):
    aligned = _aligned(tiny, pairs, 5)
    result = negator_attention(tiny, aligned, progress=False)
    scores = result.scores()
    d = 3.0 * scores[:, 1, 2] - 0.5  # perfectly linear in head (1, 2)
    table = result.correlation_with(d)
    row = table[(table["layer"] == 1) & (table["head"] == 2)].iloc[0]
    assert row.pearson_r == pytest.approx(1.0, abs=1e-6)
    assert row.n == len(aligned)
    with pytest.raises(AttentionInputError, match="one value per item"):
        result.correlation_with(d[:-1])


def test_tables_and_labels(tiny, pairs):
    aligned = _aligned(tiny, pairs, 3)
    result = negator_attention(tiny, aligned, progress=False)
    long = result.table()
    assert len(long) == 3 * tiny.cfg.n_layers * tiny.cfg.n_heads
    assert set(long.argmax_role) <= set(ROLES) - {"SOT", "there", "is/are", "negator"}
    means = result.mean_table()
    assert set(means.group) >= {"all"}
    assert head_label(3, 1) == "L3H1" and head_label(3, 1, one_indexed=True) == "L4H2"
    with pytest.raises(AttentionInputError):
        negator_attention(tiny, [], progress=False)
