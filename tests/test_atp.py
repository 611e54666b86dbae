"""Attribution patching: exact where first order is exact, and its fidelity measures.

The planted linear encoder (interp.testing.build_linear_encoder: identity LayerNorms, fixed uniform
attention, ReLU in its linear range) makes the output affine in every activation, so with an
affine metric AtP must equal the exact re-runs. float64, tolerance 1e-5 (the acceptance bar; the
observed gap is rounding, ~1e-12). Oracles: interp.tracing.reference (one forward per cell) and a
plain per-component hook loop written here.
"""

from __future__ import annotations

import pytest
import torch

from interp.heads.ablation import Component, all_heads, reference_means
from interp.heads.atp import atp_ablation_scores, fidelity, spearman, top_k_overlap
from interp.testing import build_linear_encoder
from interp.tracing import RowMetric, TraceSpec, atp_patched_scores, reference_patched_scores, trace_pair
from interp.tracing.pairs import pair_runs

BASES = ["There is a dog on the table.", "A red car.", "You see some people."]
SOURCES = ["There is no dog on the table.", "A blue car.", "You see no people."]
ATOL = 1e-5


@pytest.fixture(scope="module")
def linear():
    return build_linear_encoder(seed=0)


@pytest.fixture(scope="module")
def weights(linear):
    return torch.linspace(-1, 1, linear.cfg.d_embed, dtype=torch.float64)


def test_the_planted_encoder_is_affine(linear):
    """Precondition: S(a + b) - S(a) = S(a + 2b) - S(a + b) for a perturbation b of any state."""
    tokens = linear.to_tokens(BASES[:1])
    bump = torch.randn(1, tokens.shape[1], linear.cfg.d_model, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    outs = []
    for k in range(3):
        outs.append(linear.run_with_hooks(tokens, fwd_hooks=[("blocks.1.hook_resid_pre", lambda x, hook, k=k: x + k * bump)]))
    torch.testing.assert_close(outs[1] - outs[0], outs[2] - outs[1], rtol=0, atol=1e-9)
    assert (outs[1] - outs[0]).abs().max() > 1e-2


@pytest.mark.parametrize("kind", ["resid", "attn", "mlp"])
def test_cell_atp_equals_exact_patching_on_the_linear_encoder(linear, weights, kind):
    runs, _ = pair_runs(linear, BASES, SOURCES, metric=lambda e: e @ weights)
    spec = TraceSpec(linear.cfg.n_layers, kind=kind)
    exact = reference_patched_scores(linear, runs, spec)
    estimate = atp_patched_scores(linear, runs, spec, batch_size=2)  # two chunks
    torch.testing.assert_close(estimate.base, exact.base.to(estimate.base.dtype), rtol=0, atol=ATOL)
    torch.testing.assert_close(estimate.source, exact.source.to(estimate.base.dtype), rtol=0, atol=ATOL)
    torch.testing.assert_close(estimate.patched, exact.patched.to(estimate.patched.dtype), rtol=0, atol=ATOL,
                               equal_nan=True)
    effect = exact.patched - exact.base[:, None, None]
    assert effect.nan_to_num().abs().max() > 1e-2, "the planted cells must have effects to estimate"


def _exact_ablation(model, tokens, comp, value, metric):
    """Plain oracle: one forward per component with its activation replaced at real positions."""
    batch = model.to_token_batch(tokens)
    keep = batch.attention_mask[..., None]

    def hook(act, hook):
        act = act.clone()
        if comp.kind == "head":
            act[:, :, comp.head] = torch.where(keep, value[: act.shape[1]], act[:, :, comp.head])
        else:
            act[:] = torch.where(keep, value[: act.shape[1]], act)
        return act

    return metric(model.run_with_hooks(batch, fwd_hooks=[(comp.hook_name("z"), hook)]))


@pytest.mark.parametrize("method", ["zero", "mean"])
def test_head_and_block_atp_equals_exact_ablation_on_the_linear_encoder(linear, weights, method):
    comps = all_heads(linear) + [Component("attn", 1), Component("mlp", 0), Component("mlp", 2)]
    texts = BASES + SOURCES
    batch = linear.to_token_batch(texts)
    means = reference_means(linear, batch, comps) if method == "mean" else None
    rows_metric = lambda e, rows: e @ weights  # noqa: E731
    result = atp_ablation_scores(linear, batch, comps, method, metric=rows_metric, means=means, sentence_batch=4)
    with torch.no_grad():
        clean = linear(batch) @ weights
    torch.testing.assert_close(result.clean.double(), clean, rtol=0, atol=ATOL)
    width = batch.tokens.shape[1]
    for c, comp in enumerate(comps):
        d = linear.cfg.d_head if comp.kind == "head" else linear.cfg.d_model
        value = torch.zeros(width, d, dtype=torch.float64) if method == "zero" else means[comp][0]
        with torch.no_grad():
            exact = _exact_ablation(linear, texts, comp, value, lambda e: e @ weights)
        # Estimates are stored in float32 (as the exact engine's scores are): compare relatively.
        torch.testing.assert_close(result.ablated[c].double(), exact, rtol=1e-6, atol=ATOL)
    assert (result.ablated - result.clean).abs().max() > 1e-2


def test_cosine_atp_keeps_exact_clean_scores_on_a_real_shaped_encoder():
    """On a non-linear encoder the estimate is approximate, but the clean scores it reports are exact."""
    from interp import load_text_encoder

    tiny = load_text_encoder("tiny")
    table_exact = trace_pair(tiny, BASES[0], SOURCES[0])
    table_atp = trace_pair(tiny, BASES[0], SOURCES[0], method="atp")
    assert table_atp["base_score"].iloc[0] == pytest.approx(table_exact["base_score"].iloc[0], abs=1e-6)
    assert table_atp["source_score"].iloc[0] == pytest.approx(table_exact["source_score"].iloc[0], abs=1e-6)
    # Cells the exact engine settles as "equal to the base run" (identical sites) have zero AtP terms.
    same = (table_exact["token"] == table_exact["source_token"]) & (table_exact["layer"] == 0)
    assert (table_atp.loc[same, "patched"] - table_atp.loc[same, "base_score"]).abs().max() < 1e-7


def test_atp_refuses_resample_and_missing_inputs(linear, weights):
    runs, _ = pair_runs(linear, BASES, SOURCES, metric=lambda e: e @ weights)
    with pytest.raises(Exception, match="window 1"):
        atp_patched_scores(linear, runs, TraceSpec(linear.cfg.n_layers, kind="mlp", window=2))
    batch = linear.to_token_batch(BASES)
    with pytest.raises(Exception, match="resampled value"):
        atp_ablation_scores(linear, batch, all_heads(linear), "resample", metric=lambda e, r: e @ weights)
    with pytest.raises(Exception, match="one of them"):
        atp_ablation_scores(linear, batch, all_heads(linear), "zero")
    with pytest.raises(Exception, match="needs means"):
        atp_ablation_scores(linear, batch, all_heads(linear), "mean", metric=lambda e, r: e @ weights)


def test_fidelity_measures_on_known_rankings():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert top_k_overlap([5, -4, 0.1, 0.2], [-6, 3, 0.3, 0.0], k=2) == 1.0  # by magnitude
    assert top_k_overlap([5, 4, 0.1, 0.2], [0.1, 0.2, 5, 4], k=2) == 0.0
    import pandas as pd

    exact = pd.DataFrame({"component": list("abcd") * 2, "layer": [0, 0, 1, 1] * 2,
                          "effect": [1.0, 2.0, 3.0, 4.0, 1.0, 2.0, 3.0, 4.0]})
    estimate = exact.assign(effect=exact["effect"] * 2)
    table = fidelity(estimate, exact, k=2)
    assert list(table["layer"]) == ["all", 0, 1]
    assert table["spearman"].tolist() == pytest.approx([1.0, 1.0, 1.0])
    assert table["top2_overlap"].iloc[0] == 1.0
    assert table["max_abs_error"].iloc[0] == pytest.approx(4.0)


@pytest.mark.parametrize("site", ["q", "k"])
@pytest.mark.parametrize("method", ["zero", "mean"])
def test_qk_fix_is_exact_where_only_the_softmax_is_nonlinear(weights, site, method):
    """Linear encoder whose last block has real queries and keys: downstream of that block's pattern
    everything is affine, so AtP* (exact pattern, linear after it) equals the exact ablation, while
    plain AtP (linear through the softmax) does not."""
    from interp.heads.atp import atp_qk_ablation_scores

    model = build_linear_encoder(seed=0)
    last = model.blocks[-1].attn
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        last.W_Q.copy_(torch.randn(last.W_Q.shape, generator=gen, dtype=torch.float64))
        last.W_K.copy_(torch.randn(last.W_K.shape, generator=gen, dtype=torch.float64))
    texts = BASES + SOURCES
    batch = model.to_token_batch(texts)
    layer = model.cfg.n_layers - 1
    heads = all_heads(model, [layer])
    rows_metric = lambda e, rows: e @ weights  # noqa: E731
    fixed = atp_qk_ablation_scores(model, batch, heads, site, method, metric=rows_metric)
    plain = atp_qk_ablation_scores(model, batch, heads, site, method, metric=rows_metric, qk_fix=False)
    keep = batch.attention_mask[:, :, None]
    if method == "mean":
        with torch.no_grad():
            _, cache = model.run_with_cache(batch)
        act = cache[f"blocks.{layer}.attn.hook_{site}"]
        mask = batch.attention_mask[..., None, None].double()
        mean = (act * mask).sum(0) / mask.sum(0)  # [pos, head, d_head] over the real tokens
    for c, comp in enumerate(heads):
        value = torch.zeros(batch.tokens.shape[1], model.cfg.d_head, dtype=torch.float64) if method == "zero" \
            else mean[:, comp.head]

        def hook(x, hook, h=comp.head, value=value):
            x = x.clone()
            x[:, :, h] = torch.where(keep, value, x[:, :, h])
            return x

        with torch.no_grad():
            exact = model.run_with_hooks(batch, fwd_hooks=[(f"blocks.{layer}.attn.hook_{site}", hook)]) @ weights
        torch.testing.assert_close(fixed.ablated[c].double(), exact, rtol=1e-6, atol=ATOL)
    assert (plain.ablated - fixed.ablated).abs().max() > 1e-3, "the softmax must be non-linear here"
