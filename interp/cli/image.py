"""``python -m interp.image --task existence --images DIR``: the image side of VALSE existence.

For each item (its image, caption and foil) it computes, on the hooked image tower:

- the direct-effect decomposition of the image embedding over (layer, head, position), MLPs,
  the embedding and the biases, scored along the caption-minus-foil direction;
- the total effect of each image head and MLP on d = S(caption) - S(foil) (zero/mean/resample ablation);
- causal tracing over (layer, position) cells (seeded Gaussian noise on the patch embeddings, or
  corrupted images with the same names from --corrupted-images);
- the bridge table: top text heads and top image heads on the same d.

It writes a run directory (config.json, CSV tables, seaborn figures, report.md). Every input is
checked, and every number computed, before anything is written. See docs/image.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from interp.cli.common import add_model_args, add_run_args, check_model_args, run_cli, setup_threads, torch_dtype
from interp.cli.validate import writable_out
from interp.errors import ClipInterpError
from interp.presets import PREPROCESS_PIPELINES

if TYPE_CHECKING:  # torch loads after the flags are checked, so --help stays instant
    import torch

log = logging.getLogger("interp.image")

TOOL = "image"
TASKS = ("existence",)
DEFAULT_LIMIT = 16
DEFAULT_TOP_HEADS = 4


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m interp.image",
        description="Image-side analyses of VALSE existence on CLIP's hooked image tower (decomposition, "
                    "head ablation, causal tracing, image-text bridge), with a report.",
    )
    parser.add_argument("--task", required=True, choices=TASKS, help="VALSE existence: each item's image vs its caption and foil")
    add_model_args(parser)
    data = parser.add_argument_group("data")
    data.add_argument("--images", required=True, metavar="DIR", help="folder of the items' images, named as VALSE's image_file")
    data.add_argument("--valse-dir", help="folder with VALSE's existence.json (default: the packaged copy)")
    data.add_argument("--preprocess", choices=PREPROCESS_PIPELINES,
                      help="image preprocessing: hf (CLIPImageProcessor, the negation study's) or open_clip "
                           "(default: the weights' source: hf for a Hugging Face CLIP, else open_clip)")
    data.add_argument("--limit", type=int, default=DEFAULT_LIMIT,
                      help=f"analyse the first N items whose image is in --images (default {DEFAULT_LIMIT})")
    analysis = parser.add_argument_group("analyses")
    analysis.add_argument("--ablation", choices=("zero", "mean", "resample"), default="zero",
                          help="image head/MLP ablation: zero (default), mean over the items' images, or resample (the next item's image)")
    analysis.add_argument("--corrupted-images", metavar="DIR",
                          help="tracing corrupts with these images (same file names) instead of Gaussian noise")
    analysis.add_argument("--noise-factor", type=float, default=3.0,
                          help="noise std in units of the std of the patch embeddings (default 3, as ROME)")
    analysis.add_argument("--top-heads", type=int, default=DEFAULT_TOP_HEADS,
                          help=f"heads per tower in the bridge table, and image heads with patch maps (default {DEFAULT_TOP_HEADS})")
    add_run_args(parser, out_help="run directory (default results/image/<model>/<--name or timestamp>/)", out_required=False)
    parser.add_argument("--name", help="name of the run directory under results/image/<model>/ (without --out)")
    parser.add_argument("--no-figures", action="store_true", help="skip the PNG figures (tables and report only)")
    return parser


def check_args(args: argparse.Namespace) -> None:
    """Refuse bad options before anything slow happens."""
    for flag, folder in (("--images", args.images), ("--corrupted-images", args.corrupted_images)):
        if folder is not None and not Path(folder).is_dir():
            raise ClipInterpError(f"{flag} {folder} is not a folder: pass the folder holding the images")
    if args.limit < 1:
        raise ClipInterpError(f"--limit {args.limit} must be at least 1")
    if args.top_heads < 1:
        raise ClipInterpError(f"--top-heads {args.top_heads} must be at least 1")
    if args.noise_factor <= 0:
        raise ClipInterpError(f"--noise-factor {args.noise_factor} must be positive")
    writable_out(args.out)
    check_model_args(args)


@dataclass
class Inputs:
    items: list  # ValseItem, the analysed ones
    images: torch.Tensor  # [item, 3, H, W]
    corrupted: torch.Tensor | None
    n_items_total: int
    n_without_image: int


def select_items(args: argparse.Namespace) -> tuple[list, int, int]:
    """The first --limit valid existence items whose image is in --images (checked before the model loads)."""
    from interp.data.valse import load_piece

    try:
        items = load_piece("existence", valid_only=True, data_dir=args.valse_dir)
    except (OSError, ValueError) as err:
        raise ClipInterpError(f"cannot load VALSE existence ({err}): pass --valse-dir DIR holding existence.json") from err
    folder = Path(args.images)
    present = [item for item in items if (folder / item.image_file).is_file()]
    if not present:
        examples = ", ".join(item.image_file for item in items[:3])
        raise ClipInterpError(
            f"none of the {len(items)} existence items' images (e.g. {examples}) is in {folder}: pass --images DIR "
            "holding the Visual7W images, named as VALSE's image_file"
        )
    chosen = present[: args.limit]
    if args.corrupted_images:
        corrupt_folder = Path(args.corrupted_images)
        missing = [item.image_file for item in chosen if not (corrupt_folder / item.image_file).is_file()]
        if missing:
            raise ClipInterpError(
                f"{len(missing)} corrupted images are missing under {corrupt_folder}, e.g. {', '.join(missing[:3])}: "
                "give one per analysed image, with the same name, or drop --corrupted-images for noise"
            )
    return chosen, len(items), len(items) - len(present)


def load_inputs(args: argparse.Namespace, selection: tuple[list, int, int], preprocess) -> Inputs:
    """Read and preprocess the chosen items' images (and corrupted images); a corrupt file is an error."""
    from interp.data.images import load_image_batch

    chosen, n_total, n_without = selection
    images = load_image_batch([Path(args.images) / item.image_file for item in chosen], preprocess)
    corrupted = None
    if args.corrupted_images:
        corrupted = load_image_batch([Path(args.corrupted_images) / item.image_file for item in chosen], preprocess)
    return Inputs(chosen, images, corrupted, n_total, n_without)


def image_pipeline(args: argparse.Namespace) -> str:
    """``--preprocess``, else the pipeline of the weights' source (a Hugging Face CLIP directory, as
    ``--model`` or ``--pretrained``, gets ``hf``; open_clip names, tags and checkpoints ``open_clip``)."""
    from interp.data.images import default_pipeline
    from interp.models.loading import resolve_pretrained

    if args.preprocess:
        return args.preprocess
    if default_pipeline(args.model) == "hf":
        return "hf"
    return default_pipeline(resolve_pretrained(args.model, args.pretrained))


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    check_args(args)
    setup_threads(args)
    from interp.models.clip import check_image_tower_name, load_clip

    check_image_tower_name(args.model)
    selection = select_items(args)
    pretrained = None if str(args.pretrained).lower() == "none" else args.pretrained
    clip = load_clip(args.model, pretrained, device=args.device, dtype=torch_dtype(args.dtype), seed=args.seed)
    clip.preprocess = dataclasses.replace(clip.preprocess, pipeline=image_pipeline(args))
    inputs = load_inputs(args, selection, clip.preprocess)
    from interp.cli.image_report import compute, open_run, write_outputs

    # The run directory opens once every input has been read; a one-shot run removes itself if
    # anything after this fails or is interrupted (interp.runs.rundir).
    with open_run(clip, inputs, args, argv=list(sys.argv[1:] if argv is None else argv)) as run:
        if run.complete:
            log.info("%s already holds this run (same settings): nothing to do", run.path)
            return 0
        results = compute(clip, inputs, args)
        written = write_outputs(clip, inputs, results, args, run)
        run.record(info={**run.config["info"], "checks": results.checks})
        run.finish()
    log.info("wrote %d files to %s", len(written), run.path)
    return 0


def cli(argv: Sequence[str] | None = None) -> int:
    """Entry point with the toolkit's error handling (one line on stderr, exit code 2)."""
    return run_cli(main, argv)
