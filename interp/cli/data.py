"""``python -m interp.data``: write the existence minimal-pair set and its token roles as tables.

Outputs (in ``--out``): ``counts.json`` (counts, model, tokenizer, versions), ``pairs.csv`` (one row
per minimal pair, with its token length under the model's tokenizer or the rejection reason),
``exclusions.csv`` (items outside the set, with reasons), ``roles.csv`` (one row per item and
position). Only the model's tokenizer is used; ``--pretrained none`` is enough (no weights needed).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

# Light imports only at module level (--help must not wait for torch or pandas).
from interp.cli.common import add_model_args, check_model_args, load_model_from_args, run_cli
from interp.cli.validate import UsageParser, writable_out
from interp.data.negation import align_pairs, load_existence_pairs, role_table

log = logging.getLogger(__name__)


def main(argv: Sequence[str] | None = None) -> int:
    parser = UsageParser(prog="python -m interp.data", description=__doc__.split("\n")[0])
    add_model_args(parser)
    parser.add_argument("--out", required=True, help="output folder for the tables")
    parser.add_argument("--data-dir", default=None, help="folder holding existence.json (default: lookup order, see docs/data.md)")
    parser.add_argument("--all-items", action="store_true", help="do not restrict to VALSE's valid set (mturk.caption >= 2)")
    args = parser.parse_args(argv)
    writable_out(args.out)
    check_model_args(args)
    import pandas as pd

    from interp.runs.rundir import atomic_write_text, package_versions, write_json

    result = load_existence_pairs(valid_only=not args.all_items, data_dir=args.data_dir)
    model = load_model_from_args(args)
    aligned, rejected = align_pairs(result.pairs, model.tokenizer)
    lengths = {a.pair.item_id: a.length for a in aligned}
    reasons = {r.pair.item_id: r.reason for r in rejected}
    pairs = pd.DataFrame([
        {**vars(p), "n_tokens": lengths.get(p.item_id), "rejected_reason": reasons.get(p.item_id, "")}
        for p in result.pairs
    ])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "pairs.csv", pairs.to_csv(index=False))
    atomic_write_text(out / "exclusions.csv", pd.DataFrame([vars(e) for e in result.exclusions],
                                                columns=["item_id", "reason"]).to_csv(index=False))
    atomic_write_text(out / "roles.csv", role_table(aligned).to_csv(index=False))
    meta = {
        "counts": {**result.counts, "aligned": len(aligned), "rejected": len(rejected)},
        "valid_only": not args.all_items,
        "model": model.cfg.model_name,
        "pretrained": str(model.cfg.pretrained),
        "tokenizer": getattr(model.tokenizer, "name", type(model.tokenizer).__name__),
        "versions": package_versions(),
    }
    write_json(meta, out / "counts.json")
    log.info("%d pairs (%d aligned, %d rejected), %d exclusions -> %s",
             len(result.pairs), len(aligned), len(rejected), len(result.exclusions), out)
    return 0


def cli(argv: Sequence[str] | None = None) -> int:
    """Entry point with the toolkit's error handling (one line on stderr, exit code 2)."""
    return run_cli(main, argv)
