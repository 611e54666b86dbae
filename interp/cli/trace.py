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
from typing import TYPE_CHECKING, Any, Sequence

# Light imports only at module level (--help must not wait for torch); the work imports in main().
from interp.cli.common import add_model_args, add_run_args, load_model_from_args, progress_enabled, run_cli
from interp.cli.validate import UsageParser, at_least, positive_number, writable_out
from interp.data.negation import ROLES
from interp.data.segment_labels import SEGMENT_LABELS
from interp.errors import ClipInterpError
from interp.presets import PREPROCESS_PIPELINES, preset_record
from interp.runs.cluster import add_cluster_arg, check_cluster, model_recipe, open_executor
from interp.tracing.options import (
    DEFAULT_BUDGET_MB,
    DEFAULT_CHUNK_ITEMS,
    DEFAULT_NOISE_CALIBRATION,
    DEFAULT_NOISE_ROLES,
    DEFAULT_NOISE_SCALE,
    DEFAULT_SAMPLES,
    DIRECTIONS,
    MODES,
    NOISE_CALIBRATIONS,
)
from interp.tracing.spec import KINDS, TraceSpec

if TYPE_CHECKING:
    import numpy as np
    import torch

    from interp.runs.rundir import RunDir

log = logging.getLogger("interp.trace")

TOOL = "trace"
TASKS = ("existence",)


def build_parser() -> argparse.ArgumentParser:
    parser = UsageParser(
        prog="python -m interp.trace",
        description="Causal tracing of negation in a text encoder (Quantmeyer et al. 2024; see docs/tracing.md), with a report.",
    )
    parser.add_argument("--task", required=True, choices=TASKS, help="the tracing task (VALSE existence minimal pairs)")
    add_model_args(parser)
    target = parser.add_argument_group("target (one of)")
    target.add_argument("--images", metavar="DIR", help="folder of the items' images (embedded once, cached)")
    target.add_argument("--image-embeddings", metavar="FILE", help="precomputed image embeddings (.npz/.safetensors/.npy)")
    target.add_argument("--target", choices=("image", "text"), help="'text' traces the N-vs-A text gap (no images)")
    target.add_argument("--preprocess", choices=PREPROCESS_PIPELINES,
                        help="image preprocessing: hf (CLIPImageProcessor, the negation study's) or open_clip "
                             "(default: follows the weights' source, hf for a Hugging Face checkpoint)")
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
    tracing.add_argument("--method", choices=("exact", "atp"), default="exact",
                         help="exact: re-run every cell (default); atp: attribution patching, first-order estimates "
                              "from one backward pass per chunk (window 1 only)")
    tracing.add_argument("--atp-check", type=int, default=0, metavar="N",
                         help="with --method atp: re-run the first N items exactly and report AtP's fidelity "
                              "(Spearman, top-10 overlap per layer) in atp_fidelity.csv and the report")
    tracing.add_argument("--noise-scale", type=float, default=DEFAULT_NOISE_SCALE,
                         help=f"noise std in units of the token-embedding std (noise mode; default {DEFAULT_NOISE_SCALE})")
    tracing.add_argument("--samples", type=int, default=DEFAULT_SAMPLES, help=f"seeded noise draws per item (noise mode; default {DEFAULT_SAMPLES})")
    tracing.add_argument("--noise-roles", default=",".join(DEFAULT_NOISE_ROLES),
                         help=f"comma-separated roles whose token embeddings get noise (noise mode; from {', '.join(ROLES)})")
    tracing.add_argument("--noise-calibration", choices=NOISE_CALIBRATIONS, default=DEFAULT_NOISE_CALIBRATION,
                         help="embeddings whose std calibrates the noise: corrupted (the noised roles' tokens, ROME's rule; "
                              "default) or all_tokens (every token of both sentences)")
    add_run_args(parser, out_required=False,
                 out_help="run directory (default results/trace/<model>/<--name or timestamp>/)")
    run = parser.add_argument_group("run details")
    run.add_argument("--name", help="name of the run directory under results/trace/<model>/")
    run.add_argument("--batch-size", type=int, default=DEFAULT_CHUNK_ITEMS,
                     help=f"items traced together; a killed run loses at most this many (default {DEFAULT_CHUNK_ITEMS})")
    run.add_argument("--budget-mb", type=float, default=DEFAULT_BUDGET_MB, help=f"memory budget of one batch of cells (default {DEFAULT_BUDGET_MB})")
    run.add_argument("--no-figures", action="store_true", help="skip the PNG heatmaps (tables and report only)")
    add_cluster_arg(run)
    return parser


@dataclass
class Target:
    kind: str  # "image" or "text"
    source: str | None = None  # images folder or embeddings file
    settings: dict[str, Any] = field(default_factory=dict)


def check_target_args(args: argparse.Namespace) -> Target:
    """Validate the target and run options before anything slow happens (no folder is made yet)."""
    from interp.data.target_choice import IMAGE, check_target

    kind = check_target(args.images, args.image_embeddings, args.target, args.segment)
    at_least(args.limit, "--limit")
    at_least(args.batch_size, "--batch-size")
    at_least(args.window, "--window")
    positive_number(args.budget_mb, "--budget-mb")
    if args.preprocess and not args.images:
        raise ClipInterpError(f"--preprocess {args.preprocess} only applies to images read from --images DIR: "
                              "drop it, or pass --images")
    if args.mode != "noise" and args.noise_calibration != DEFAULT_NOISE_CALIBRATION:
        raise ClipInterpError(f"--noise-calibration {args.noise_calibration} only applies to --mode noise: drop it, "
                              "or pass --mode noise")
    if args.atp_check < 0 or (args.atp_check and args.method != "atp"):
        raise ClipInterpError(f"--atp-check {args.atp_check} needs --method atp and a count >= 0")
    if args.method == "atp" and args.window != 1:
        raise ClipInterpError(f"--method atp estimates one layer per cell: drop --window {args.window} (or use --method exact)")
    if args.mode == "noise":
        positive_number(args.noise_scale, "--noise-scale")
        at_least(args.samples, "--samples")
        roles = [r.strip() for r in args.noise_roles.split(",") if r.strip()]
        bad = [r for r in roles if r not in ROLES]
        if bad or not roles:
            raise ClipInterpError(f"--noise-roles {args.noise_roles!r}: choose a comma list from {', '.join(ROLES)}")
    if args.images and not Path(args.images).is_dir():
        raise ClipInterpError(f"--images {args.images} is not a folder: pass the folder holding the images, or --target text")
    if args.image_embeddings and not Path(args.image_embeddings).is_file():
        raise ClipInterpError(f"--image-embeddings {args.image_embeddings} does not exist: pass the embeddings file, or --target text")
    writable_out(args.out)
    check_cluster(args.cluster)  # a bad --cluster fails before anything is loaded or written
    return Target(kind, str(args.images or args.image_embeddings) if kind == IMAGE else None)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    target = check_target_args(args)
    from interp.data.existence import IMAGE, check_clip_like, clean_d, image_directions, image_embeddings
    from interp.data.existence import load_aligned, select_segment
    from interp.data.images import default_pipeline
    from interp.data.scoring import segments
    from interp.models.loading import resolve_pretrained, weights_fingerprint
    from interp.runs.rundir import RunDir, default_run_dir
    from interp.tracing.engine import uses_fast_path
    from interp.tracing.inputs import NoiseConfig
    from interp.tracing.noise import calibration_token_ids, embedding_std
    from interp.tracing.sweep import fixed_directions

    model = load_model_from_args(args)  # sets torch's threads (--threads or the automatic choice)
    if target.kind == IMAGE:
        check_clip_like(model, args.model)
    spec = TraceSpec(model.cfg.n_layers, args.kind, args.window)

    data = load_aligned(model.tokenizer, args.valse_dir, model_name=args.model)
    existence, aligned, rejected = data.loaded, data.aligned, data.rejected

    d_all: np.ndarray | None = None
    seg_all: np.ndarray | None = None
    if target.kind == IMAGE:
        if args.images:
            target.settings["preprocess"] = args.preprocess or default_pipeline(resolve_pretrained(args.model, args.pretrained))
        emb = image_embeddings(model, [a.pair.image_file for a in aligned], images=args.images,
                               image_embeddings=args.image_embeddings, model_name=args.model,
                               pretrained=args.pretrained, device=args.device, seed=args.seed,
                               progress=progress_enabled(args), preprocess=target.settings.get("preprocess"))
        dirs_all = image_directions(model, emb)
        d_all = clean_d(model, aligned, dirs_all)
        seg_all = segments(d_all)
        directions = fixed_directions(dirs_all)
        target.settings["image_embeddings_sha256"] = _tensor_digest(emb)  # the folder/file path is info only
    else:
        directions = None  # the text target: each chunk's task reads it from its own clean runs

    selected, _ = select_segment(aligned, d_all, args.segment)
    out_of_segment = sorted(set(range(len(aligned))) - set(selected))
    beyond_limit = selected[args.limit:] if args.limit is not None else []
    selected = selected[: args.limit] if args.limit is not None else selected

    noise = None
    noise_info: dict[str, Any] = {}
    if args.mode == "noise":
        roles = tuple(r.strip() for r in args.noise_roles.split(",") if r.strip())
        NoiseConfig(std=1.0, samples=args.samples, roles=roles, seed=args.seed)  # validates --noise-roles before they pick tokens
        std = embedding_std(model, calibration_token_ids(aligned, roles, args.noise_calibration))
        noise = NoiseConfig(std=args.noise_scale * std, samples=args.samples, roles=roles, seed=args.seed)
        noise_info = {"noise_scale": args.noise_scale, "embedding_std": std, "noise_std": noise.std,
                      "samples": args.samples, "noise_roles": list(roles), "noise_calibration": args.noise_calibration}

    settings = {
        "task": args.task, "model": args.model, "pretrained": model.cfg.pretrained,
        "weights_fingerprint": weights_fingerprint(model), "dtype": args.dtype, "seed": args.seed,
        "target": target.kind, **target.settings, "segment": args.segment, "mode": args.mode,
        "direction": args.direction, "kind": args.kind, "window": args.window, **noise_info,
        **({"method": "atp"} if args.method == "atp" else {}),  # exact runs keep their settings unchanged
        # Both set how runs and cells are batched, which changes the floats' last bits (~1e-6):
        # a resumed run must use the same values to be byte-identical to an uninterrupted one.
        "batch_size": args.batch_size, "budget_mb": args.budget_mb,
    }
    settings.update(preset_record({
        "negation_scoring": {k: target.settings[k] for k in ("preprocess",) if k in target.settings},
        "noise_tracing": {k: noise_info[k] for k in ("noise_calibration", "noise_scale") if k in noise_info},
    }))
    info = {"argv": list(sys.argv[1:] if argv is None else argv), "device": args.device, "limit": args.limit,
            "image_source": target.source, "threads": args.threads_chosen, "threads_reason": args.threads_reason,
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
    """Sweep the items not yet in ``run`` (in process or on a cluster) and write the tables,
    figures and report (and, for --method atp --atp-check N, the fidelity table)."""
    from interp.cli.trace_report import RunContext, write_outputs
    from interp.tracing.sweep import run_sweep, text_directions

    with open_executor(args.cluster, args.threads) as executor:
        stats = run_sweep(
            model, items, None if directions is None else lambda chunk, idx: directions(chunk, [selected[k] for k in idx]),
            run.items, spec, mode=args.mode, direction=args.direction, noise=noise,
            segments=None if seg_all is None else [seg_all[i] for i in selected],
            d_values=None if d_all is None else [float(d_all[i]) for i in selected],
            chunk_items=args.batch_size, budget_mb=args.budget_mb, progress=progress_enabled(args),
            method=args.method, executor=executor, recipe=model_recipe(args, model, settings["weights_fingerprint"]),
        )
    context = RunContext(
        model=model, args=args, spec=spec, target=target, counts=existence.counts,
        exclusions=[(e.item_id, e.reason) for e in existence.exclusions],
        rejected=[(r.pair.item_id, r.reason) for r in rejected],
        out_of_segment=[aligned[i].pair.item_id for i in out_of_segment],
        beyond_limit=[aligned[i].pair.item_id for i in beyond_limit],
        item_ids=[a.pair.item_id for a in items], stats=stats, settings=settings, noise_info=noise_info,
        d_all=d_all, sides_all=[a.pair.negation_side for a in aligned],
    )
    written = write_outputs(run, context, figures=not args.no_figures)
    if args.method == "atp" and args.atp_check:
        exact_directions = text_directions(model) if directions is None else directions  # None: the text target
        written.append(_atp_fidelity(run, model, items[: args.atp_check], exact_directions, selected, spec, args, noise))
    return stats, written


def _atp_fidelity(run: RunDir, model, items, directions, selected, spec, args, noise) -> Path:
    """Re-run the first items exactly; write atp_fidelity.csv and add it to the report."""
    from interp.files import atomic_write_text
    from interp.runs.report import markdown_table
    from interp.tracing.atp import atp_check

    table = atp_check(model, items, directions(items, selected[: len(items)]), spec, mode=args.mode,
                      direction=args.direction, noise=noise, budget_mb=args.budget_mb)
    path = run.write_table(table, "atp_fidelity.csv")
    section = (
        f"\n## AtP fidelity (--atp-check {len(items)})\n\n"
        f"The effects above are attribution-patching estimates (first order). The first {len(items)} items were "
        "re-run with the exact engine; per layer, Spearman correlation and top-10 overlap (by |effect|) of the "
        "estimated vs exact cell effects over every (item, position):\n\n" + markdown_table(table) + "\n"
    )
    report = run.path / "report.md"
    atomic_write_text(report, report.read_text() + section)
    return path


def _tensor_digest(tensor: torch.Tensor) -> str:
    import hashlib

    return hashlib.sha256(tensor.detach().float().cpu().contiguous().numpy().tobytes()).hexdigest()


def cli(argv: Sequence[str] | None = None) -> int:
    """Entry point with the toolkit's error handling (one line on stderr, exit code 2)."""
    return run_cli(main, argv)
