"""What the REAL all-MiniLM-L6-v2 weights do on the VALSE existence minimal pairs (text target).

Claims about this sentence encoder only; nothing here says anything about CLIP.

1. The text-target gap S(N) - S(A) = 2 (1 - cos(e_N, e_A)) is positive for every pair, and the
   trained weights separate N from A far more than a random init of the same architecture and
   tokenizer: the smallest trained gap exceeds the largest random-init gap (measured: 0.33 vs 0.033).
2. The last row of a causal trace (the state after the last block) behaves as mean pooling
   implies: patching every position reproduces N's embedding exactly (CTE = 1); patching one
   position moves the pooled vector by exactly (h_N[p] - h_A[p]) / n; and every real position has
   a nonzero CTE there, the [CLS]/"there"/"is" prefix included, unlike causal CLIP pooled at EOT.
3. At layer 0 N and A differ only at the negator (embeddings are per position), but from layer 1
   on the prefix before the negator differs too: bidirectional attention carries the negator
   backwards, so CLIP's "zero prefix rows" invariant does not hold for this encoder.
"""

from __future__ import annotations

from collections import defaultdict

import pytest
import torch

from interp import load_text_encoder
from interp.data.negation import align_pairs, load_existence_pairs
from interp.data.scoring import cte, score, text_target_directions

ATOL_MEAN_POOL_FP32 = 1e-6
PREFIX_DIFFERS = 1e-3  # |h_N - h_A| above this counts as "differs" (states are O(1))
RANDOM_SUBSET = 128  # pairs embedded by the random-init baseline (speed)


def _by_length(aligned):
    """Item indices grouped by token length: each group is one unpadded batch."""
    groups = defaultdict(list)
    for index, pair in enumerate(aligned):
        groups[pair.length].append(index)
    return dict(sorted(groups.items()))


def _states(model, texts):
    """(embedding [n, d], residual states [layer, n, pos, d_model]) in one forward; texts have equal length."""
    names = [model.resid_hook_name(layer) for layer in range(model.cfg.n_layers + 1)]
    batch = model.to_token_batch(texts)
    assert bool(batch.attention_mask.all()), "a length group must need no padding"
    with torch.no_grad():
        embedding, cache = model.run_with_cache(batch, names_filter=names)
    return batch, embedding, torch.stack([cache[name] for name in names])


@pytest.fixture(scope="module")
def minilm():
    return load_text_encoder("all-MiniLM-L6-v2")


@pytest.fixture(scope="module")
def aligned(minilm):
    pairs = load_existence_pairs().pairs
    aligned, rejected = align_pairs(pairs, minilm.tokenizer)
    assert len(aligned) >= 400, f"only {len(aligned)} of {len(pairs)} pairs align under WordPiece: {rejected[:3]}"
    return aligned


@pytest.fixture(scope="module")
def runs(minilm, aligned):
    """Per length group: N and A batches, embeddings and all residual states."""
    out = []
    for length, indices in _by_length(aligned).items():
        batch_n, e_n, h_n = _states(minilm, [aligned[i].pair.negated for i in indices])
        batch_a, e_a, h_a = _states(minilm, [aligned[i].pair.affirmative for i in indices])
        out.append(dict(length=length, indices=indices, batch_n=batch_n, batch_a=batch_a,
                        e_n=e_n, e_a=e_a, h_n=h_n, h_a=h_a,
                        negator=[aligned[i].negator_pos for i in indices]))
    return out


def _gaps(e_n, e_a):
    direction = text_target_directions(e_n, e_a)
    return score(e_n, direction) - score(e_a, direction)


def test_text_target_gap_is_positive_for_every_pair_and_far_above_random_init(minilm, aligned, runs):
    gaps = torch.cat([_gaps(run["e_n"], run["e_a"]) for run in runs])
    assert gaps.numel() == len(aligned)
    assert bool((gaps > 0).all()), f"{int((gaps <= 0).sum())} pairs with S(N) - S(A) <= 0"

    random_model = load_text_encoder("all-MiniLM-L6-v2", None, seed=0)
    subset = aligned[:RANDOM_SUBSET]
    with torch.no_grad():
        e_n = random_model([p.pair.negated for p in subset])
        e_a = random_model([p.pair.affirmative for p in subset])
    random_gaps = _gaps(e_n, e_a)
    assert bool((random_gaps > 0).all())
    assert gaps.min() > random_gaps.max(), (
        f"trained min gap {gaps.min():.3f} vs random-init max gap {random_gaps.max():.3f}"
    )


def _patch_last_layer(model, run, positions):
    """Embedding of A's run with N's final-layer state at ``positions`` (a list of position sets),
    one batched pooling call per set: [len(positions), n, d_embed] and the pooled vectors."""
    layer = model.cfg.n_layers
    h_n, h_a = run["h_n"][layer], run["h_a"][layer]
    embeddings, pooled = [], []
    for where in positions:
        state = h_a.clone()
        state[:, where] = h_n[:, where]
        with torch.no_grad():
            emb, cache = model.run_with_cache(run["batch_a"], start_at_layer=layer, residual=state,
                                              names_filter=["hook_pooled"])
        embeddings.append(emb)
        pooled.append(cache["hook_pooled"])
    return torch.stack(embeddings), torch.stack(pooled)


def test_patching_every_position_at_the_last_layer_reproduces_n(minilm, runs):
    for run in runs:
        every = list(range(run["length"]))
        patched, _ = _patch_last_layer(minilm, run, [every])
        assert torch.equal(patched[0], run["e_n"]), f"length {run['length']}: not N's embedding"
        direction = text_target_directions(run["e_n"], run["e_a"])
        effect = cte(score(patched[0], direction), score(run["e_a"], direction), score(run["e_n"], direction))
        assert torch.allclose(effect, torch.ones_like(effect), atol=1e-6)


def test_last_layer_per_position_effects_follow_mean_pooling(minilm, runs):
    """Patching one position p moves the (unnormalised) mean by (h_N[p] - h_A[p]) / n, and every
    real position, prefix included, has a nonzero CTE: all of them feed the pooled output."""
    layer = minilm.cfg.n_layers
    for run in runs:
        n = run["length"]
        patched, pooled = _patch_last_layer(minilm, run, [[p] for p in range(n)])  # [pos, item, ...]
        h_n, h_a = run["h_n"][layer], run["h_a"][layer]
        pooled_a = h_a.mean(dim=1)
        expected = pooled_a.unsqueeze(0) + (h_n - h_a).transpose(0, 1) / n
        assert (pooled - expected).abs().max().item() <= ATOL_MEAN_POOL_FP32
        direction = text_target_directions(run["e_n"], run["e_a"])
        effect = cte(score(patched, direction), score(run["e_a"], direction), score(run["e_n"], direction))
        assert bool((effect.abs() > 0).all()), f"length {n}: a position with CTE exactly 0 at the last layer"
        # Not only the last token: the [CLS] position alone moves the score in every item.
        assert bool((effect[0].abs() > 1e-4).all())


def test_the_prefix_is_untouched_only_at_layer_zero(minilm, runs):
    for run in runs:
        for item, negator in enumerate(run["negator"]):
            h_n, h_a = run["h_n"][:, item], run["h_a"][:, item]  # [layer, pos, d_model]
            assert torch.equal(h_n[0, :negator], h_a[0, :negator])
            assert torch.equal(h_n[0, negator + 1:], h_a[0, negator + 1:])
            prefix_change = (h_n[1:, :negator] - h_a[1:, :negator]).abs().amax(dim=(1, 2))
            assert bool((prefix_change > PREFIX_DIFFERS).all()), (
                f"{run['batch_n'].texts[item]!r}: prefix unchanged at some layer >= 1: {prefix_change}"
            )


def test_the_tracing_engine_on_minilm_matches_a_plain_patching_loop(minilm, aligned):
    """The project's batched engine (generic path: bidirectional, mean-pooled, padded batch) gives
    the same residual-patching grid as a plain loop written here, cell by cell over positions."""
    from interp.tracing.engine import patched_scores, uses_fast_path
    from interp.tracing.inputs import build_runs, effects
    from interp.tracing.spec import TraceSpec

    items = [aligned[i] for i in range(0, len(aligned), len(aligned) // 16)][:16]
    assert len({item.length for item in items}) > 1, "the batch must mix lengths (padding)"
    batch_n = minilm.to_token_batch([item.pair.negated for item in items])
    batch_a = minilm.to_token_batch([item.pair.affirmative for item in items])
    with torch.no_grad():
        e_n, e_a = minilm(batch_n), minilm(batch_a)
    direction = text_target_directions(e_n, e_a)
    spec = TraceSpec(n_layers=minilm.cfg.n_layers)
    assert not uses_fast_path(minilm)
    runs, per_item = build_runs(minilm, items, direction)
    effect, *_ = effects(patched_scores(minilm, runs, spec), per_item)  # [item, layer, pos]

    s_n, s_a = score(e_n, direction), score(e_a, direction)
    real = batch_a.attention_mask  # [item, pos]
    n_items, n_pos = batch_a.tokens.shape
    rows = torch.arange(n_items).repeat(n_pos)  # row r = (position r // n_items, item r % n_items)
    patch_pos = torch.arange(n_pos).repeat_interleave(n_items)
    with torch.no_grad():
        for layer in range(spec.n_axis):  # one forward per layer: every (position, item) cell as a row
            h_n = minilm(batch_n, stop_at_layer=layer)
            state = minilm(batch_a, stop_at_layer=layer)[rows].clone()
            state[torch.arange(len(rows)), patch_pos] = h_n[rows, patch_pos]
            patched = minilm(batch_a[rows], start_at_layer=layer, residual=state)
            expected = cte(score(patched, direction[rows]), s_a[rows], s_n[rows]).view(n_pos, n_items).T
            got = effect[:, layer]  # [item, pos]
            assert torch.allclose(got[real], expected[real], atol=1e-5), layer
            assert bool(torch.isnan(got[~real]).all()), "padded cells are NaN in the engine"
    last = effect[:, -1]
    assert bool((last[real].abs() > 0).all()), "mean pooling: every real position matters at the last layer"
