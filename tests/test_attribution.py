"""Direct effects: components sum to the embedding, planted heads, post-LN refusal."""

from __future__ import annotations

import pytest
import torch

import interp
from interp.heads.direct_effects import AttributionError, direct_effects, direct_effects_on_d
from interp.models.config import TextEncoderConfig
from interp.data.negation import align_pairs, load_existence_pairs
from interp.models.text_encoder import HookedTextEncoder
from interp.testing import build_negator_selective_encoder
from interp.models.tokenization import CLIPTokenizer

TEXTS = ["There are no dogs in the picture.", "There is a cat.", "There are some people on the street ."]


@pytest.fixture(scope="module")
def tiny():
    return interp.load_text_encoder("tiny", seed=3)


def test_components_sum_to_embedding_float32(tiny):
    de = direct_effects(tiny, TEXTS)
    assert de.contributions.dtype == torch.float32
    torch.testing.assert_close(de.contributions.sum(1), de.embedding, atol=1e-5, rtol=0)
    n = tiny.cfg.n_layers
    assert len(de.labels) == 1 + n * (tiny.cfg.n_heads + 2) + 1
    assert de.kinds.count("head") == n * tiny.cfg.n_heads
    # the scores split the same way: sum over components = normalize(e) . direction
    direction = torch.randn(len(TEXTS), tiny.cfg.d_embed)
    s = (torch.nn.functional.normalize(de.embedding, dim=-1) * direction).sum(-1)
    torch.testing.assert_close(de.scores(direction).sum(1), s, atol=1e-5, rtol=0)
    assert tiny.cfg.use_attn_result is False  # restored


def test_projection_bias_and_normalised_output():
    model = interp.load_text_encoder("tiny", seed=4)
    model.b_proj = torch.nn.Parameter(torch.randn(model.cfg.d_embed))
    model.cfg.normalize_output = True
    de = direct_effects(model, TEXTS)
    assert de.labels[-1] == "proj bias"
    torch.testing.assert_close(de.contributions.sum(1), de.embedding, atol=1e-5, rtol=0)
    torch.testing.assert_close(de.embedding.norm(dim=-1), torch.ones(len(TEXTS)), atol=1e-5, rtol=0)


def test_planted_copy_head_has_the_largest_direct_effect_on_d():
    planted = build_negator_selective_encoder()
    model = planted.model
    aligned, _ = align_pairs(load_existence_pairs().pairs[:8], model.tokenizer)
    negated = direct_effects(model, [a.pair.negated for a in aligned])
    affirmative = direct_effects(model, [a.pair.affirmative for a in aligned])
    e_n = torch.nn.functional.normalize(negated.embedding, dim=-1)
    e_a = torch.nn.functional.normalize(affirmative.embedding, dim=-1)
    target = e_n - e_a
    effects = direct_effects_on_d(negated, affirmative, target, target)  # [item, component]
    d = (e_n * target).sum(-1) - (e_a * target).sum(-1)
    torch.testing.assert_close(effects.sum(1), d, atol=1e-5, rtol=0)
    heads = negated.head_index()
    mean = effects.mean(0)
    top = heads[int(mean[heads].abs().argmax())]
    assert (negated.layers[top], negated.heads[top]) == (planted.copy_layer, planted.copy_head)
    assert float(mean[top]) > 0.1
    idle = negated.labels.index(f"L{planted.copy_layer}H{planted.idle_head}")
    assert effects[:, idle].abs().max() < 1e-6


def test_post_ln_encoder_is_refused():
    cfg = TextEncoderConfig(n_layers=1, d_model=8, n_heads=2, d_mlp=16, n_ctx=16, d_vocab=49408, d_embed=8,
                            causal=False, norm="post", pool="mean", has_final_ln=False, has_projection=False)
    model = HookedTextEncoder(cfg, CLIPTokenizer(16))
    with pytest.raises(AttributionError, match="post-LN"):
        direct_effects(model, TEXTS[:1])
