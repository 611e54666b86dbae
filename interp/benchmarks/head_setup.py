"""What the head benchmarks (``ablate``, ``atp``) share: the model, the VALSE existence sentences
and their text-target directions, loaded the same way for both."""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from interp.cli.common import load_model_from_args
from interp.data.negation import align_pairs, load_existence_pairs

if TYPE_CHECKING:
    import torch


@dataclass
class HeadBenchInputs:
    """The sentences of ``n_items`` pairs: ``batch`` holds the negated ones, then the affirmative
    ones (``2 * n_items`` rows); ``directions`` ``[2 * n_items, d_embed]`` is each item's text target,
    repeated for both sentences; ``heads`` every attention head of ``model``."""

    model: Any
    n_items: int
    n_rejected: int
    batch: Any
    directions: torch.Tensor
    heads: list


def head_bench_inputs(args: argparse.Namespace) -> HeadBenchInputs:
    """Set up logging and ``--threads``, load ``--model``, align the first ``--limit`` pairs."""
    import torch

    from interp.data.scoring import text_target_directions
    from interp.heads.ablation import all_heads
    from interp.heads.attention import batch_from_ids, pair_batches

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model_from_args(args).eval()
    aligned, rejected = align_pairs(load_existence_pairs().pairs[: args.limit], model.tokenizer)
    batch_n, batch_a = pair_batches(model, aligned)
    batch = batch_from_ids(model, [a.tokens_negated for a in aligned] + [a.tokens_affirmative for a in aligned])
    with torch.no_grad():
        target = text_target_directions(model(batch_n), model(batch_a))
    return HeadBenchInputs(model, len(aligned), len(rejected), batch, torch.cat([target, target]), all_heads(model))
