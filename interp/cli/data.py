"""``python -m interp.data``: write the existence minimal-pair set and its token roles as tables.

Outputs (in ``--out``, a run directory under the toolkit's run contract): ``config.json`` (arguments,
counts, model, tokenizer, versions), ``counts.json`` (the counts alone), ``pairs.csv`` (one row per
minimal pair, with its token length under the model's tokenizer or the rejection reason),
``exclusions.csv`` (items outside the set, with reasons), ``roles.csv`` (one row per item and
position), ``report.md``. Only the model's tokenizer is used; ``--pretrained none`` is enough (no weights needed).
"""

from __future__ import annotations

import argparse
import logging
from typing import Sequence

# Light imports only at module level (--help must not wait for torch or pandas).
from interp.cli.common import add_model_args, add_run_args, check_model_args, load_model_from_args, run_cli, run_settings
from interp.cli.validate import UsageParser, at_least, writable_out
from interp.presets import preset_record, preset_sentence

log = logging.getLogger(__name__)
TOOL = "data"


def build_parser() -> argparse.ArgumentParser:
    parser = UsageParser(prog="python -m interp.data", description=__doc__.split("\n")[0])
    add_model_args(parser)
    parser.add_argument("--valse-dir", default=None,
                        help="folder holding existence.json (default: lookup order, see docs/data.md)")
    parser.add_argument("--all-items", action="store_true", help="do not restrict to VALSE's valid set (mturk.caption >= 2)")
    parser.add_argument("--limit", type=int, help="keep only the first N minimal pairs")
    add_run_args(parser, out_help="run directory for the tables")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    at_least(args.limit, "--limit")
    writable_out(args.out)
    check_model_args(args)
    import pandas as pd

    from interp.data.negation import align_pairs, load_existence_pairs, role_table
    from interp.models.loading import weights_fingerprint
    from interp.runs.report import Report
    from interp.runs.rundir import RunDir

    result = load_existence_pairs(valid_only=not args.all_items, data_dir=args.valse_dir)
    model = load_model_from_args(args)
    pairs_kept = result.pairs[: args.limit]
    settings = run_settings(args, pretrained=str(model.cfg.pretrained), weights_fingerprint=weights_fingerprint(model))
    # This command scores nothing (no images, no weights used): its one paper setting is which items make the pairs.
    settings.update(preset_record({"negation_pairs": {"items": "all" if args.all_items else "valid"}}))
    with RunDir(args.out, TOOL, settings, arguments=vars(args), overwrite=args.overwrite, resumable=False) as run:
        if run.complete:
            log.info("%s already holds this run (same settings): nothing to do", run.path)
            return 0
        aligned, rejected = align_pairs(pairs_kept, model.tokenizer)
        lengths = {a.pair.item_id: a.length for a in aligned}
        reasons = {r.pair.item_id: r.reason for r in rejected}
        pairs = pd.DataFrame([
            {**vars(p), "n_tokens": lengths.get(p.item_id), "rejected_reason": reasons.get(p.item_id, "")}
            for p in pairs_kept
        ])
        counts = {**result.counts, "kept": len(pairs_kept), "aligned": len(aligned), "rejected": len(rejected)}
        run.write_table(pairs, "pairs.csv")
        run.write_table(pd.DataFrame([vars(e) for e in result.exclusions], columns=["item_id", "reason"]), "exclusions.csv")
        run.write_table(role_table(aligned), "roles.csv")
        run.write_json({"counts": counts, "valid_only": not args.all_items}, "counts.json")
        Report("VALSE existence minimal pairs").bullets([
            f"Tokenizer of `{model.cfg.model_name}` (weights are not used by this table).",
            f"{result.counts['raw']} items in the file, {result.counts['valid']} valid, "
            f"{result.counts['minimal_pairs']} minimal pairs; {len(pairs_kept)} kept"
            + (f" (--limit {args.limit})" if args.limit else "") + f", {len(aligned)} token-aligned, {len(rejected)} rejected.",
            "Tables: `pairs.csv` (one row per pair), `exclusions.csv` (items outside the set, with reasons), "
            "`roles.csv` (one row per item and position), `counts.json`.",
            preset_sentence(settings),
        ]).write(run.file("report.md"))
        run.record(counts=counts, model={"name": model.cfg.model_name, "pretrained": str(model.cfg.pretrained),
                                         "tokenizer": getattr(model.tokenizer, "name", type(model.tokenizer).__name__)})
        run.finish()
    log.info("%d pairs (%d aligned, %d rejected), %d exclusions -> %s",
             len(pairs_kept), len(aligned), len(rejected), len(result.exclusions), run.path)
    return 0


def cli(argv: Sequence[str] | None = None) -> int:
    """Entry point with the toolkit's error handling (one line on stderr, exit code 2)."""
    return run_cli(main, argv)
