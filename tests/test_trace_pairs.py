"""trace_pair / trace_pairs on user sentences equal the plain per-cell oracle, with any metric.

Oracle: interp.tracing.reference (one batch-1 forward per cell). Tolerances: patched scores to
2e-6 in fp32 (|score| <= 2); effects to 1e-5 on float64 models, because an effect divides by the
source-base gap, which can be ~1e-2 on a random tower and would turn fp32 rounding into ~1e-5.
"""

from __future__ import annotations

import pytest
import torch

from interp import load_text_encoder
from interp.tracing import TraceSpec, reference_patched_scores
from interp.tracing.metric import RowMetric
from interp.tracing.pairs import PairLengthError, pair_matrix, pair_runs, trace_pair, trace_pairs

BASES = ["There is a dog on the table.", "A red car."]
SOURCES = ["There is no dog on the table.", "A blue car."]


@pytest.fixture(scope="module")
def tiny64():
    return load_text_encoder("tiny", None, seed=0, dtype=torch.float64)


@pytest.fixture(scope="module")
def tiny():
    return load_text_encoder("tiny", None, seed=0)


def _random_pairs(model, n_pairs: int, length: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Arbitrary CLIP token sequences of one length: SOT, random ids below EOT, EOT."""
    gen = torch.Generator().manual_seed(seed)
    tok = model.tokenizer
    middle = torch.randint(1, tok.sot_id, (2, n_pairs, length - 2), generator=gen)
    ids = torch.cat([torch.full((2, n_pairs, 1), tok.sot_id), middle, torch.full((2, n_pairs, 1), tok.eot_id)], -1)
    return ids[0], ids[1]


def _oracle_table_values(model, bases, sources, kind="resid", window=1, **kwargs):
    runs, _ = pair_runs(model, bases, sources, **kwargs)
    ref = reference_patched_scores(model, runs, TraceSpec(model.cfg.n_layers, kind=kind, window=window))
    effect = (ref.patched - ref.base[:, None, None]) / (ref.source - ref.base)[:, None, None]
    return ref, effect


def _table_grid(table, column, shape):
    grid = torch.full(shape, float("nan"), dtype=torch.float64)
    index = [torch.as_tensor(table[c].to_numpy(copy=True)) for c in ("pair", "layer", "position")]
    grid[tuple(index)] = torch.as_tensor(table[column].to_numpy(copy=True))
    return grid


@pytest.mark.parametrize("kind,window", [("resid", 1), ("mlp", 1), ("attn", 2)])
def test_trace_pairs_equal_the_oracle_on_random_equal_length_pairs(tiny64, kind, window):
    bases, sources = _random_pairs(tiny64, 3, 7, seed=1)
    table = trace_pairs(tiny64, bases, sources, kind=kind, window=window)
    ref, effect = _oracle_table_values(tiny64, bases, sources, kind=kind, window=window)
    shape = tuple(ref.patched.shape)
    assert len(table) == shape[0] * shape[1] * shape[2]  # every pair is 7 tokens: no padding
    torch.testing.assert_close(_table_grid(table, "patched", shape), ref.patched, rtol=0, atol=1e-10)
    torch.testing.assert_close(_table_grid(table, "effect", shape), effect, rtol=0, atol=1e-5)


def test_trace_pairs_on_texts_fp32_scores_and_effects_equal_the_oracle(tiny):
    table = trace_pairs(tiny, BASES, SOURCES)
    ref, effect = _oracle_table_values(tiny, BASES, SOURCES)
    for i, base in enumerate(BASES):
        one = table[table["pair"] == i]
        n_pos = len(tiny.to_str_tokens(base))
        assert len(one) == (tiny.cfg.n_layers + 1) * n_pos and one["base"].iloc[0] == base
        got = torch.tensor(one.pivot(index="layer", columns="position", values="patched").values)
        torch.testing.assert_close(got, ref.patched[i, :, :n_pos], rtol=0, atol=2e-6)
    # The default score is cos(x, e_source) - cos(x, e_base): base and source scores straddle 0.
    with torch.no_grad():
        e = torch.nn.functional.normalize(tiny(BASES + SOURCES), dim=-1)
    n = len(BASES)
    base_score = (e[:n] * (e[n:] - e[:n])).sum(-1)
    torch.testing.assert_close(torch.tensor(table.groupby("pair")["base_score"].first().values),
                               base_score.double(), rtol=0, atol=2e-6)
    # Patching every position at layer 0 is the source run; at the pooled position of the last
    # state it is the source too (nothing else is read).
    first = table[(table["layer"] == 0) & (table["position"] == 0)]
    assert (first["effect"].abs() < 1e-6).all()  # SOT is identical in both texts


def test_a_custom_metric_replaces_the_cosine_and_equals_the_oracle(tiny64):
    weights = torch.linspace(-1, 1, tiny64.cfg.d_embed, dtype=torch.float64)

    def metric(embedding):
        return embedding @ weights + embedding.norm(dim=-1)

    table = trace_pair(tiny64, BASES[0], SOURCES[0], metric=metric)
    runs, _ = pair_runs(tiny64, BASES[0], SOURCES[0], metric=metric)
    assert isinstance(runs.direction, RowMetric)
    ref = reference_patched_scores(tiny64, runs, TraceSpec(tiny64.cfg.n_layers))
    shape = tuple(ref.patched.shape)
    torch.testing.assert_close(_table_grid(table, "patched", shape), ref.patched, rtol=0, atol=1e-10)
    with torch.no_grad():
        assert table["base_score"].iloc[0] == pytest.approx(float(metric(tiny64([BASES[0]]))[0]), abs=1e-10)
        assert table["source_score"].iloc[0] == pytest.approx(float(metric(tiny64([SOURCES[0]]))[0]), abs=1e-10)


def test_token_ids_and_texts_give_the_same_table(tiny):
    ids = tiny.to_tokens(BASES[:1] + SOURCES[:1])
    from_ids = trace_pair(tiny, ids[0], ids[1])
    from_texts = trace_pair(tiny, BASES[0], SOURCES[0])
    assert from_ids["patched"].tolist() == from_texts["patched"].tolist()
    assert from_ids["token"].tolist() == from_texts["token"].tolist()


def test_the_generic_path_matches_the_oracle_on_a_bidirectional_encoder():
    minilm = load_text_encoder("all-MiniLM-L6-v2")
    bases, sources = ["There is a dog."], ["There is no dog."]
    table = trace_pairs(minilm, bases, sources, direction=torch.ones(minilm.cfg.d_embed))
    ref, _ = _oracle_table_values(minilm, bases, sources, direction=torch.ones(minilm.cfg.d_embed))
    torch.testing.assert_close(_table_grid(table, "patched", tuple(ref.patched.shape)), ref.patched.double(),
                               rtol=0, atol=2e-6)


def test_pairs_of_unequal_length_are_refused_with_the_reason(tiny):
    with pytest.raises(PairLengthError, match="same length") as err:
        trace_pair(tiny, "There is a dog.", "There is no big dog.")
    assert "position p" in str(err.value) and "'There is a dog.'" in str(err.value)
    with pytest.raises(Exception, match="one source per base"):
        trace_pairs(tiny, BASES, SOURCES[:1])


def test_bad_metric_and_direction_are_refused(tiny):
    with pytest.raises(ValueError, match="one value per embedding row"):
        trace_pair(tiny, BASES[1], SOURCES[1], metric=lambda e: e.sum())
    with pytest.raises(Exception, match=r"\[d_embed\]"):
        trace_pair(tiny, BASES[1], SOURCES[1], direction=torch.ones(3))


def test_the_table_draws_with_the_heatmap_helper(tiny, tmp_path):
    from interp.runs.plots import roles_layers_heatmap

    table = trace_pair(tiny, BASES[1], SOURCES[1])
    matrix = pair_matrix(table)
    assert list(matrix.columns) == list(range(tiny.cfg.n_layers + 1))
    assert any("/" in label for label in matrix.index)  # the differing token shows both words
    path = roles_layers_heatmap(matrix, tmp_path / "pair.png", "red -> blue")
    assert path.stat().st_size > 0
