"""The trace benchmark's FLOP floors are floors: the engine's own dense products never add up to less.

``interp.benchmarks.trace`` compares the sweep's CPU time against the FLOPs no method can avoid
(the cells that need compute, plus the two clean runs: the issue's floor), and against the least
exact work (that floor less the Q/K/V of the rows a cell leaves unchanged at its first block, which
the engine reads from the clean run). Here the dense products (addmm/mm) the engine actually runs are
recorded on every chunk of a sweep and summed: they must cover the least exact work, stay below the
issue's floor (the engine takes the saving), and exceed the least by under 1% (the last block's
unchanged rows' K/V and the output projections), or the floor would be a loose yardstick.
"""

from __future__ import annotations

import pytest

from interp.benchmarks.trace import (
    clean_floor,
    engine_flops,
    engine_gemm_shapes,
    first_difference,
    floor_cells,
    unchanged_rows_flops,
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
    least = floor - unchanged_rows_flops(deep_narrow, items)
    assert n_cells > 0
    assert executed >= least, "the engine cannot run fewer dense FLOPs than the least exact work"
    assert executed < floor, "below the last block the engine skips the unchanged rows' Q/K/V"
    # what it runs beyond the least: the last block's unchanged rows' K/V, the clean runs' output projection
    assert executed <= 1.01 * least
    assert executed == pytest.approx(engine_flops(deep_narrow, items), rel=0.01)  # the bench's GFLOP/s column


def test_first_difference_is_where_the_token_ids_part():
    aligned, _ = align_pairs(load_existence_pairs().pairs[:20], CLIPTokenizer())
    for a in aligned:
        p = first_difference(a)
        assert a.tokens_negated[:p] == a.tokens_affirmative[:p]
        assert a.tokens_negated[p] != a.tokens_affirmative[p]


def test_bench_samples_the_matmul_rate_during_the_sweep_and_leaves_its_time_out(capsys):
    """The bench's floor lines use a rate sampled between the sweep's chunks; the samples' time is
    taken out of the sweep's, so the sweep reads the same with and without them (here: a sampler
    made 50x slower must not move the sweep's CPU time by anything like its own cost)."""
    import interp.benchmarks.trace as bench
    from interp.models.loading import load_text_encoder

    model = load_text_encoder("tiny", None, seed=0)
    aligned, _ = align_pairs(load_existence_pairs().pairs, model.tokenizer)
    items = aligned[:24]
    sampler = bench._RateSampler(products=50)
    (_, cpu), stats = bench._time_engine(model, items, 4, 768, sampler)
    n_chunks = len(chunk_plan(items, 4))
    assert sampler.flops == n_chunks * 50 * 2.0 * 2048 * 512 * 2048
    assert sampler.cpu > 0 and sampler.rates()[1] > 0
    assert stats.items_computed == len(items)
    assert cpu < sampler.cpu, "the sweep's CPU time must not include the samples' (50 big products per chunk)"
    assert stats.engine_cpu <= cpu + 0.05

    bench.main(["--model", "tiny", "--items", "8", "--slow-items", "2", "--threads", "1"])
    out = capsys.readouterr().out
    assert "sampled between the sweep's chunks" in out
    floor_line = next(line for line in out.splitlines() if "floor of the cells + clean runs" in line)
    assert floor_line.count("x, engine") == 3, floor_line  # in-sweep, before/after and engine-shape rates
