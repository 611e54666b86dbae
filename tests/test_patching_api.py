"""Partial runs and whole-state patching: the machinery causal tracing stands on."""

from __future__ import annotations

import pytest
import torch


def test_patching_every_position_of_resid_pre_reproduces_the_source_exactly(tiny_model):
    source, target = "There is no dog on the table.", "There is a cat on the table."
    a, b = tiny_model.to_token_batch([source]), tiny_model.to_token_batch([target])
    assert a.tokens.shape == b.tokens.shape and torch.equal(a.pool_index, b.pool_index)
    with torch.no_grad():
        embed_a, cache_a = tiny_model.run_with_cache(a)
        embed_b = tiny_model(b)
        assert not torch.allclose(embed_a, embed_b)
        for layer in range(tiny_model.cfg.n_layers + 1):
            name = tiny_model.resid_hook_name(layer)
            patched = tiny_model.run_with_hooks(b, fwd_hooks=[(name, lambda x, hook: cache_a[hook.name])])
            assert torch.equal(patched, embed_a), f"patching {name} did not reproduce the source"


def test_stop_then_start_equals_full_forward(tiny_model, sentences):
    batch = tiny_model.to_token_batch(sentences)
    with torch.no_grad():
        full, cache = tiny_model.run_with_cache(batch)
        for layer in range(tiny_model.cfg.n_layers + 1):
            resid = tiny_model(batch, stop_at_layer=layer)
            assert torch.equal(resid, cache[tiny_model.resid_hook_name(layer)])
            resumed = tiny_model(batch, start_at_layer=layer, residual=resid)
            assert torch.equal(resumed, full)


def test_partial_run_arguments_are_checked(tiny_model):
    batch = tiny_model.to_token_batch(["There is a dog."])
    with pytest.raises(ValueError, match="residual"):
        tiny_model(batch, start_at_layer=1)
    with pytest.raises(ValueError, match="outside 0..2"):
        tiny_model(batch, stop_at_layer=3)
    with pytest.raises(ValueError, match="batch x pos"):
        tiny_model(batch, start_at_layer=1, residual=torch.zeros(1, 3, tiny_model.cfg.d_model))


def test_transformer_lens_activation_patching_runs_on_the_hooked_encoder(tiny_model):
    """TL's own patching helper accepts the encoder unadapted (it reads cfg.device) and agrees
    with patching by hand."""
    from transformer_lens import patching

    assert tiny_model.cfg.device == "cpu"
    source = tiny_model.to_token_batch(["There is no dog."]).tokens
    base = tiny_model.to_token_batch(["There is a dog."]).tokens
    with torch.no_grad():
        _, cache = tiny_model.run_with_cache(source)
        grid = patching.get_act_patch_resid_pre(tiny_model, base, cache, lambda out: out[0, 0])
        layer, pos = 1, 3
        name = f"blocks.{layer}.hook_resid_pre"

        def patch(x, hook):
            x = x.clone()
            x[:, pos] = cache[name][:, pos]
            return x

        by_hand = tiny_model.run_with_hooks(base, fwd_hooks=[(name, patch)])[0, 0]
    assert grid.shape == (tiny_model.cfg.n_layers, base.shape[1])
    assert torch.allclose(grid[layer, pos], by_hand, atol=1e-6)
