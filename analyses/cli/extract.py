"""``python -m analyses.extract``: paired per-layer image/text embeddings from an open_clip model.

Writes a run directory (the toolkit's run contract): ``config.json`` (arguments, model, versions),
``image.npz`` and ``text.npz`` (the paired embeddings :mod:`analyses.io` reads, inputs of
``python -m analyses.alignment``), ``pairs.csv`` (one row per pair) and ``report.md``.
"""

from __future__ import annotations

import argparse
import logging
from typing import Sequence

from analyses.extract.pairs import DEFAULT_BATCH_SIZE, read_captions
from interp.cli.common import add_model_args, add_run_args, apply_threads, check_positive, run_cli, run_settings

log = logging.getLogger("analyses.extract")
TOOL = "extract"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m analyses.extract", description=__doc__.split("\n")[0])
    p.add_argument("--images", required=True, help="folder holding the images named in --captions")
    p.add_argument("--captions", required=True, help="CSV/TSV with 'image' and 'caption' columns, one row per pair")
    p.add_argument("--limit", type=int, help="only the first N pairs of --captions")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE,
                   help=f"images or captions per forward pass (default {DEFAULT_BATCH_SIZE})")
    add_model_args(p)
    add_run_args(p, out_help="run directory for image.npz and text.npz")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    import pandas as pd

    from analyses.extract.pairs import extract_pairs
    from analyses.io import save_embeddings
    from interp.cli.common import DTYPES, check_device
    from interp.runs.report import Report
    from interp.runs.rundir import RunDir, file_sha256

    args = build_parser().parse_args(argv)
    check_positive(args.limit, "--limit")
    check_positive(args.batch_size, "--batch-size")
    check_device(args.device)
    apply_threads(args)
    images, captions = read_captions(args.captions)
    images, captions = images[: args.limit], captions[: args.limit]
    settings = run_settings(args, captions_sha256=file_sha256(args.captions))
    with RunDir(args.out, TOOL, settings, arguments=vars(args), overwrite=args.overwrite, resumable=False) as run:
        if run.complete:
            log.info("%s already holds this run (same settings): nothing to do", run.path)
            return 0
        x, y = extract_pairs(args.model, args.pretrained, images, captions, images_dir=args.images, seed=args.seed,
                             device=args.device, dtype=DTYPES[args.dtype], batch_size=args.batch_size)
        save_embeddings(run.file("image.npz"), x)
        save_embeddings(run.file("text.npz"), y)
        run.write_table(pd.DataFrame({"pair": range(len(images)), "image": images, "caption": captions}), "pairs.csv")
        run.record(model={"name": args.model, "pretrained": args.pretrained, "image": x.meta, "text": y.meta})
        Report("Paired embeddings").bullets([
            f"Model: `{args.model}`, weights: {x.meta.get('pretrained') or 'random init (seed %d)' % args.seed}.",
            f"{x.n} pairs (`pairs.csv`); image side: {len(x.layers)} layers + final embedding of size "
            f"{x.embeddings.shape[1]}; text side: {len(y.layers)} layers + final of size {y.embeddings.shape[1]}.",
            "Files: `image.npz`, `text.npz` (inputs of `python -m analyses.alignment --x image.npz --y text.npz`).",
        ]).write(run.file("report.md"))
        run.finish()
    log.info("wrote %s and %s (%d pairs)", run.file("image.npz"), run.file("text.npz"), x.n)
    return 0


def cli(argv: Sequence[str] | None = None) -> int:
    """Entry point with the toolkit's error handling (one line on stderr, exit code 2)."""
    return run_cli(main, argv)
