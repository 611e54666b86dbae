"""The trace benchmark's FLOP floor is a floor: the engine's own dense products never add up to less.

``interp.benchmarks.trace`` compares the sweep's CPU time against the FLOPs no method can avoid
(the cells that need compute, plus the two clean runs). Here the dense products (addmm/mm) the
engine actually runs are recorded on every chunk of a sweep and summed: they must cover the floor,
and on a deep tower they must not exceed it by more than the clean runs' full last block and the
output projections (a few percent), or the floor would be a loose yardstick.
"""

from __future__ import annotations

import pytest

from interp.benchmarks.trace import (
    clean_floor,
    engine_gemm_shapes,
    first_difference,
    floor_cells,
)
from interp.data.negation import align_pairs, load_existence_pairs
from interp.models.tokenization import CLIPTokenizer
from interp.testing import random_clip_text_encoder
from interp.tracing.sweep import chunk_plan


@pytest.fixture(scope="module")
def deep_narrow():
    """12 blocks like ViT-B-32's text tower, width 64: the floor's proportions, at a test's cost."""
    return random_clip_text_encoder(n_layers=12, d_model=64, n_heads=4, seed=0, name="deep-narrow")


def test_engine_dense_flops_cover_the_floor_and_little_more(deep_narrow):
    aligned, _ = align_pairs(load_existence_pairs().pairs, deep_narrow.tokenizer)
    items = aligned[::35]
    assert len({a.length for a in items}) >= 3
    shapes, n_chunks = engine_gemm_shapes(deep_narrow, items, 4, 768, n_chunks=len(chunk_plan(items, 4)))
    assert n_chunks == len(chunk_plan(items, 4))
    executed = sum(2.0 * m * k * n for m, k, n in shapes)
    n_cells, cells = floor_cells(deep_narrow, items)
    floor = cells + clean_floor(deep_narrow, items)
    assert n_cells > 0
    assert executed >= floor
    assert executed <= 1.05 * floor


def test_first_difference_is_where_the_token_ids_part():
    aligned, _ = align_pairs(load_existence_pairs().pairs[:20], CLIPTokenizer())
    for a in aligned:
        p = first_difference(a)
        assert a.tokens_negated[:p] == a.tokens_affirmative[:p]
        assert a.tokens_negated[p] != a.tokens_affirmative[p]
