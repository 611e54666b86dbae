"""The batched tracing engine equals the plain per-cell oracle on every cell, and the invariants hold.

Oracle: interp.tracing.reference (one batch-1 forward per cell with hooks, no shortcuts). Compared:
the engine's causal fast path and its generic batched path, in patch and noise modes, both
directions, every kind and a window. Tolerances: effects to 1e-5 (the acceptance bar), fp32.
The invariants (docs/tracing.md) must hold *exactly* (deviation 0.0) on random-init models:
a tiny CLIP tower and a ViT-B-32-sized one (12 layers, width 512, 8 heads, random weights).
"""

from __future__ import annotations

import pytest
import torch

from interp import load_text_encoder
from interp.models.config import TextEncoderConfig
from interp.data.negation import align_pairs, load_existence_pairs
from interp.models.text_encoder import HookedTextEncoder
from interp.data.scoring import text_target_directions
from interp.models.tokenization import CLIPTokenizer
from interp.testing import random_clip_text_encoder
from interp.tracing import (
    NoiseConfig,
    TraceSpec,
    build_runs,
    effects,
    patched_scores,
    reference_patched_scores,
)

ATOL_EFFECT = 1e-5  # engine vs oracle (acceptance criterion)
ATOL_SCORE = 2e-6  # raw patched scores (|S| <= 2 for the text target), fp32
# In noise mode on random towers the clean-vs-corrupted gap S(source) - S(base) is small (~1e-2),
# so fp32 rounding of the *oracle's* scores (~1e-7) becomes ~1e-5 in the effect: those parity runs
# use float64 models, where engine and oracle agree to ~1e-12 and the comparison tests the logic.


@pytest.fixture(scope="module")
def pairs():
    return load_existence_pairs().pairs


@pytest.fixture(scope="module")
def tiny():
    return load_text_encoder("tiny", None, seed=0)


@pytest.fixture(scope="module")
def tiny64():
    return load_text_encoder("tiny", None, seed=0, dtype=torch.float64)


def _items(model, pairs, picks):
    aligned, rejected = align_pairs([pairs[i] for i in picks], model.tokenizer)
    assert not rejected
    return aligned


def _directions(model, items):
    with torch.no_grad():
        return text_target_directions(model([a.pair.negated for a in items]), model([a.pair.affirmative for a in items]))


def _compare(model, items, spec, mode, direction, noise=None, fast=None):
    runs, per_item = build_runs(model, items, _directions(model, items), mode, direction, noise)
    got = patched_scores(model, runs, spec, fast=fast)
    want = reference_patched_scores(model, runs, spec)
    assert torch.equal(got.patched.isnan().cpu(), want.patched.isnan()), "cells past an item's length must be NaN, others not"
    torch.testing.assert_close(got.patched.double().cpu(), want.patched, atol=ATOL_SCORE, rtol=0, equal_nan=True)
    torch.testing.assert_close(got.base.double().cpu(), want.base, atol=ATOL_SCORE, rtol=0)
    torch.testing.assert_close(got.source.double().cpu(), want.source, atol=ATOL_SCORE, rtol=0)
    e_got = effects(got, per_item)[0].double().cpu()
    e_want = effects(want, per_item)[0]
    torch.testing.assert_close(e_got, e_want, atol=ATOL_EFFECT, rtol=0, equal_nan=True)
    return got, e_got


# Items of several lengths (7..11 tokens), both negation sides, padded together in one batch.
PICKS = [0, 5, 17, 260, 300, 333]


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "generic"])
@pytest.mark.parametrize("mode,direction", [("patch", "denoise"), ("patch", "noise"), ("noise", "denoise"), ("noise", "noise")])
def test_engine_equals_oracle_resid(tiny, tiny64, pairs, fast, mode, direction):
    model = tiny if mode == "patch" else tiny64
    items = _items(model, pairs, PICKS)
    assert len({a.length for a in items}) >= 3 and {a.pair.negation_side for a in items} == {"caption", "foil"}
    noise = NoiseConfig(std=0.05, samples=3, roles=("negator", "first_subject"), seed=1)
    got, _ = _compare(model, items, TraceSpec(model.cfg.n_layers), mode, direction, noise, fast)
    assert got.n_forward > 0 and got.n_base_equal > 0


def test_more_heads_than_positions_and_an_inexact_score_scale(pairs):
    """16 heads on items of 7..11 tokens (per-head index ranges must not be cut to the sequence), and
    d_head 6, whose 1/sqrt(d_head), folded into the fast path's query weights, is not a power of 2."""
    model = random_clip_text_encoder(n_layers=3, d_model=96, n_heads=16, seed=5, name="many-heads")
    items = _items(model, pairs, PICKS[:3])
    assert max(a.length for a in items) < model.cfg.n_heads and model.cfg.d_head == 6
    _compare(model, items, TraceSpec(model.cfg.n_layers), "patch", "denoise", fast=True)


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "generic"])
@pytest.mark.parametrize("kind,window", [("attn", 1), ("mlp", 1), ("resid", 2), ("attn", 2)])
def test_engine_equals_oracle_kinds_and_windows(tiny, tiny64, pairs, fast, kind, window):
    items = _items(tiny, pairs, PICKS[:4])
    noise = NoiseConfig(std=0.05, samples=2, roles=("negator",), seed=0)
    spec = TraceSpec(tiny.cfg.n_layers, kind, window)
    _compare(tiny, items, spec, "patch", "denoise", None, fast)
    _compare(tiny64, items, spec, "noise", "denoise", noise, fast)


def test_small_memory_budget_changes_nothing(tiny, pairs):
    items = _items(tiny, pairs, PICKS)
    runs, _ = build_runs(tiny, items, _directions(tiny, items))
    spec = TraceSpec(tiny.cfg.n_layers)
    whole = patched_scores(tiny, runs, spec)
    for fast in (True, False):
        chunked = patched_scores(tiny, runs, spec, budget_mb=0.01, fast=fast)  # one cell per chunk
        torch.testing.assert_close(chunked.patched, whole.patched, atol=ATOL_SCORE, rtol=0, equal_nan=True)


def _assert_invariants_exact(effect, items, n_layers):
    for k, item in enumerate(items):
        grid = effect[k, :, : item.length]
        assert torch.all(grid[:, :3] == 0.0), "SOT/there/is-are rows must be exactly 0 at every layer"
        assert grid[0, item.negator_pos] == 1.0, "(negator, 0) must be exactly 1"
        assert grid[n_layers, item.length - 1] == 1.0, "(EOT, L) must be exactly 1"
        assert torch.all(grid[n_layers, : item.length - 1] == 0.0), "other positions at L must be exactly 0"
        assert torch.all(grid[0, item.negator_pos + 1:] == 0.0)
        assert grid[1:n_layers, item.negator_pos:].abs().sum() > 0, "the middle layers must carry something"


def test_invariants_exact_on_tiny(tiny, pairs):
    items = _items(tiny, pairs, PICKS)
    for fast in (True, False):
        runs, per_item = build_runs(tiny, items, _directions(tiny, items))
        effect = effects(patched_scores(tiny, runs, TraceSpec(tiny.cfg.n_layers), fast=fast), per_item)[0]
        _assert_invariants_exact(effect.cpu(), items, tiny.cfg.n_layers)
    # the oracle (no shortcuts) shows them up to rounding only
    oracle = effects(reference_patched_scores(tiny, runs, TraceSpec(tiny.cfg.n_layers)), 1)[0]
    assert oracle[:, :, :3].nan_to_num(0).abs().max() < 1e-4


@pytest.fixture(scope="module")
def vit_b32_sized():
    """A random-init text tower with ViT-B-32's sizes (built directly: no image tower to create)."""
    model = random_clip_text_encoder(n_layers=12, d_model=512, n_heads=8, seed=3, name="ViT-B-32-sized")
    model.logit_scale.fill_(4.6052)
    return model.eval()


@pytest.mark.slow
def test_vit_b32_sized_engine_equals_oracle_and_invariants_exact(vit_b32_sized, pairs):
    model = vit_b32_sized
    items = _items(model, pairs, [0, 300])  # lengths 7 and 10, both sides
    # oracle parity on one item per mode (91 batch-1 forwards each); invariants on both items
    _, effect = _compare(model, items[:1], TraceSpec(model.cfg.n_layers), "patch", "denoise")
    _assert_invariants_exact(effect, items[:1], model.cfg.n_layers)
    runs, per_item = build_runs(model, items, _directions(model, items))
    _assert_invariants_exact(effects(patched_scores(model, runs, TraceSpec(12)), per_item)[0].cpu(), items, 12)
    noise = NoiseConfig(std=0.1, samples=1, roles=("negator",), seed=0)
    _, effect = _compare(model, items[:1], TraceSpec(model.cfg.n_layers), "noise", "denoise", noise)
    _assert_invariants_exact(effect, items[:1], model.cfg.n_layers)  # noise on the negator only


def test_bidirectional_mean_pooled_encoder_uses_generic_path(pairs):
    """A BERT-like (post-LN, bidirectional, mean-pooled) tower: generic path equals the oracle."""
    cfg = TextEncoderConfig(n_layers=2, d_model=32, n_heads=4, d_mlp=64, n_ctx=77, d_vocab=49408, d_embed=32,
                            causal=False, norm="post", pool="mean", has_final_ln=False, has_embed_ln=True,
                            has_projection=False)
    model = HookedTextEncoder(cfg, CLIPTokenizer())
    model.init_weights(seed=1)
    model.eval()
    items = _items(model, pairs, PICKS[:4])  # padded: the mask must keep pads out
    got, effect = _compare(model, items, TraceSpec(cfg.n_layers), "patch", "denoise")
    for k, item in enumerate(items):
        assert effect[k, 0, item.negator_pos] == 1.0
        # bidirectional: the prefix is not zero after layer 0, and every real position counts at L
        assert effect[k, 1:, :3].abs().sum() > 0
        assert torch.all(effect[k, cfg.n_layers, : item.length] != 0)


def test_engine_refuses_fast_path_for_bidirectional(pairs):
    cfg = TextEncoderConfig(n_layers=1, d_model=16, n_heads=2, d_mlp=32, n_ctx=77, d_vocab=49408, d_embed=16,
                            causal=False, norm="post", pool="mean", has_projection=False)
    model = HookedTextEncoder(cfg, CLIPTokenizer()).eval()
    items = _items(model, pairs, [0])
    runs, _ = build_runs(model, items, torch.ones(1, 16))
    with pytest.raises(ValueError, match="fast path needs a causal"):
        patched_scores(model, runs, TraceSpec(1), fast=True)


def test_attached_hooks_act_and_switch_off_the_fast_path(tiny, pairs):
    """The fast path computes blocks from the weights, past the hook points: with a hook attached
    the engine takes the generic path, so the hook acts exactly as in the oracle's forwards."""
    from interp.tracing.engine import TraceInputError, uses_fast_path

    items = _items(tiny, pairs, PICKS[:3])
    spec = TraceSpec(tiny.cfg.n_layers)
    plain, _ = _compare(tiny, items, spec, "patch", "denoise")

    def sharpen(pattern, hook):  # a real edit of block 0's attention that keeps masked keys at 0
        squared = pattern**2
        return squared / squared.sum(-1, keepdim=True)

    assert uses_fast_path(tiny)
    tiny.add_hook("blocks.0.attn.hook_pattern", sharpen, is_permanent=True)
    try:
        assert not uses_fast_path(tiny)
        hooked, _ = _compare(tiny, items, spec, "patch", "denoise")  # engine == oracle, both with the hook
        with pytest.raises(TraceInputError, match="blocks.0.attn.hook_pattern"):
            runs, _ = build_runs(tiny, items, _directions(tiny, items))
            patched_scores(tiny, runs, spec, fast=True)
    finally:
        tiny.reset_hooks(including_permanent=True)
    assert uses_fast_path(tiny)
    assert (hooked.patched - plain.patched).nan_to_num(0).abs().max() > 1e-4, "the hook must change the scores"


@pytest.mark.parametrize("act_fn", ["gelu", "gelu_tanh", "quick_gelu", "relu"])
def test_in_place_activation_is_the_modules_bit_for_bit(act_fn):
    """The fast path applies the MLP activation in place on its hidden buffer: same values, bit for bit."""
    from interp.models.components import MLP
    from interp.tracing.engine import _activation_

    cfg = TextEncoderConfig(n_layers=1, d_model=8, n_heads=2, d_mlp=32, n_ctx=8, d_vocab=16, d_embed=8,
                            act_fn=act_fn, model_name="act", pretrained=None)
    mlp = MLP(cfg)
    x = torch.randn(64, 32, generator=torch.Generator().manual_seed(0)) * 4
    expected = mlp.act(x)
    buffer = x.clone()
    got = _activation_(act_fn, mlp, buffer)
    assert torch.equal(got, expected)
    assert not torch.equal(expected, x)  # the activation did something
    assert got.data_ptr() == buffer.data_ptr()  # in place: no second buffer
