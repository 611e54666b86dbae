"""Every hook acts: identity hooks leave outputs bit-identical, perturbing hooks change them.

Runs over ALL hook names of the tiny CLIP encoder (with per-head results switched on, so
``attn.hook_result`` is on the data path too). Documented exception: perturbing only positions
after a text's EOT does not change its embedding (causal mask + EOT pooling), tested below.
"""

from __future__ import annotations

import pytest
import torch

from interp import load_text_encoder


@pytest.fixture(scope="module")
def model():
    model = load_text_encoder("tiny")
    model.set_use_attn_result(True)
    return model


@pytest.fixture(scope="module")
def batch(model, sentences):
    return model.to_token_batch(sentences)


def _perturb(name: str):
    def hook(activation, hook):
        if name.endswith("hook_scale"):
            return activation * 1.5
        noise = torch.randn(activation.shape, generator=torch.Generator().manual_seed(1))
        return activation + 0.5 * noise.to(activation.dtype)

    return hook


def test_hook_names_follow_transformer_lens(model):
    names = set(model.hook_dict)
    for layer in range(model.cfg.n_layers):
        for suffix in ("hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_attn_out", "hook_mlp_out",
                       "ln1.hook_normalized", "ln2.hook_normalized", "attn.hook_q", "attn.hook_k", "attn.hook_v",
                       "attn.hook_attn_scores", "attn.hook_pattern", "attn.hook_z", "attn.hook_result",
                       "mlp.hook_pre", "mlp.hook_post"):
            assert f"blocks.{layer}.{suffix}" in names
    assert {"hook_embed", "hook_pos_embed", "ln_final.hook_normalized", "hook_pooled", "hook_embedding"} <= names


def test_every_hook_fires_identity_is_exact_and_perturbation_changes_output(model, batch):
    with torch.no_grad():
        clean = model(batch)
        for name in model.hook_dict:
            fired = []

            def identity(activation, hook, fired=fired):
                fired.append(hook.name)
                return activation

            same = model.run_with_hooks(batch, fwd_hooks=[(name, identity)])
            assert fired == [name], f"{name} is not on the data path"
            assert torch.equal(same, clean), f"identity hook at {name} changed the output"
            changed = model.run_with_hooks(batch, fwd_hooks=[(name, _perturb(name))])
            assert (changed - clean).abs().max() > 1e-4, f"perturbing {name} did not change the output"


def test_hook_result_is_silent_unless_switched_on(sentences):
    model = load_text_encoder("tiny")
    _, cache = model.run_with_cache(sentences)
    assert "blocks.0.attn.hook_result" not in cache.keys()
    model.set_use_attn_result(True)
    with torch.no_grad():
        out_with, cache = model.run_with_cache(sentences)
    result = cache["blocks.0.attn.hook_result"]
    assert result.shape[2:] == (model.cfg.n_heads, model.cfg.d_model)
    # Per-head results sum (plus b_O) to the attention output.
    attn_out = cache["blocks.0.hook_attn_out"]
    assert torch.allclose(result.sum(2) + model.blocks[0].attn.b_O, attn_out, atol=1e-6)
    model.set_use_attn_result(False)
    assert torch.allclose(model(sentences), out_with, atol=1e-6)


def test_positions_after_eot_cannot_reach_the_embedding(model, batch):
    """The documented exception: a perturbation after a text's EOT leaves its embedding alone."""
    short = int(batch.lengths.argmin())
    eot = int(batch.pool_index[short])
    assert eot < batch.tokens.shape[1] - 1

    def after_eot(activation, hook):
        activation = activation.clone()
        activation[short, eot + 1:] += 100.0
        return activation

    with torch.no_grad():
        clean = model(batch)
        edited = model.run_with_hooks(batch, fwd_hooks=[("blocks.0.hook_resid_pre", after_eot)])
    assert torch.equal(edited[short], clean[short])


def test_run_with_cache_returns_transformer_lens_cache(model, batch):
    from transformer_lens import ActivationCache

    _, cache = model.run_with_cache(batch, names_filter=lambda n: n.endswith("hook_pattern"))
    assert isinstance(cache, ActivationCache)
    pattern = cache["pattern", 0]  # TL's (name, layer) shorthand works
    assert pattern.shape == (len(batch), model.cfg.n_heads, batch.tokens.shape[1], batch.tokens.shape[1])
    # Causal: no attention above the diagonal; rows sum to 1.
    assert torch.all(pattern.triu(1) == 0)
    assert torch.allclose(pattern.sum(-1), torch.ones(()), atol=1e-6)
