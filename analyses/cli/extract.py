"""``python -m analyses.extract``: paired per-layer image/text embeddings from an open_clip model."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

# Light imports only at module level (--help must not wait for torch or open_clip).
from analyses.options import DEFAULT_EXTRACT_BATCH_SIZE
from interp.cli.common import run_cli
from interp.cli.validate import UsageError, UsageParser, at_least, writable_out

log = logging.getLogger("analyses.extract")


def main(argv: Sequence[str] | None = None) -> int:
    from interp.cli.common import add_model_args, check_device, torch_dtype

    p = UsageParser(prog="python -m analyses.extract", description=__doc__.split("\n")[0])
    p.add_argument("--images", required=True, help="folder holding the images named in --captions")
    p.add_argument("--captions", required=True, help="CSV/TSV with 'image' and 'caption' columns, one row per pair")
    p.add_argument("--out", required=True, help="folder for image.npz and text.npz")
    p.add_argument("--batch-size", type=int, default=DEFAULT_EXTRACT_BATCH_SIZE)
    add_model_args(p)
    args = p.parse_args(argv)
    at_least(args.batch_size, "--batch-size")
    if not Path(args.images).is_dir():
        raise UsageError(f"--images {args.images} is not a folder: pass the folder holding the images named in --captions")
    out = Path(args.out)
    if (out / "image.npz").exists() or (out / "text.npz").exists():
        raise UsageError(f"--out {out} already holds image.npz/text.npz: choose another --out or delete them")
    writable_out(out)
    check_device(args.device)
    from analyses.extract.pairs import extract_pairs, read_captions
    from analyses.io import save_embeddings

    images, captions = read_captions(args.captions)
    x, y = extract_pairs(args.model, args.pretrained, images, captions, images_dir=args.images, seed=args.seed,
                         device=args.device, dtype=torch_dtype(args.dtype), batch_size=args.batch_size)
    save_embeddings(out / "image.npz", x)
    save_embeddings(out / "text.npz", y)
    log.info("wrote %s and %s (%d pairs)", out / "image.npz", out / "text.npz", x.n)
    return 0


def cli(argv: Sequence[str] | None = None) -> int:
    """Entry point with the toolkit's error handling (one line on stderr, exit code 2)."""
    return run_cli(main, argv)
