"""``python -m analyses.extract``: paired per-layer image/text embeddings from an open_clip model.

Writes a run directory under the toolkit's run contract (:class:`interp.runs.rundir.RunDir`):
``image.npz`` and ``text.npz`` (the format of :mod:`analyses.io`, rows paired), ``pairs.csv`` (row,
image, caption), ``config.json`` and ``report.md``. The same settings again do nothing once the run is
complete; other settings are refused naming the difference.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
from pathlib import Path
from typing import Sequence

# Light imports only at module level (--help must not wait for torch or open_clip).
from analyses.options import DEFAULT_EXTRACT_BATCH_SIZE
from interp.cli.common import add_model_args, add_run_args, check_model_args, progress_enabled, run_cli, run_settings
from interp.cli.validate import UsageError, UsageParser, at_least, writable_out

log = logging.getLogger("analyses.extract")
TOOL = "analyses.extract"
MIN_PAIRS = 4  # the analyses need at least this many pairs (analyses.extract.pairs.read_captions)


NO_PRESET = "none"  # config.json "preset" of a command no seed paper defines

def build_parser() -> argparse.ArgumentParser:
    p = UsageParser(prog="python -m analyses.extract", description=__doc__.split("\n")[0])
    p.add_argument("--images", required=True, help="folder holding the images named in --captions")
    p.add_argument("--captions", required=True, help="CSV/TSV with 'image' and 'caption' columns, one row per pair")
    p.add_argument("--limit", type=int, help=f"keep only the first N pairs (at least {MIN_PAIRS})")
    p.add_argument("--batch-size", type=int, default=DEFAULT_EXTRACT_BATCH_SIZE,
                   help=f"images or captions per forward pass (default {DEFAULT_EXTRACT_BATCH_SIZE})")
    add_model_args(p)
    add_run_args(p, out_help="run directory for image.npz, text.npz and the report")
    return p


def _images_digest(paths: Sequence[Path]) -> str:
    """One digest over the names and bytes of the images used (their contents decide the embeddings)."""
    from interp.files import file_sha256

    digest = hashlib.sha256()
    for path in paths:
        digest.update(f"{path.name}\0{file_sha256(path)}\n".encode())
    return digest.hexdigest()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    at_least(args.batch_size, "--batch-size")
    at_least(args.limit, "--limit", MIN_PAIRS)
    if not Path(args.images).is_dir():
        raise UsageError(f"--images {args.images} is not a folder: pass the folder holding the images named in --captions")
    writable_out(args.out)
    check_model_args(args)
    import pandas as pd

    from analyses.extract.pairs import extract_pairs, read_captions
    from analyses.io import save_embeddings
    from interp.cli.common import setup_threads, torch_dtype
    from interp.data.images import check_image_files
    from interp.files import file_sha256
    from interp.models.loading import create_open_clip_model, weights_fingerprint
    from interp.runs.report import Report
    from interp.runs.rundir import RunDir

    images, captions = read_captions(args.captions)
    images, captions = images[: args.limit], captions[: args.limit]
    paths = check_image_files(args.images, list(dict.fromkeys(images)))  # every image present, before any folder
    setup_threads(args)
    clip = create_open_clip_model(args.model, args.pretrained, device=args.device, dtype=torch_dtype(args.dtype),
                                  seed=args.seed)
    fingerprint = weights_fingerprint(clip)
    # The inputs' contents decide the results, their paths do not.
    settings = {k: v for k, v in run_settings(args).items() if k not in ("images", "captions")}
    settings.update(weights_fingerprint=fingerprint, captions_sha256=file_sha256(args.captions),
                    images_sha256=_images_digest(paths),
                    # No seed paper fixes how these embeddings are made: there is no preset to follow,
                    # and images go through open_clip's own preprocessing (docs/fidelity.md).
                    preset=NO_PRESET, preprocess="open_clip")
    info = {"images": args.images, "captions": args.captions, "device": args.device,
            "threads": args.threads_chosen, "threads_reason": args.threads_reason}
    with RunDir(args.out, TOOL, settings, info, arguments=vars(args), overwrite=args.overwrite, resumable=False) as run:
        if run.complete:
            log.info("%s already holds this run (same settings): nothing to do", run.path)
            return 0
        x, y = extract_pairs(args.model, args.pretrained, images, captions, images_dir=args.images, seed=args.seed,
                             device=args.device, dtype=torch_dtype(args.dtype), batch_size=args.batch_size, clip=clip,
                             progress=progress_enabled(args))
        run.write_table(pd.DataFrame({"row": range(len(images)), "image": images, "caption": captions}), "pairs.csv")
        save_embeddings(run.file("image.npz"), x)
        save_embeddings(run.file("text.npz"), y)
        meta = x.meta
        random_weights = meta["pretrained"] is None
        Report("Paired image/text embeddings").bullets([
            f"Model `{meta['model']}`, weights {meta['pretrained'] or f'random init (seed {args.seed})'} "
            f"(fingerprint `{fingerprint[:16]}`), {meta['dtype']}."
            + (" **Random weights: analyses of these embeddings say nothing about CLIP.**" if random_weights else ""),
            f"{x.n} pairs ({meta['n_images']} distinct images) from `{args.captions}`"
            + (f" (first {args.limit}, --limit)" if args.limit else "") + f"; images from `{args.images}`.",
            f"`image.npz`: the projected image embedding [{x.n}, {x.embeddings.shape[1]}] and the CLS token after "
            f"each of {len(x.layers)} blocks; `text.npz`: the projected text embedding [{y.n}, {y.embeddings.shape[1]}] "
            f"and the pooled (EOT) residual of {len(y.layers)} states. Rows are paired; captions of one image form "
            "one alias group.",
            "Preset: none (no seed paper defines how these embeddings are extracted); images are preprocessed "
            "with open_clip's transform (see docs/fidelity.md).",
            "`pairs.csv`: row, image, caption. Next: `python -m analyses.alignment --x image.npz --y text.npz --out DIR`.",
        ]).write(run.file("report.md"))
        run.record(model={"name": args.model, "pretrained": meta["pretrained"], "weights_fingerprint": fingerprint},
                   counts={"pairs": x.n, "images": meta["n_images"]},
                   files=["image.npz", "text.npz", "pairs.csv", "report.md"])
        run.finish()
    log.info("wrote %s and %s (%d pairs)", run.file("image.npz"), run.file("text.npz"), x.n)
    return 0


def cli(argv: Sequence[str] | None = None) -> int:
    """Entry point with the toolkit's error handling (one line on stderr, exit code 2)."""
    return run_cli(main, argv)
