"""Attribution patching vs exact mean ablation of every head: fidelity and speed, one process.

``python -m interp.bench atp`` (defaults: the offline MiniLM weights, all heads, all 490 VALSE
existence pairs = 980 sentences, mean ablation of z per position over all sentences, text target).
Both sides score the same sentences with the same means: the exact engine
(:func:`interp.heads.ablation.ablation_scores`, one restarted forward per head x sentence chunk)
and AtP (:func:`interp.heads.atp.atp_ablation_scores`, one forward + one backward per chunk).
An item's effect is the ablation's change of the N-minus-A score gap, as ``interp.ablate`` reports
it. Printed: wall and CPU time of each side and their ratio, then Spearman correlation and top-10
overlap of AtP against exact, over heads (effects averaged over items), per layer, and over all
(head, item) cells.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

import pandas as pd
import torch

from interp.benchmarks.head_setup import head_bench_inputs
from interp.cli.common import add_model_args
from interp.heads.ablation import ablation_scores, reference_means
from interp.heads.atp import atp_ablation_scores, fidelity, spearman, top_k_overlap

log = logging.getLogger(__name__)


def item_effects(result, components, n_items: int) -> pd.DataFrame:
    """One row per (component, item): change of the N-minus-A gap when the component is ablated."""
    clean = result.clean[:n_items] - result.clean[n_items:]
    ablated = result.ablated[:, :n_items] - result.ablated[:, n_items:]
    effect = (ablated - clean).numpy()
    return pd.DataFrame([
        {"component": comp.label, "layer": comp.layer, "head": comp.head, "item": i, "effect": float(effect[c, i])}
        for c, comp in enumerate(components) for i in range(n_items)
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m interp.bench atp", description=__doc__.splitlines()[0])
    add_model_args(parser)
    parser.set_defaults(model="all-MiniLM-L6-v2", pretrained="default")
    parser.add_argument("--limit", type=int, default=None, help="first N pairs only (default all 490)")
    parser.add_argument("--sentence-batch", type=int, default=64, help="sentences per chunk (default 64)")
    parser.add_argument("--top-k", type=int, default=10, help="k of the top-k overlap (default 10)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default torch's)")
    parser.add_argument("--csv", default=None, help="also write the per-(head, item) effects of both sides here")
    args = parser.parse_args(argv)
    inputs = head_bench_inputs(args)
    model, batch, directions, heads, n = inputs.model, inputs.batch, inputs.directions, inputs.heads, inputs.n_items
    means = reference_means(model, batch, heads, batch_size=args.sentence_batch)

    t0, c0 = time.perf_counter(), time.process_time()
    exact = ablation_scores(model, batch, directions, heads, "mean", means=means,
                            sentence_batch=args.sentence_batch, progress=False)
    t_exact, c_exact = time.perf_counter() - t0, time.process_time() - c0
    t0, c0 = time.perf_counter(), time.process_time()
    estimate = atp_ablation_scores(model, batch, heads, "mean", directions=directions, means=means,
                                   sentence_batch=args.sentence_batch)
    t_atp, c_atp = time.perf_counter() - t0, time.process_time() - c0

    exact_rows, atp_rows = item_effects(exact, heads, n), item_effects(estimate, heads, n)
    if args.csv:
        both = exact_rows.rename(columns={"effect": "exact"}).assign(atp=atp_rows["effect"].to_numpy())
        both.to_csv(args.csv, index=False)
    table = fidelity(atp_rows, exact_rows, k=args.top_k)
    cells_rho = spearman(atp_rows["effect"], exact_rows["effect"])
    cells_top = top_k_overlap(atp_rows["effect"], exact_rows["effect"], args.top_k)
    c = model.cfg
    lines = [
        f"model {c.model_name} ({c.pretrained}), {c.n_layers} layers x {c.n_heads} heads = {len(heads)} heads; "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads",
        f"items {n} pairs ({inputs.n_rejected} rejected) = {len(batch)} sentences; mean ablation of z "
        f"(per-position mean over all {len(batch)} sentences); text target; effect = change of S(N) - S(A)",
        "                                   wall s     CPU s (process time)",
        f"exact engine, all {len(heads)} heads:     {t_exact:9.1f} {c_exact:9.1f}",
        f"AtP, all {len(heads)} heads:              {t_atp:9.1f} {c_atp:9.1f}",
        f"speed-up AtP vs exact:            {t_exact / t_atp:9.1f}x {c_exact / c_atp:8.1f}x",
        f"clean scores, max |AtP - exact|: {float((estimate.clean - exact.clean).abs().max()):.2e}",
        f"fidelity over heads (effect averaged over the {n} items), top-{args.top_k} by |effect|:",
        table.to_string(index=False, float_format=lambda v: f"{v:.3f}"),
        f"over all {len(atp_rows)} (head, item) cells: Spearman {cells_rho:.3f}, top-{args.top_k} overlap {cells_top:.2f}",
    ]
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
