"""Per-component parity with open_clip (float32): embedding, one block, one head, final LN.

Tolerances: embedding exact (same gather and add); block, head z, pattern and final LN <= 1e-5
(summation order in fused attention kernels differs).
"""

from __future__ import annotations

import pytest
import torch

from interp.models.loading import create_open_clip_model, hooked_from_open_clip

ATOL = 1e-5


@pytest.fixture(scope="module")
def pair():
    reference = create_open_clip_model("ViT-B-32-quickgelu", None, seed=3)
    return reference, hooked_from_open_clip(reference, "ViT-B-32-quickgelu")


@pytest.fixture(scope="module")
def run(pair, sentences):
    reference, hooked = pair
    batch = hooked.to_token_batch(sentences)
    with torch.no_grad():
        _, cache = hooked.run_with_cache(batch)
    return batch, cache


def test_embedding_output(pair, run):
    reference, _ = pair
    batch, cache = run
    n_pos = batch.tokens.shape[1]
    with torch.no_grad():
        expected = reference.token_embedding(batch.tokens) + reference.positional_embedding[:n_pos]
    assert torch.equal(cache["blocks.0.hook_resid_pre"], expected)


@pytest.mark.parametrize("layer", [0, 5, 11])
def test_one_block(pair, run, layer):
    reference, _ = pair
    batch, cache = run
    n_pos = batch.tokens.shape[1]
    with torch.no_grad():
        expected = reference.transformer.resblocks[layer](
            cache[f"blocks.{layer}.hook_resid_pre"], attn_mask=reference.attn_mask[:n_pos, :n_pos]
        )
    assert (cache[f"blocks.{layer}.hook_resid_post"] - expected).abs().max() <= ATOL


@pytest.mark.parametrize("layer, head", [(0, 0), (4, 2), (11, 7)])
def test_one_head_pattern_and_z(pair, run, layer, head):
    reference, hooked = pair
    batch, cache = run
    block = reference.transformer.resblocks[layer]
    n_pos, d_head = batch.tokens.shape[1], hooked.cfg.d_head
    x = block.ln_1(cache[f"blocks.{layer}.hook_resid_pre"])
    with torch.no_grad():
        _, patterns = block.attn(x, x, x, attn_mask=reference.attn_mask[:n_pos, :n_pos],
                                 need_weights=True, average_attn_weights=False)
        w_v = block.attn.in_proj_weight[2 * hooked.cfg.d_model:][head * d_head:(head + 1) * d_head]
        b_v = block.attn.in_proj_bias[2 * hooked.cfg.d_model:][head * d_head:(head + 1) * d_head]
        v = torch.nn.functional.linear(x, w_v, b_v)
        z_expected = patterns[:, head] @ v
    assert (cache[f"blocks.{layer}.attn.hook_pattern"][:, head] - patterns[:, head]).abs().max() <= ATOL
    assert (cache[f"blocks.{layer}.attn.hook_z"][:, :, head] - z_expected).abs().max() <= ATOL


def test_final_layer_norm(pair, run):
    reference, hooked = pair
    batch, cache = run
    final = cache[hooked.resid_hook_name(hooked.cfg.n_layers)]
    with torch.no_grad():
        expected = reference.ln_final(final)
    assert (cache["ln_final.hook_normalized"] - expected).abs().max() <= ATOL
