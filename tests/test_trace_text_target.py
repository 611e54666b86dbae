"""The text target read from the engine's own clean runs (no extra forward) equals the oracle.

``build_runs(..., "text")`` hands the engine a :class:`TextTarget`: the direction
``normalize(e_N) - normalize(e_A)`` comes from the clean N and A runs the sweep computes anyway.
Compared with the per-cell oracle (which reads it from its own batch-1 clean runs) and with the
explicit two-forward directions. Tolerances as in test_trace_engine: effects 1e-5, scores 2e-6
(fp32; |S| <= 2); directions 1e-6 (components of a difference of two unit vectors, fp32 rounding
of differently batched forwards).
"""

from __future__ import annotations

import pytest
import torch

from interp import load_text_encoder
from interp.data.negation import align_pairs, load_existence_pairs
from interp.errors import ClipInterpError
from interp.runs.rundir import ItemTable
from interp.tracing import TraceSpec, build_runs, effects, patched_scores, reference_patched_scores
from interp.tracing.engine import TextTarget
from interp.tracing.inputs import TEXT_TARGET, NoiseConfig
from interp.tracing.sweep import explicit_text_directions, run_sweep, text_directions

ATOL_EFFECT, ATOL_SCORE, ATOL_DIRECTION = 1e-5, 2e-6, 1e-6
PICKS = [0, 260, 333]  # several lengths, both negation sides


@pytest.fixture(scope="module")
def tiny():
    return load_text_encoder("tiny", None, seed=0)


@pytest.fixture(scope="module")
def items(tiny):
    pairs = load_existence_pairs().pairs
    aligned, rejected = align_pairs([pairs[i] for i in PICKS], tiny.tokenizer)
    assert not rejected
    return aligned


@pytest.mark.parametrize("fast,direction,kind", [
    (True, "denoise", "resid"), (True, "noise", "resid"), (False, "denoise", "resid"), (True, "denoise", "attn"),
])
def test_text_target_engine_equals_oracle(tiny, items, fast, direction, kind):
    runs, per_item = build_runs(tiny, items, TEXT_TARGET, "patch", direction)
    assert runs.direction == TextTarget("source" if direction == "denoise" else "base")
    spec = TraceSpec(tiny.cfg.n_layers, kind)
    got = patched_scores(tiny, runs, spec, fast=fast)
    want = reference_patched_scores(tiny, runs, spec)
    torch.testing.assert_close(got.patched.double(), want.patched, atol=ATOL_SCORE, rtol=0, equal_nan=True)
    torch.testing.assert_close(got.base.double(), want.base, atol=ATOL_SCORE, rtol=0)
    torch.testing.assert_close(got.source.double(), want.source, atol=ATOL_SCORE, rtol=0)
    torch.testing.assert_close(effects(got, per_item)[0].double(), effects(want, per_item)[0],
                               atol=ATOL_EFFECT, rtol=0, equal_nan=True)


@pytest.mark.parametrize("fast", [True, False])
def test_text_target_equals_explicit_directions(tiny, items, fast):
    """The directions the engine reads from its clean runs are the two-forward ones, and so are the
    resulting cells."""
    explicit = explicit_text_directions(tiny, items)
    spec = TraceSpec(tiny.cfg.n_layers)
    runs_text, per_item = build_runs(tiny, items, TEXT_TARGET)
    runs_explicit, _ = build_runs(tiny, items, explicit)
    got = patched_scores(tiny, runs_text, spec, fast=fast)
    want = patched_scores(tiny, runs_explicit, spec, fast=fast)
    torch.testing.assert_close(got.direction, explicit, atol=ATOL_DIRECTION, rtol=0)
    torch.testing.assert_close(effects(got, per_item)[0], effects(want, per_item)[0], atol=ATOL_EFFECT, rtol=0, equal_nan=True)


def test_text_target_in_noise_mode(tiny, items):
    """Noise mode has no clean A run: build_runs computes the directions itself, equal to the explicit ones."""
    noise = NoiseConfig(std=0.1, samples=2, roles=("negator",), seed=0)
    runs, _ = build_runs(tiny, items, TEXT_TARGET, "noise", "denoise", noise)
    explicit = explicit_text_directions(tiny, items).repeat_interleave(2, 0)
    torch.testing.assert_close(runs.direction, explicit, atol=ATOL_DIRECTION, rtol=0)


def test_sweep_with_text_target_runs_no_extra_forward(tiny, items, tmp_path, monkeypatch):
    """The sweep's text target costs no forward of whole sentences: every forward the engine runs
    starts from a given layer-0 residual or stops at layer 0 (the embeddings)."""
    full_forwards = []
    original = type(tiny).forward

    def counting_forward(self, tokens, *args, **kwargs):
        if kwargs.get("residual") is None and kwargs.get("stop_at_layer") is None:
            full_forwards.append(1)
        return original(self, tokens, *args, **kwargs)

    monkeypatch.setattr(type(tiny), "forward", counting_forward)
    run_sweep(tiny, items, text_directions(tiny), ItemTable(tmp_path), TraceSpec(tiny.cfg.n_layers),
              chunk_items=3, progress=False)
    assert full_forwards == []
    assert len(ItemTable(tmp_path).done()) == len(items)


def test_bad_directions_name_is_refused(tiny, items):
    with pytest.raises(ClipInterpError, match="directions"):
        build_runs(tiny, items, "image")
