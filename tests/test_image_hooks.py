"""Every hook of the image tower is on the data path, and partial runs compose.

An identity hook leaves the embedding bit-identical; a perturbing hook (seeded noise) changes it.
Patching every position of the state at layer l from image A into image B gives A's embedding.
"""

from __future__ import annotations

import pytest
import torch

from interp.models.clip import load_image_encoder


@pytest.fixture(scope="module")
def tower():
    model = load_image_encoder("tiny", None)
    model.set_use_attn_result(True)
    return model


@pytest.fixture(scope="module")
def images(tower):
    return torch.randn(2, 3, *tower.cfg.image_size, generator=torch.Generator().manual_seed(0))


def test_expected_hook_names_exist(tower):
    names = set(tower.hook_dict)
    for name in ("embed.hook_embed", "embed.hook_pos_embed", "ln_pre.hook_normalized", "blocks.0.hook_resid_pre",
                 "blocks.1.attn.hook_pattern", "blocks.1.attn.hook_z", "blocks.1.attn.hook_result",
                 "blocks.1.mlp.hook_post", "ln_post.hook_normalized", "ln_post.hook_scale", "hook_pooled",
                 "hook_embedding"):
        assert name in names


def test_every_hook_acts(tower, images):
    with torch.no_grad():
        clean = tower(images)
        for name in tower.hook_dict:
            same = tower.run_with_hooks(images, fwd_hooks=[(name, lambda x, hook: x)])
            assert torch.equal(same, clean), name
            generator = torch.Generator().manual_seed(1)

            def perturb(x, hook):
                return x + 0.5 * torch.randn(x.shape, generator=generator)

            changed = tower.run_with_hooks(images, fwd_hooks=[(name, perturb)])
            assert (changed - clean).abs().max().item() > 1e-4, name


def test_hook_result_sums_to_attention_output(tower, images):
    with torch.no_grad():
        _, cache = tower.run_with_cache(images)
    for layer in range(tower.cfg.n_layers):
        result = cache[f"blocks.{layer}.attn.hook_result"].sum(2) + tower.blocks[layer].attn.b_O
        assert (result - cache[f"blocks.{layer}.hook_attn_out"]).abs().max().item() <= 1e-5


def test_patching_every_position_of_a_state_from_a_into_b_gives_a(tower, images):
    a, b = images[:1], images[1:]
    with torch.no_grad():
        out_a, cache_a = tower.run_with_cache(a)
        out_b = tower(b)
        assert (out_a - out_b).abs().max().item() > 1e-3
        for layer in range(tower.cfg.n_layers + 1):
            name = tower.resid_hook_name(layer)
            patched = tower.run_with_hooks(b, fwd_hooks=[(name, lambda x, hook, name=name: cache_a[name].clone())])
            assert (patched - out_a).abs().max().item() <= 1e-6, name


def test_stop_then_start_equals_the_full_run(tower, images):
    with torch.no_grad():
        full = tower(images)
        for layer in range(tower.cfg.n_layers + 1):
            resid = tower(images, stop_at_layer=layer)
            assert torch.equal(tower(start_at_layer=layer, residual=resid), full)


def test_bad_inputs_are_named(tower, images):
    with pytest.raises(ValueError, match="expected \\[batch, 3, 224, 224\\]"):
        tower(images[:, :, :100])
    with pytest.raises(ValueError, match="start_at_layer needs residual"):
        tower(start_at_layer=1)
    with pytest.raises(ValueError, match="outside"):
        tower(images, stop_at_layer=9)
