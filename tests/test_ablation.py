"""Ablation engine: equals a per-component per-sentence loop, zero/mean/resample semantics on
hand-computed cases, planted heads, clear errors."""

from __future__ import annotations

import copy

import pytest
import torch

import interp
from interp.heads.ablation import (
    AblationError,
    Component,
    ablation_scores,
    ablation_scores_reference,
    all_heads,
    reference_means,
    resample_donors,
)
from interp.heads.attention import batch_from_ids
from interp.data.negation import align_pairs, load_existence_pairs
from interp.testing import build_negator_selective_encoder

ATOL = 1e-5  # float32, scores are cosines times unit-norm directions


@pytest.fixture(scope="module")
def tiny():
    return interp.load_text_encoder("tiny", seed=2)


@pytest.fixture(scope="module")
def sentences(tiny):
    aligned, _ = align_pairs(load_existence_pairs().pairs[:40], tiny.tokenizer)
    by_len = {}
    for a in aligned:
        by_len.setdefault(a.length, a)
    chosen = list(by_len.values())[:3]
    ids = [a.tokens_negated for a in chosen] + [a.tokens_affirmative for a in chosen]
    groups = [0, 1, 2, 0, 1, 2]
    return ids, groups


@pytest.fixture(scope="module")
def directions(tiny, sentences):
    g = torch.Generator().manual_seed(0)
    d = torch.randn(len(sentences[0]), tiny.cfg.d_embed, generator=g)
    return d / d.norm(dim=-1, keepdim=True)


COMPONENTS = [Component("head", 0, 1), Component("head", 1, 3), Component("attn", 1), Component("mlp", 0)]


@pytest.mark.parametrize("method,mean_over", [("zero", "items"), ("mean", "items"), ("mean", "positions"), ("resample", "items")])
def test_batched_equals_reference_loop(tiny, sentences, directions, method, mean_over):
    ids, groups = sentences
    batch = batch_from_ids(tiny, ids)
    means = reference_means(tiny, batch, COMPONENTS, mean_over=mean_over, batch_size=4) if method == "mean" else None
    index, donor_pos = resample_donors(batch.lengths, batch.lengths, seed=3, target_groups=groups, reference_groups=groups)
    fast = ablation_scores(tiny, batch, directions, COMPONENTS, method, means=means, donors=batch[index],
                           donor_positions=donor_pos, sentence_batch=4, max_rows=6, progress=False)
    slow = ablation_scores_reference(tiny, ids, directions, COMPONENTS, method, reference=ids,
                                     donors=[ids[int(i)] for i in index], donor_positions=donor_pos.tolist(),
                                     mean_over=mean_over)
    torch.testing.assert_close(fast.ablated, slow, atol=ATOL, rtol=0)
    clean = torch.stack([torch.nn.functional.normalize(tiny(torch.tensor([s])), dim=-1)[0] @ directions[i]
                         for i, s in enumerate(ids)])
    torch.testing.assert_close(fast.clean, clean.detach(), atol=ATOL, rtol=0)
    assert (fast.ablated - fast.clean).abs().max() > 1e-3  # the ablations do something


def test_result_site_equals_z_site_and_position_masks(tiny, sentences, directions):
    ids, _ = sentences
    batch = batch_from_ids(tiny, ids)
    heads = all_heads(tiny)
    means_z = reference_means(tiny, batch, heads, site="z")
    means_r = reference_means(tiny, batch, heads, site="result")
    by_z = ablation_scores(tiny, batch, directions, heads, "mean", means=means_z, progress=False)
    by_r = ablation_scores(tiny, batch, directions, heads, "mean", means=means_r, site="result", progress=False)
    torch.testing.assert_close(by_z.ablated, by_r.ablated, atol=ATOL, rtol=0)
    assert tiny.cfg.use_attn_result is False  # restored
    # ablate only the negator slot (position 3) of each sentence
    positions = torch.zeros_like(batch.attention_mask)
    positions[:, 3] = True
    fast = ablation_scores(tiny, batch, directions, COMPONENTS, "zero", positions=positions, progress=False)
    slow = ablation_scores_reference(tiny, ids, directions, COMPONENTS, "zero", positions=[[3]] * len(ids))
    torch.testing.assert_close(fast.ablated, slow, atol=ATOL, rtol=0)


def test_zero_ablation_equals_removing_the_head_weights(tiny, sentences, directions):
    ids, _ = sentences
    batch = batch_from_ids(tiny, ids)
    comp = Component("head", 1, 2)
    ablated = ablation_scores(tiny, batch, directions, [comp], "zero", progress=False).ablated[0]
    edited = copy.deepcopy(tiny)
    with torch.no_grad():
        edited.blocks[1].attn.W_O[2] = 0
        emb = edited(batch)
    expected = (torch.nn.functional.normalize(emb, dim=-1) * directions).sum(-1)
    torch.testing.assert_close(ablated, expected, atol=ATOL, rtol=0)


def test_mean_values_by_hand(tiny):
    short, long = [49406, 320, 49407], [49406, 320, 1929, 269, 49407]
    batch = batch_from_ids(tiny, [short, long])
    comp = Component("head", 0, 0)
    _, c1 = tiny.run_with_cache(torch.tensor([short]))
    _, c2 = tiny.run_with_cache(torch.tensor([long]))
    z1, z2 = c1["blocks.0.attn.hook_z"][0, :, 0], c2["blocks.0.attn.hook_z"][0, :, 0]
    mean, count = reference_means(tiny, batch, [comp], mean_over="items")[comp]
    torch.testing.assert_close(mean[:3], (z1 + z2[:3]) / 2, atol=1e-6, rtol=0)
    torch.testing.assert_close(mean[3:], z2[3:], atol=1e-6, rtol=0)  # only the long sentence reaches 3, 4
    assert count.tolist() == [2, 2, 2, 1, 1]
    flat, n = reference_means(tiny, batch, [comp], mean_over="positions")[comp]
    torch.testing.assert_close(flat, torch.cat([z1, z2]).mean(0), atol=1e-6, rtol=0)
    assert int(n) == 8
    # a target position no reference sentence reaches is refused, not silently filled
    longer = batch_from_ids(tiny, [long + [320]])
    means = reference_means(tiny, batch_from_ids(tiny, [short]), [comp])
    with pytest.raises(AblationError, match="position 3 has no reference"):
        ablation_scores(tiny, longer, torch.ones(1, tiny.cfg.d_embed), [comp], "mean", means=means, progress=False)


def test_resample_donors_by_hand_and_deterministic():
    index, pos = resample_donors(torch.tensor([3, 5]), torch.tensor([3, 5]), seed=0,
                                 target_groups=[0, 1], reference_groups=[0, 1])
    assert index.tolist() == [1, 0]  # the only sentence of another item
    assert pos[0].tolist() == [0, 1, 2, 0, 0]  # identity, 0 past the end
    assert pos[1].tolist() == [0, 1, 1, 1, 2]  # fallback: tail onto the donor's second-last, EOT onto EOT
    lengths = torch.randint(5, 10, (200,))
    groups = list(range(100)) * 2
    a = resample_donors(lengths, lengths, seed=7, target_groups=groups, reference_groups=groups)
    b = resample_donors(lengths, lengths, seed=7, target_groups=groups, reference_groups=groups)
    c = resample_donors(lengths, lengths, seed=8, target_groups=groups, reference_groups=groups)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    donors = a[0]
    assert all(groups[int(d)] != groups[i] for i, d in enumerate(donors))
    assert bool((lengths[donors] >= lengths).all())


def test_planted_copy_head_first_idle_head_zero():
    planted = build_negator_selective_encoder()
    model = planted.model
    aligned, _ = align_pairs(load_existence_pairs().pairs[:8], model.tokenizer)
    ids = [a.tokens_negated for a in aligned] + [a.tokens_affirmative for a in aligned]
    batch = batch_from_ids(model, ids)
    with torch.no_grad():
        emb = torch.nn.functional.normalize(model(batch), dim=-1)
    n = len(aligned)
    target = emb[:n] - emb[n:]  # text target: cos(x, e_N) - cos(x, e_A)
    directions = torch.cat([target, target])
    heads = all_heads(model)
    means = reference_means(model, batch, heads)
    result = ablation_scores(model, batch, directions, heads, "mean", means=means, progress=False)
    d_clean = result.clean[:n] - result.clean[n:]
    effect = ((result.ablated[:, :n] - result.ablated[:, n:]) - d_clean).mean(1)
    copy_row = heads.index(Component("head", planted.copy_layer, planted.copy_head))
    idle_row = heads.index(Component("head", planted.copy_layer, planted.idle_head))
    assert int(effect.abs().argmax()) == copy_row
    assert float(effect[copy_row]) < -0.1  # removing the copied flag shrinks the N-vs-A gap
    assert abs(float(effect[idle_row])) < 1e-6
    assert (result.ablated[idle_row] - result.clean).abs().max() < 1e-6
    for method in ("zero", "resample"):
        index, pos = resample_donors(batch.lengths, batch.lengths, 0, target_groups=list(range(n)) * 2,
                                     reference_groups=list(range(n)) * 2)
        other = ablation_scores(model, batch, directions, [heads[idle_row]], method, donors=batch[index],
                                donor_positions=pos, progress=False)
        assert (other.ablated[0] - other.clean).abs().max() < 1e-6


def test_clear_errors(tiny, sentences, directions):
    ids, _ = sentences
    batch = batch_from_ids(tiny, ids)
    with pytest.raises(AblationError, match=r"valid layers are 0\.\.1"):
        ablation_scores(tiny, batch, directions, [Component("head", 2, 0)], "zero", progress=False)
    with pytest.raises(AblationError, match=r"valid heads are 0\.\.3"):
        ablation_scores(tiny, batch, directions, [Component("head", 0, 4)], "zero", progress=False)
    with pytest.raises(AblationError, match="does not exist: choose one of zero, mean, resample"):
        ablation_scores(tiny, batch, directions, COMPONENTS, "shuffle", progress=False)
    with pytest.raises(AblationError, match="reference set for mean ablation is empty"):
        reference_means(tiny, batch[[]], COMPONENTS)
    with pytest.raises(AblationError, match="needs means"):
        ablation_scores(tiny, batch, directions, COMPONENTS, "mean", progress=False)
    with pytest.raises(AblationError, match="needs donors"):
        ablation_scores(tiny, batch, directions, COMPONENTS, "resample", progress=False)
    with pytest.raises(AblationError, match="reference set for resample ablation is empty"):
        resample_donors(torch.tensor([3]), torch.tensor([], dtype=torch.long), 0)
    with pytest.raises(AblationError, match="one per sentence"):
        ablation_scores(tiny, batch, directions[:2], COMPONENTS, "zero", progress=False)


def test_bidirectional_post_ln_encoder_matches_loop():
    """MiniLM (bidirectional, post-LN, mean pooling, normalised output) through the same public API."""
    from interp.heads.attention import negator_attention, negator_attention_reference

    model = interp.load_text_encoder("all-MiniLM-L6-v2")
    assert not model.cfg.causal and model.cfg.norm == "post"
    aligned, _ = align_pairs(load_existence_pairs().pairs[:6], model.tokenizer)
    aligned = aligned[:2]
    attention = negator_attention(model, aligned, batch_size=1, progress=False)
    torch.testing.assert_close(attention.scores(), negator_attention_reference(model, aligned), atol=1e-6, rtol=0)
    ids = [a.tokens_negated for a in aligned] + [a.tokens_affirmative for a in aligned]
    batch = batch_from_ids(model, ids)
    directions = torch.nn.functional.normalize(torch.randn(len(ids), model.cfg.d_embed, generator=torch.Generator().manual_seed(0)), dim=-1)
    comps = [Component("head", 2, 1), Component("mlp", 4)]
    means = reference_means(model, batch, comps)
    fast = ablation_scores(model, batch, directions, comps, "mean", means=means, sentence_batch=3, progress=False)
    slow = ablation_scores_reference(model, ids, directions, comps, "mean", reference=ids)
    torch.testing.assert_close(fast.ablated, slow, atol=ATOL, rtol=0)
    assert (fast.ablated - fast.clean).abs().max() > 1e-4
