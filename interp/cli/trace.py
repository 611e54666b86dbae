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
from interp.cli.common import add_model_args, load_model_from_args, run_cli
from interp.cli.validate import UsageParser, at_least, positive_number, writable_out
from interp.data.negation import ROLES, align_pairs, load_existence_pairs
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

    from interp.data.negation import AlignedPair
    from interp.runs.rundir import RunDir

log = logging.getLogger("interp.trace")

TOOL = "trace"
TASKS = ("existence",)
_SCORE_BATCH = 64
TARGET_HELP = (
    "pass --images DIR (a folder holding the Visual7W images VALSE existence uses), "
    "--image-embeddings FILE (precomputed image embeddings of the same CLIP model), or --target text "
    "(no images: trace the N-versus-A text gap; accuracy and segments are then undefined)"
)


def build_parser() -> argparse.ArgumentParser:
    parser = UsageParser(
        prog="python -m interp.trace",
        description="Causal tracing of negation in a text encoder (negation-spec.md section 3), with a report.",
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
    run = parser.add_argument_group("run")
    run.add_argument("--out", help="run directory (default results/trace/<model>/<--name or timestamp>/); rerun to resume")
    run.add_argument("--name", help="name of the run directory under results/trace/<model>/")
    run.add_argument("--chunk-items", type=int, default=DEFAULT_CHUNK_ITEMS,
                     help=f"items traced together; a killed run loses at most this many (default {DEFAULT_CHUNK_ITEMS})")
    run.add_argument("--budget-mb", type=float, default=DEFAULT_BUDGET_MB, help=f"memory budget of one batch of cells (default {DEFAULT_BUDGET_MB})")
    run.add_argument("--threads", type=int, help="torch CPU threads (default: the physical cores, 1 when the load average says they are busy)")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument("--no-figures", action="store_true", help="skip the PNG heatmaps (tables and report only)")
    add_cluster_arg(run)
    return parser


@dataclass
class Target:
    kind: str  # "image" or "text"
    source: str | None = None  # images folder or embeddings file
    settings: dict[str, Any] = field(default_factory=dict)


def check_target_args(args: argparse.Namespace) -> Target:
    """Validate the target options before anything slow happens."""
    if args.images and args.image_embeddings:
        raise ClipInterpError("--images and --image-embeddings both given: pass one of them")
    has_images = bool(args.images or args.image_embeddings)
    if args.target == "text" and has_images:
        raise ClipInterpError("--target text ignores images, but images were given: drop --images/--image-embeddings or --target text")
    if not has_images and args.target != "text":
        raise ClipInterpError(f"no target: {TARGET_HELP}")
    if args.segment and not has_images:
        raise ClipInterpError(
            f"--segment {args.segment} needs images: segments come from the image score d = S(caption) - S(foil); "
            "pass --images DIR or --image-embeddings FILE, or drop --segment"
        )
    at_least(args.limit, "--limit")
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
    at_least(args.limit, "--limit")
    at_least(args.chunk_items, "--chunk-items")
    at_least(args.window, "--window")
    positive_number(args.budget_mb, "--budget-mb")
    if args.mode == "noise":
        positive_number(args.noise_scale, "--noise-scale")
        at_least(args.samples, "--samples")
        roles = [r.strip() for r in args.noise_roles.split(",") if r.strip()]
        bad = [r for r in roles if r not in ROLES]
        if bad or not roles:
            raise ClipInterpError(f"--noise-roles {args.noise_roles!r}: choose a comma list from {', '.join(ROLES)}")
    if args.image_embeddings and not Path(args.image_embeddings).is_file():
        raise ClipInterpError(f"--image-embeddings {args.image_embeddings} does not exist: pass the embeddings file, or --target text")
    writable_out(args.out)
    if args.images:
        if not Path(args.images).is_dir():
            raise ClipInterpError(f"--images {args.images} is not a folder: pass the folder holding the images, or --target text")
        return Target("image", str(args.images))
    if args.image_embeddings:
        return Target("image", str(args.image_embeddings))
    return Target("text")


def _check_clip_like(model, target: Target, model_name: str) -> None:
    import torch

    if target.kind != "image":
        return
    if model.cfg.tokenizer != "clip-bpe" or not bool(torch.isfinite(model.logit_scale)):
        raise ClipInterpError(
            f"--model {model_name} is not a CLIP text tower (no image tower, no shared image space or logit "
            "scale), so it cannot be scored against images: use --target text with it, or a CLIP model"
        )


def image_embeddings(args: argparse.Namespace, model, target: Target, files: list[str]) -> torch.Tensor:
    """Image embeddings ``[item, d_embed]`` from a folder (image tower, cached) or a precomputed file."""
    from interp.data.image_cache import embed_images, load_precomputed_embeddings
    from interp.data.images import ImageDataError, PreprocessConfig, default_pipeline

    try:
        if args.image_embeddings:
            emb = load_precomputed_embeddings(args.image_embeddings, files)
        else:
            from interp.models.loading import create_open_clip_model, resolve_pretrained

            checkpoint = resolve_pretrained(args.model, args.pretrained)
            full = create_open_clip_model(args.model, checkpoint, device=args.device, seed=args.seed)
            pipeline = args.preprocess or default_pipeline(checkpoint)
            target.settings["preprocess"] = pipeline
            emb = embed_images(full, args.model, checkpoint, args.images, files, device=args.device,
                               preprocess=PreprocessConfig.from_model(full, pipeline), progress=not args.no_progress)
    except ImageDataError as err:
        raise ClipInterpError(str(err)) from err
    if emb.shape[1] != model.cfg.d_embed:
        raise ClipInterpError(
            f"image embeddings have size {emb.shape[1]} but {args.model}'s text embeddings have {model.cfg.d_embed}: "
            "use image embeddings of the same CLIP model"
        )
    return emb.to(model.device, model.dtype)


def clean_d(model, items: Sequence[AlignedPair], directions: torch.Tensor) -> np.ndarray:
    """``d = S(caption) - S(foil)`` per item (fixed batches over the whole list: deterministic)."""
    import torch

    from interp.data.scoring import pairwise_d, score

    out = []
    with torch.no_grad():
        for start in range(0, len(items), _SCORE_BATCH):
            chunk = items[start:start + _SCORE_BATCH]
            dirs = directions[start:start + _SCORE_BATCH]
            s_caption = score(model([a.pair.caption for a in chunk]), dirs)
            s_foil = score(model([a.pair.foil for a in chunk]), dirs)
            out.append(pairwise_d(s_caption, s_foil).double().cpu())
    return torch.cat(out).numpy()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    target = check_target_args(args)
    import torch

    from interp.data.scoring import image_target_directions, segments
    from interp.models.loading import weights_fingerprint
    from interp.runs.rundir import RunDir, default_run_dir
    from interp.tracing.engine import uses_fast_path
    from interp.tracing.inputs import NoiseConfig
    from interp.tracing.noise import calibration_token_ids, embedding_std
    from interp.tracing.sweep import fixed_directions, run_sweep, text_directions

    check_cluster(args.cluster)  # a bad --cluster fails before anything is loaded or written
    model = load_model_from_args(args)  # sets torch's threads (--threads or the automatic choice)
    _check_clip_like(model, target, args.model)
    spec = TraceSpec(model.cfg.n_layers, args.kind, args.window)

    try:
        existence = load_existence_pairs(valid_only=True, data_dir=args.valse_dir)
    except (OSError, ValueError) as err:
        raise ClipInterpError(f"cannot load VALSE existence ({err}): pass --valse-dir DIR holding existence.json") from err
    aligned, rejected = align_pairs(existence.pairs, model.tokenizer)
    if not existence.pairs:
        raise ClipInterpError(f"VALSE existence{' in ' + args.valse_dir if args.valse_dir else ''} has no valid minimal pair "
                              f"({len(existence.exclusions)} items excluded, e.g. {existence.exclusions[0].reason if existence.exclusions else 'none'}): "
                              "pass --valse-dir DIR holding VALSE's existence.json")
    if not aligned:
        raise ClipInterpError(f"no item could be token-aligned with {args.model}'s tokenizer (first reason: {rejected[0].reason})")

    d_all: np.ndarray | None = None
    seg_all: np.ndarray | None = None
    if target.kind == "image":
        emb = image_embeddings(args, model, target, [a.pair.image_file for a in aligned])
        dirs_all = image_target_directions(emb, model.logit_scale)
        d_all = clean_d(model, aligned, dirs_all)
        seg_all = segments(d_all)
        directions = fixed_directions(dirs_all)
        target.settings["image_embeddings_sha256"] = _tensor_digest(emb)  # the folder/file path is info only
    else:
        directions = None  # the text target: each chunk's task computes it with its own model

    selected = list(range(len(aligned)))
    out_of_segment = []
    if args.segment:
        out_of_segment = [i for i in selected if seg_all[i] != args.segment]
        selected = [i for i in selected if seg_all[i] == args.segment]
        if not selected:
            raise ClipInterpError(f"no item falls in segment {args.segment!r} with this model and these images")
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
        "chunk_items": args.chunk_items, "budget_mb": args.budget_mb,
    }
    settings.update(preset_record({
        "negation_scoring": {k: target.settings[k] for k in ("preprocess",) if k in target.settings},
        "noise_tracing": {k: noise_info[k] for k in ("noise_calibration", "noise_scale") if k in noise_info},
    }))
    info = {"argv": list(sys.argv[1:] if argv is None else argv), "device": args.device, "limit": args.limit,
            "image_source": target.source,
            "threads": torch.get_num_threads(), "threads_reason": args.threads_reason,
            "fast_path": uses_fast_path(model), "args": vars(args)}
    out = Path(args.out) if args.out else default_run_dir(TOOL, args.model, args.name)
    run = RunDir(out, TOOL, settings, info)
    log.info("run directory %s (%s)", run.path, "resuming" if run.resumed else "new")

    items = [aligned[i] for i in selected]
    with open_executor(args.cluster, args.threads) as executor:
        stats = run_sweep(
            model, items, None if directions is None else lambda chunk, idx: directions(chunk, [selected[k] for k in idx]),
            run.items, spec, mode=args.mode, direction=args.direction, noise=noise,
            segments=None if seg_all is None else [seg_all[i] for i in selected],
            d_values=None if d_all is None else [float(d_all[i]) for i in selected],
            chunk_items=args.chunk_items, budget_mb=args.budget_mb, progress=not args.no_progress,
            method=args.method, executor=executor, recipe=model_recipe(args, model, settings["weights_fingerprint"]),
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
    written = write_outputs(run, context, figures=not args.no_figures)
    if args.method == "atp" and args.atp_check:
        exact_directions = text_directions(model) if directions is None else directions  # None: the text target
        written.append(_atp_fidelity(run, model, items[: args.atp_check], exact_directions, selected, spec, args, noise))
    log.info("wrote %d files to %s (%d items traced now, %d resumed) in %.1f s",
             len(written), run.path, stats.items_computed, stats.items_skipped, stats.seconds)
    return 0


def _atp_fidelity(run: RunDir, model, items, directions, selected, spec, args, noise) -> Path:
    """Re-run the first items exactly; write atp_fidelity.csv and add it to the report."""
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
    report.write_text(report.read_text() + section)
    return path


def _tensor_digest(tensor: torch.Tensor) -> str:
    import hashlib

    return hashlib.sha256(tensor.detach().float().cpu().contiguous().numpy().tobytes()).hexdigest()


def cli(argv: Sequence[str] | None = None) -> int:
    """Entry point with the toolkit's error handling (one line on stderr, exit code 2)."""
    return run_cli(main, argv)
