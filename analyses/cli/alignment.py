"""``python -m analyses.alignment``: the representation-similarity report for two paired embedding files.

    python -m analyses.alignment --x image.npz --y text.npz --out results/sim
    python -m analyses.alignment --synthetic 1000 --out results/sim-synthetic

Inputs are the .npz format of :mod:`analyses.io`; the output is a run directory under the toolkit's
run contract (:class:`interp.runs.rundir.RunDir`), described in :mod:`analyses.cli.report`: each
section (and each matching seed) is kept when it finishes, so a rerun with the same settings resumes,
and other settings are refused naming the difference. Bad input ends the run with one line naming the
input and the fix (exit 2), before any folder is made.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

# Light imports only at module level (--help must not wait for numpy, scipy or torch).
from analyses.errors import AnalysisInputError
from analyses.options import BANDWIDTHS, CSLS_K, MAP_PRESETS, PROTOCOLS, SECTIONS, AssignmentMapConfig
from interp.cli.common import add_run_args, progress_enabled, run_settings
from interp.cli.validate import UsageParser, at_least, positive_number, writable_out

if TYPE_CHECKING:  # numpy loads after the flags are checked
    from analyses.io import EmbeddingSet

log = logging.getLogger(__name__)
TOOL = "analyses.alignment"


def build_parser() -> argparse.ArgumentParser:
    p = UsageParser(prog="python -m analyses.alignment", description=__doc__.split("\n\n")[0])
    src = p.add_argument_group("inputs")
    src.add_argument("--x", help="paired embeddings of space X (.npz with 'embeddings' [n, d]; see docs/analyses.md)")
    src.add_argument("--y", help="paired embeddings of space Y, same rows in the same order")
    src.add_argument("--synthetic", type=int, metavar="N", help="instead of --x/--y: N planted synthetic pairs")
    src.add_argument("--limit", type=int, help="analyse only the first N pairs")
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma list from {','.join(SECTIONS)} (default all)")
    p.add_argument("--seed", type=int, default=0, help="seed of every random draw (default 0)")
    p.add_argument("--permutations", type=int, default=100, help="shuffled pairings for the CKA baseline (default 100)")
    p.add_argument("--rbf-max-n", type=int, default=5000, help="skip RBF CKA above this many pairs (n x n kernels)")
    p.add_argument("--layer-kernels", default="linear", help="kernels of the layer CKA matrix: linear,rbf (default linear)")
    m = p.add_argument_group("matching (probes-spec C)")
    m.add_argument("--n-base", type=int, default=320, help="known base pairs (default 320)")
    m.add_argument("--n-query", type=int, default=500, help="query pairs to match (default 500)")
    m.add_argument("--match-seeds", default="0,1,2", help="comma list of split seeds (default 0,1,2)")
    m.add_argument("--qap-restarts", type=int, default=50, help="random FAQ restarts per seed (default 50; paper 500)")
    m.add_argument("--stretching", action="store_true", help="standardise each dimension first")
    m.add_argument("--base-selection", choices=("random", "kmeans"), default="random")
    m.add_argument("--match-kernel", choices=("linear", "rbf"), default="rbf",
                   help="graph kernel of QAP and local CKA (default rbf, seed 002's)")
    m.add_argument("--match-protocol", choices=PROTOCOLS, default="fixed_base",
                   help="fixed_base: one base set, queries redrawn per seed (seed 002's; default); redraw: both per seed")
    m.add_argument("--local-cka-bandwidth", choices=BANDWIDTHS, default="per_set",
                   help="RBF local CKA: per_set (each augmented set's median, exact; default) or shared (closed form, faster)")
    a = p.add_argument_group("alignment (probes-spec D) and maps (E)")
    a.add_argument("--folds", type=int, default=5, help="cross-validation folds (default 5)")
    a.add_argument("--csls-k", type=int, default=CSLS_K, help=f"CSLS neighbourhood (default {CSLS_K})")
    a.add_argument("--map-epochs", type=int, default=AssignmentMapConfig.epochs)
    a.add_argument("--map-min-steps", type=int, default=AssignmentMapConfig.min_steps,
                   help="extra epochs until this many optimizer steps (default %(default)s)")
    a.add_argument("--map-preset", choices=MAP_PRESETS, default="toolkit",
                   help="toolkit: the tuned settings (default); vlap: VLAP's released settings (temperature 0.01, "
                        "3 prior-weighted Sinkhorn iterations)")
    a.add_argument("--map-temperature", type=float, default=None,
                   help="override the preset's temperature (toolkit 0.05, vlap 0.01)")
    add_run_args(p, out_help="run directory of the report",
                 threads_help="torch CPU threads of the assignment-map training (default 1: its per-batch "
                              "operations are small); the numpy/scipy fits always run on one BLAS thread")
    p.add_argument("--debug", action="store_true", help="show full tracebacks and debug logs")
    return p


def _int_list(text: str, flag: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError as err:
        raise AnalysisInputError(f"{flag} must be a comma list of integers, got {text!r}.") from err


def check_args(args) -> None:
    """Every flag checked before any file is read, any analysis runs or any folder is made."""
    for flag, value, minimum in (("--synthetic", args.synthetic, 8), ("--permutations", args.permutations, 1),
                                 ("--rbf-max-n", args.rbf_max_n, 0), ("--n-base", args.n_base, 1),
                                 ("--n-query", args.n_query, 1), ("--qap-restarts", args.qap_restarts, 1),
                                 ("--folds", args.folds, 2), ("--csls-k", args.csls_k, 1),
                                 ("--map-epochs", args.map_epochs, 1), ("--map-min-steps", args.map_min_steps, 0),
                                 ("--limit", args.limit, 8), ("--threads", args.threads, 1)):
        at_least(value, flag, minimum)
    positive_number(args.map_temperature, "--map-temperature")
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    if not sections or set(sections) - set(SECTIONS):
        raise AnalysisInputError(f"--sections {args.sections!r}: unknown report section(s) {sorted(set(sections) - set(SECTIONS))}; "
                                 f"choose a comma list from {','.join(SECTIONS)}.")
    kernels = [s.strip() for s in args.layer_kernels.split(",") if s.strip()]
    if not kernels or set(kernels) - {"linear", "rbf"}:
        raise AnalysisInputError(f"--layer-kernels {args.layer_kernels!r}: choose linear, rbf or linear,rbf.")
    seeds = _int_list(args.match_seeds, "--match-seeds")
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise AnalysisInputError(f"--match-seeds {args.match_seeds!r} lists seed(s) {repeated} more than once: "
                                 "list each split seed once.")
    if args.synthetic is not None and (args.x or args.y):
        raise AnalysisInputError("pass either --synthetic N or --x/--y, not both.")
    if args.synthetic is None and not (args.x and args.y):
        raise AnalysisInputError("pass --x A.npz and --y B.npz (paired embeddings), or --synthetic N.")
    writable_out(args.out)


def _limited(data: EmbeddingSet, limit: int | None) -> EmbeddingSet:
    """The first ``limit`` rows of an :class:`analyses.io.EmbeddingSet` (every array cut alike)."""
    from dataclasses import replace

    if limit is None or limit >= data.n:
        return data
    cut = (lambda a: None if a is None else a[:limit])
    return replace(data, embeddings=data.embeddings[:limit], layers=[layer[:limit] for layer in data.layers],
                   keys=cut(data.keys), groups=cut(data.groups))


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    check_args(args)
    from analyses.cli.report import ReportOptions, check_inputs, write_report
    from analyses.io import load_embeddings
    from interp.files import file_sha256
    from interp.runs.rundir import RunDir

    if args.synthetic is not None:
        from analyses.synthetic import synthetic_pair

        x, y = synthetic_pair(args.synthetic, seed=args.seed)
        sources = (f"synthetic({args.synthetic}, seed={args.seed})",) * 2
    else:
        x, y = load_embeddings(args.x, "--x"), load_embeddings(args.y, "--y")
        sources = (args.x, args.y)
    x, y = _limited(x, args.limit), _limited(y, args.limit)
    map_overrides = {} if args.map_temperature is None else {"temperature": args.map_temperature}
    if args.threads is not None:
        map_overrides["threads"] = args.threads
    opts = ReportOptions(
        sections=tuple(s.strip() for s in args.sections.split(",") if s.strip()),
        seed=args.seed, permutations=args.permutations, rbf_max_n=args.rbf_max_n,
        layer_kernels=tuple(s.strip() for s in args.layer_kernels.split(",") if s.strip()),
        n_base=args.n_base, n_query=args.n_query, match_seeds=_int_list(args.match_seeds, "--match-seeds"),
        qap_restarts=args.qap_restarts, stretching=args.stretching, base_selection=args.base_selection,
        match_kernel=args.match_kernel, match_protocol=args.match_protocol,
        local_cka_bandwidth=args.local_cka_bandwidth, folds=args.folds, csls_k=args.csls_k,
        map_config=AssignmentMapConfig.from_preset(
            args.map_preset, epochs=args.map_epochs, min_steps=args.map_min_steps, seed=args.seed, **map_overrides),
    )
    check_inputs(x, y, opts)  # pairing and sizes: refused before any folder exists
    # The files' contents decide the results, their paths do not (moving a file keeps the run).
    settings = {k: v for k, v in run_settings(args).items() if k not in ("x", "y")}
    settings.update(x_sha256=args.x and file_sha256(args.x), y_sha256=args.y and file_sha256(args.y))
    info = {"x": args.x, "y": args.y, "threads": opts.map_config.threads,
            "threads_reason": "--threads" if args.threads is not None else "default: the map's operations are small"}
    with RunDir(args.out, TOOL, settings, info, arguments=vars(args), overwrite=args.overwrite, resumable=True) as run:
        log.info("run directory %s (%s)", run.path, "resuming" if run.resumed else "new")
        written = write_report(run, x, y, opts, sources=sources, progress=progress_enabled(args))
        run.finish()
    log.info("wrote %d files to %s", len(written), run.path)
    return 0


def cli(argv: Sequence[str] | None = None) -> int:
    """Entry point with the toolkit's error handling (one line on stderr, exit code 2)."""
    from interp.cli.common import run_cli

    return run_cli(main, argv)
