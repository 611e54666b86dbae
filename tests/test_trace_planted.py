"""Planted signal: a hand-built encoder where one head at one known layer copies the negator's flag.

interp.testing.build_negator_copy_encoder: block `copy_layer` holds the only working head; every
other block is the identity. So (the layout of docs/tracing.md, states 0..L):
- at states 0..copy_layer the whole N-vs-A gap sits at the negator (CTE 1) and nowhere later (0);
- from state copy_layer + 1 on it has been copied to the later positions, and since the rest of
  the network is the identity only EOT is read: CTE(EOT) = 1, every other position 0.
The trace must show the transfer exactly at that layer, and nowhere earlier at later positions.
"""

from __future__ import annotations

import pytest
import torch

from interp.data.negation import align_pairs, load_existence_pairs
from interp.testing import build_negator_copy_encoder
from interp.data.scoring import text_target_directions
from interp.tracing import TraceSpec, build_runs, effects, patched_scores, reference_patched_scores

ATOL = 1e-5


@pytest.mark.parametrize("copy_layer", [1, 2])
@pytest.mark.parametrize("fast", [True, False], ids=["fast", "generic"])
def test_trace_finds_the_planted_copy_layer(copy_layer, fast):
    planted = build_negator_copy_encoder(n_layers=4, copy_layer=copy_layer)
    model = planted.model
    pairs = load_existence_pairs().pairs
    items, _ = align_pairs([pairs[i] for i in (0, 17, 260, 333)], model.tokenizer)
    with torch.no_grad():
        directions = text_target_directions(model([a.pair.negated for a in items]),
                                            model([a.pair.affirmative for a in items]))
    runs, per_item = build_runs(model, items, directions)
    result = patched_scores(model, runs, TraceSpec(model.cfg.n_layers), fast=fast)
    assert bool((result.source - result.base).abs().min() > 0.1), "the planted N-vs-A gap must be large"
    effect = effects(result, per_item)[0].cpu()
    transfer = copy_layer + 1  # the state after the copying block
    for k, item in enumerate(items):
        n, neg, eot = item.length, item.negator_pos, item.length - 1
        grid = effect[k, :, :n]
        later = grid[:, neg + 1:]
        # before the transfer: everything at the negator, nothing at later positions
        torch.testing.assert_close(grid[:transfer, neg], torch.ones(transfer, dtype=grid.dtype), atol=ATOL, rtol=0)
        assert later[:transfer].abs().max() <= ATOL, "no later position may carry the gap before the copy layer"
        # from the transfer on: nothing at the negator, everything at EOT, nothing elsewhere
        assert grid[transfer:, neg].abs().max() <= ATOL
        torch.testing.assert_close(grid[transfer:, eot], torch.ones(grid.shape[0] - transfer, dtype=grid.dtype),
                                   atol=ATOL, rtol=0)
        assert grid[transfer:, :eot].abs().max() <= ATOL
    oracle = effects(reference_patched_scores(model, runs, TraceSpec(model.cfg.n_layers)), 1)[0]
    torch.testing.assert_close(effect.double(), oracle, atol=ATOL, rtol=0, equal_nan=True)
