"""``python -m analyses.alignment``: the representation-similarity report for two paired embedding files.

    python -m analyses.alignment --x image.npz --y text.npz --out results/sim
    python -m analyses.alignment --synthetic 1000 --out results/sim-synthetic

Inputs are the .npz format of :mod:`analyses.io`; the output directory is described in
:mod:`analyses.cli.report`. Bad input ends the run with one line naming the input and the fix (exit 2).
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

from analyses.alignment.procrustes import CSLS_K
from analyses.assignment_map import AssignmentMapConfig
from analyses.io import load_embeddings
from analyses.cli.report import SECTIONS, ReportOptions, check_inputs, write_report
from analyses.validation import AnalysisInputError
from interp.cli.common import add_run_args, apply_threads, run_settings

log = logging.getLogger(__name__)
TOOL = "alignment"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m analyses.alignment", description=__doc__.split("\n\n")[0])
    src = p.add_argument_group("inputs")
    src.add_argument("--x", help="paired embeddings of space X (.npz with 'embeddings' [n, d]; see docs/analyses.md)")
    src.add_argument("--y", help="paired embeddings of space Y, same rows in the same order")
    src.add_argument("--synthetic", type=int, metavar="N", help="instead of --x/--y: N planted synthetic pairs")
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma list from {','.join(SECTIONS)} (default all)")
    p.add_argument("--seed", type=int, default=0, help="seed of every random draw (default 0)")
    p.add_argument("--permutations", type=int, default=100, help="shuffled pairings for the CKA baseline (default 100)")
    p.add_argument("--rbf-max-n", type=int, default=5000, help="skip RBF CKA above this many pairs (n x n kernels)")
    p.add_argument("--layer-kernels", default="linear", help="kernels of the layer CKA matrix: linear,rbf (default linear)")
    m = p.add_argument_group("matching (docs/analyses.md)")
    m.add_argument("--n-base", type=int, default=320, help="known base pairs (default 320)")
    m.add_argument("--n-query", type=int, default=500, help="query pairs to match (default 500)")
    m.add_argument("--match-seeds", default="0,1,2", help="comma list of split seeds (default 0,1,2)")
    m.add_argument("--qap-restarts", type=int, default=50, help="random FAQ restarts per seed (default 50; paper 500)")
    m.add_argument("--stretching", action="store_true", help="standardise each dimension first")
    m.add_argument("--base-selection", choices=("random", "kmeans"), default="random")
    m.add_argument("--match-kernel", choices=("linear", "rbf"), default="linear")
    a = p.add_argument_group("alignment and linear maps (docs/analyses.md)")
    a.add_argument("--folds", type=int, default=5, help="cross-validation folds (default 5)")
    a.add_argument("--csls-k", type=int, default=CSLS_K, help=f"CSLS neighbourhood (default {CSLS_K})")
    a.add_argument("--map-epochs", type=int, default=AssignmentMapConfig.epochs)
    a.add_argument("--map-min-steps", type=int, default=AssignmentMapConfig.min_steps,
                   help="extra epochs until this many optimizer steps (default %(default)s)")
    a.add_argument("--map-temperature", type=float, default=AssignmentMapConfig.temperature)
    p.add_argument("--debug", action="store_true", help="show full tracebacks and debug logs")
    add_run_args(p, out_help="run directory for the report")
    return p


def _int_list(text: str, flag: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError as err:
        raise AnalysisInputError(f"{flag} must be a comma list of integers, got {text!r}.") from err


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.synthetic is not None:
        if args.x or args.y:
            raise AnalysisInputError("pass either --synthetic N or --x/--y, not both.")
        from analyses.synthetic import synthetic_pair

        x, y = synthetic_pair(args.synthetic, seed=args.seed)
        sources = (f"synthetic({args.synthetic}, seed={args.seed})",) * 2
    else:
        if not (args.x and args.y):
            raise AnalysisInputError("pass --x A.npz and --y B.npz (paired embeddings), or --synthetic N.")
        x, y = load_embeddings(args.x, "--x"), load_embeddings(args.y, "--y")
        sources = (args.x, args.y)
    opts = ReportOptions(
        sections=tuple(s.strip() for s in args.sections.split(",") if s.strip()),
        seed=args.seed, permutations=args.permutations, rbf_max_n=args.rbf_max_n,
        layer_kernels=tuple(s.strip() for s in args.layer_kernels.split(",") if s.strip()),
        n_base=args.n_base, n_query=args.n_query, match_seeds=_int_list(args.match_seeds, "--match-seeds"),
        qap_restarts=args.qap_restarts, stretching=args.stretching, base_selection=args.base_selection,
        match_kernel=args.match_kernel, folds=args.folds, csls_k=args.csls_k,
        map_config=AssignmentMapConfig(epochs=args.map_epochs, min_steps=args.map_min_steps,
                                       temperature=args.map_temperature, seed=args.seed),
    )
    check_inputs(x, y, opts)
    apply_threads(args)
    from interp.runs.rundir import RunDir, file_sha256

    inputs = {"x_sha256": None, "y_sha256": None} if args.synthetic is not None else \
        {"x_sha256": file_sha256(args.x), "y_sha256": file_sha256(args.y)}
    with RunDir(args.out, TOOL, run_settings(args, **inputs), arguments=vars(args), overwrite=args.overwrite,
                resumable=False) as run:
        if run.complete:
            log.info("%s already holds this run (same settings): nothing to do", run.path)
            return 0
        write_report(x, y, run, opts, sources=sources)
        run.finish()
    log.info("wrote %s", run.path)
    return 0


def cli(argv: Sequence[str] | None = None) -> int:
    """Entry point with the toolkit's error handling (one line on stderr, exit code 2)."""
    from interp.cli.common import run_cli

    return run_cli(main, argv)
