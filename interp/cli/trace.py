"""``python -m interp.trace --task existence``: causal tracing of negation, resumable, with a report.

Examples::

    # the reference study's setup (needs the OpenAI weights and the Visual7W images)
    python -m interp.trace --task existence --images /data/v7w --segment correct
    # no images: the text target (N-versus-A gap); runs offline with the packaged MiniLM
    python -m interp.trace --task existence --model all-MiniLM-L6-v2 --target text
    # ROME-style noise tracing, 10 seeded draws of 3 x the embedding std on the negator
    python -m interp.trace --task existence --target text --mode noise --samples 10

See docs/tracing.md for every option, the output files and the error messages.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from interp.cli.common import add_model_args, add_run_args, apply_threads, check_positive
from interp.cli.common import load_model_from_args, progress_enabled, run_cli
from interp.data.existence import IMAGE, check_clip_like, check_target, clean_d, image_directions
from interp.data.existence import image_embeddings, load_aligned, select_segment
from interp.data.negation import ROLES
from interp.errors import ClipInterpError
from interp.models.loading import weights_fingerprint
from interp.runs.rundir import RunDir, default_run_dir
from interp.data.scoring import SEGMENT_LABELS, segments
from interp.tracing.engine import DEFAULT_BUDGET_MB, uses_fast_path
from interp.tracing.inputs import DIRECTIONS, MODES, NoiseConfig
from interp.tracing.noise import DEFAULT_NOISE_ROLES, DEFAULT_NOISE_SCALE, DEFAULT_SAMPLES, embedding_std
from interp.tracing.spec import KINDS, TraceSpec
from interp.tracing.sweep import DEFAULT_CHUNK_ITEMS, fixed_directions, run_sweep, text_directions

log = logging.getLogger("interp.trace")

TOOL = "trace"
TASKS = ("existence",)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m interp.trace",
        description="Causal tracing of negation in a text encoder (Quantmeyer et al. 2024; see docs/tracing.md), with a report.",
    )
    parser.add_argument("--task", required=True, choices=TASKS, help="the tracing task (VALSE existence minimal pairs)")
    add_model_args(parser)
    target = parser.add_argument_group("target (one of)")
    target.add_argument("--images", metavar="DIR", help="folder of the items' images (embedded once, cached)")
    target.add_argument("--image-embeddings", metavar="FILE", help="precomputed image embeddings (.npz/.safetensors/.npy)")
    target.add_argument("--target", choices=("image", "text"), help="'text' traces the N-vs-A text gap (no images)")
    items = parser.add_argument_group("items")
    items.add_argument("--segment", choices=SEGMENT_LABELS, help="only items of this segment (needs images)")
    items.add_argument("--limit", type=int, help="trace only the first N items (after --segment)")
    items.add_argument("--valse-dir", help="folder with VALSE's existence.json (default: the packaged copy)")
    tracing = parser.add_argument_group("tracing")
    tracing.add_argument("--mode", choices=MODES, default="patch",
                         help="patch: the reference study's activation patching (default); noise: ROME's Gaussian corruption")
    tracing.add_argument("--direction", choices=DIRECTIONS, default="denoise",
                         help="denoise: patch N (or the clean run) into A (or the corrupted run) (default); noise: the reverse")
    tracing.add_argument("--kind", choices=KINDS, default="resid", help="patched state: residual (default), attention or MLP output")
    tracing.add_argument("--window", type=int, default=1, help="layers patched per cell, centred as in ROME (default 1)")
    tracing.add_argument("--noise-scale", type=float, default=DEFAULT_NOISE_SCALE,
                         help=f"noise std in units of the token-embedding std (noise mode; default {DEFAULT_NOISE_SCALE})")
    tracing.add_argument("--samples", type=int, default=DEFAULT_SAMPLES, help=f"seeded noise draws per item (noise mode; default {DEFAULT_SAMPLES})")
    tracing.add_argument("--noise-roles", default=",".join(DEFAULT_NOISE_ROLES),
                         help=f"comma-separated roles whose token embeddings get noise (noise mode; from {', '.join(ROLES)})")
    add_run_args(parser, out_required=False,
                 out_help="run directory (default results/trace/<model>/<--name or timestamp>/)")
    run = parser.add_argument_group("run details")
    run.add_argument("--name", help="name of the run directory under results/trace/<model>/")
    run.add_argument("--batch-size", type=int, default=DEFAULT_CHUNK_ITEMS,
                     help=f"items traced together; a killed run loses at most this many (default {DEFAULT_CHUNK_ITEMS})")
    run.add_argument("--budget-mb", type=float, default=DEFAULT_BUDGET_MB, help=f"memory budget of one batch of cells (default {DEFAULT_BUDGET_MB})")
    run.add_argument("--no-figures", action="store_true", help="skip the PNG heatmaps (tables and report only)")
    return parser


@dataclass
class Target:
    kind: str  # "image" or "text"
    source: str | None = None  # images folder or embeddings file
    settings: dict[str, Any] = field(default_factory=dict)


def check_target_args(args: argparse.Namespace) -> Target:
    """Validate the target and run options before anything slow happens."""
    kind = check_target(args.images, args.image_embeddings, args.target, args.segment)
    check_positive(args.limit, "--limit")
    check_positive(args.batch_size, "--batch-size")
    if args.mode == "noise" and args.noise_scale <= 0:
        raise ClipInterpError(f"--noise-scale {args.noise_scale} must be positive")
    return Target(kind, str(args.images or args.image_embeddings) if kind == IMAGE else None)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    target = check_target_args(args)
    threads = apply_threads(args)
    model = load_model_from_args(args)
    if target.kind == IMAGE:
        check_clip_like(model, args.model)
    spec = TraceSpec(model.cfg.n_layers, args.kind, args.window)

    data = load_aligned(model.tokenizer, args.valse_dir, model_name=args.model)
    existence, aligned, rejected = data.loaded, data.aligned, data.rejected

    d_all: np.ndarray | None = None
    seg_all: np.ndarray | None = None
    if target.kind == IMAGE:
        emb = image_embeddings(model, [a.pair.image_file for a in aligned], images=args.images,
                               image_embeddings=args.image_embeddings, model_name=args.model,
                               pretrained=args.pretrained, device=args.device, seed=args.seed,
                               progress=progress_enabled(args))
        dirs_all = image_directions(model, emb)
        d_all = clean_d(model, aligned, dirs_all)
        seg_all = segments(d_all)
        directions = fixed_directions(dirs_all)
        target.settings = {"image_embeddings_sha256": _tensor_digest(emb)}  # the folder/file path is info only
    else:
        directions = text_directions(model)

    selected, _ = select_segment(aligned, d_all, args.segment)
    out_of_segment = sorted(set(range(len(aligned))) - set(selected))
    beyond_limit = selected[args.limit:] if args.limit is not None else []
    selected = selected[: args.limit] if args.limit is not None else selected

    noise = None
    noise_info: dict[str, Any] = {}
    if args.mode == "noise":
        roles = tuple(r.strip() for r in args.noise_roles.split(",") if r.strip())
        std = embedding_std(model, [t for a in aligned for t in (a.tokens_negated, a.tokens_affirmative)])
        noise = NoiseConfig(std=args.noise_scale * std, samples=args.samples, roles=roles, seed=args.seed)
        noise_info = {"noise_scale": args.noise_scale, "embedding_std": std, "noise_std": noise.std,
                      "samples": args.samples, "noise_roles": list(roles)}

    settings = {
        "task": args.task, "model": args.model, "pretrained": model.cfg.pretrained,
        "weights_fingerprint": weights_fingerprint(model), "dtype": args.dtype, "seed": args.seed,
        "target": target.kind, **target.settings, "segment": args.segment, "mode": args.mode,
        "direction": args.direction, "kind": args.kind, "window": args.window, **noise_info,
    }
    info = {"argv": list(sys.argv[1:] if argv is None else argv), "device": args.device, "limit": args.limit,
            "image_source": target.source,
            "batch_size": args.batch_size, "budget_mb": args.budget_mb, "threads": threads,
            "fast_path": uses_fast_path(model)}
    out = Path(args.out) if args.out else default_run_dir(TOOL, args.model, args.name)
    items = [aligned[i] for i in selected]
    with RunDir(out, TOOL, settings, info, arguments=vars(args), overwrite=args.overwrite, resumable=True) as run:
        log.info("run directory %s (%s)", run.path, "resuming" if run.resumed else "new")
        stats, written = _trace_into(run, args, model, spec, target, existence, aligned, rejected, selected,
                                     out_of_segment, beyond_limit, items, directions, noise, noise_info,
                                     settings, d_all, seg_all)
        run.finish()
    log.info("wrote %d files to %s (%d items traced now, %d resumed) in %.1f s",
             len(written), run.path, stats.items_computed, stats.items_skipped, stats.seconds)
    return 0


def _trace_into(run, args, model, spec, target, existence, aligned, rejected, selected, out_of_segment,
                beyond_limit, items, directions, noise, noise_info, settings, d_all, seg_all):
    """Sweep the items not yet in ``run`` and write the tables, figures and report."""
    stats = run_sweep(
        model, items, lambda chunk, idx: directions(chunk, [selected[k] for k in idx]), run.items, spec,
        mode=args.mode, direction=args.direction, noise=noise,
        segments=None if seg_all is None else [seg_all[i] for i in selected],
        d_values=None if d_all is None else [float(d_all[i]) for i in selected],
        chunk_items=args.batch_size, budget_mb=args.budget_mb, progress=progress_enabled(args),
    )
    from interp.cli.trace_report import RunContext, write_outputs

    context = RunContext(
        model=model, args=args, spec=spec, target=target, counts=existence.counts,
        exclusions=[(e.item_id, e.reason) for e in existence.exclusions],
        rejected=[(r.pair.item_id, r.reason) for r in rejected],
        out_of_segment=[aligned[i].pair.item_id for i in out_of_segment],
        beyond_limit=[aligned[i].pair.item_id for i in beyond_limit],
        item_ids=[a.pair.item_id for a in items], stats=stats, settings=settings, noise_info=noise_info,
        d_all=d_all, sides_all=[a.pair.negation_side for a in aligned],
    )
    return stats, write_outputs(run, context, figures=not args.no_figures)


def _tensor_digest(tensor: torch.Tensor) -> str:
    import hashlib

    return hashlib.sha256(tensor.detach().float().cpu().contiguous().numpy().tobytes()).hexdigest()


def cli(argv: Sequence[str] | None = None) -> int:
    """Entry point with the toolkit's error handling (one line on stderr, exit code 2)."""
    return run_cli(main, argv)
