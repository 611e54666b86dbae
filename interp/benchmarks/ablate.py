"""Head-importance benchmark: the batched ablation engine against a per-head loop, same items.

``python -m interp.bench ablate`` (defaults: a random-init ViT-B-32 text tower, all heads, all
490 VALSE existence pairs = 980 sentences, mean ablation over all sentences, text target). The
loop baseline runs one full forward of all sentences per head (batched over sentences, the same
length-sorted chunks, a hook replacing that head's z): what a user writes without the engine.
``--loop-heads K`` times the loop on the first K heads only and scales its time to all heads
(stated in the output). Both sides' scores are compared on the heads both ran.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from typing import TYPE_CHECKING

# Light imports only at module level (--help must not wait for torch); the work imports in main().
from interp.benchmarks.head_setup import head_bench_inputs
from interp.cli.common import add_model_args

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


def per_head_loop(model, batch, directions, heads, means, sentence_batch: int) -> torch.Tensor:
    """Per head: a full forward of every chunk with that head mean-ablated. ``[head, sentence]``."""
    import torch

    from interp.data.scoring import score

    out = torch.zeros(len(heads), len(batch))
    order = torch.argsort(batch.lengths, stable=True)
    for row, comp in enumerate(heads):
        mean = means[comp][0]
        for start in range(0, len(batch), sentence_batch):
            idx = order[start:start + sentence_batch]
            sub = batch[idx]
            width = int(sub.lengths.max())
            sub = type(sub)(sub.tokens[:, :width], sub.attention_mask[:, :width], sub.pool_index,
                            sub.token_type_ids[:, :width], sub.texts)
            keep = sub.attention_mask[:, :, None]

            def hook(z, hook=None, mean=mean[:width], keep=keep, h=comp.head):
                z = z.clone()
                z[:, :, h] = torch.where(keep, mean[None], z[:, :, h])
                return z

            emb = model.run_with_hooks(sub, fwd_hooks=[(comp.hook_name("z"), hook)])
            out[row, idx] = score(emb, directions[idx])
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m interp.bench ablate", description=__doc__.splitlines()[0])
    add_model_args(parser)
    parser.set_defaults(model="ViT-B-32", pretrained="none")
    parser.add_argument("--limit", type=int, default=None, help="first N pairs only (default all 490)")
    parser.add_argument("--loop-heads", type=int, default=None, help="time the per-head loop on the first K heads only and scale")
    parser.add_argument("--sentence-batch", type=int, default=64, help="sentences per chunk (default 64)")
    parser.add_argument("--max-rows", type=int, default=64, help="rows per packed restarted pass (default 64: larger packs were slower on CPU)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default torch's)")
    args = parser.parse_args(argv)
    import torch

    from interp.heads.ablation import ablation_scores, reference_means

    torch.set_grad_enabled(False)  # a benchmark never needs autograd
    inputs = head_bench_inputs(args)
    model, batch, directions, heads = inputs.model, inputs.batch, inputs.directions, inputs.heads
    t0, c0 = time.perf_counter(), time.process_time()
    means = reference_means(model, batch, heads, batch_size=args.sentence_batch)
    t_means, c_means = time.perf_counter() - t0, time.process_time() - c0
    t0, c0 = time.perf_counter(), time.process_time()
    fast = ablation_scores(model, batch, directions, heads, "mean", means=means,
                           sentence_batch=args.sentence_batch, max_rows=args.max_rows, progress=False)
    t_fast, c_fast = time.perf_counter() - t0, time.process_time() - c0
    loop_heads = heads[: args.loop_heads] if args.loop_heads else heads
    t0, c0 = time.perf_counter(), time.process_time()
    slow = per_head_loop(model, batch, directions, loop_heads, means, args.sentence_batch)
    t_loop, c_loop = time.perf_counter() - t0, time.process_time() - c0
    scale = len(heads) / len(loop_heads)
    diff = float((fast.ablated[: len(loop_heads)] - slow).abs().max())
    c = model.cfg
    lines = [
        f"model {c.model_name} ({c.pretrained}), {c.n_layers} layers x {c.n_heads} heads = {len(heads)} heads, "
        f"d_model {c.d_model}; torch {torch.__version__}, {torch.get_num_threads()} threads",
        f"items {inputs.n_items} pairs ({inputs.n_rejected} rejected) = {len(batch)} sentences; mean ablation of z "
        f"(per-position mean over all {len(batch)} sentences); text target",
        f"engine: sentence chunks of {args.sentence_batch}, packs of <= {args.max_rows} rows",
        "                                         wall s     CPU s (process time)",
        f"reference means (one clean pass):     {t_means:9.1f} {c_means:9.1f}",
        f"batched engine, all {len(heads)} heads:         {t_fast:9.1f} {c_fast:9.1f}",
        f"per-head loop, {len(loop_heads)} heads:            {t_loop:9.1f} {c_loop:9.1f}"
        + (f"   (x {scale:.0f} for {len(heads)} heads: {t_loop * scale:.1f} / {c_loop * scale:.1f})" if scale != 1 else ""),
        f"speed-up engine vs loop, all heads:   {t_loop * scale / t_fast:9.2f}x {c_loop * scale / c_fast:8.2f}x",
        f"max |engine - loop| score on {len(loop_heads)} heads x {len(batch)} sentences: {diff:.2e}",
    ]
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
