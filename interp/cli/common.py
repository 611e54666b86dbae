"""What every command-line tool of the toolkit shares: how a model is named, how errors end a run.

Every CLI takes the model the same way: ``--model NAME --pretrained TAG|PATH|none`` (``none`` =
random init, seeded by ``--seed``), plus ``--device`` and ``--dtype``. Expected failures
(:class:`interp.errors.ClipInterpError`) end the run with one line on stderr and exit code 2, never
a multi-page traceback; ``--debug`` shows the traceback.

Every command also shares the run flags (:func:`add_run_args`): ``--out`` and ``--overwrite`` (the run
contract of :class:`interp.runs.rundir.RunDir`), ``--threads``, ``--no-progress`` (progress bars are
also off whenever stderr is not a terminal), and uses the same names for the same things:
``--valse-dir``, ``--batch-size``, ``--limit``, ``--seed``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any, Callable, Sequence

# Only light imports here: every command's parser is built from this module, and --help must not
# wait for torch (the loaders import it when a model is built).
from interp.cli.validate import UsageParser  # noqa: F401 - re-exported for the CLIs
from interp.errors import ClipInterpError
from interp.models.names import DEFAULT_MODEL, DEFAULT_PRETRAINED, DTYPE_NAMES

EXIT_USER_ERROR = 2


def torch_dtype(name: str):
    """The torch dtype ``--dtype NAME`` names (one of :data:`DTYPE_NAMES`)."""
    import torch

    return getattr(torch, name)


def __getattr__(name: str) -> Any:
    # ``DTYPES`` (name -> torch dtype) is built on first use, so importing this module stays light.
    if name == "DTYPES":
        return {n: torch_dtype(n) for n in DTYPE_NAMES}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def add_model_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument("--model", default=DEFAULT_MODEL,
                       help=f"open_clip model name, 'tiny', 'all-MiniLM-L6-v2', or a Hugging Face CLIP directory (default {DEFAULT_MODEL})")
    group.add_argument("--pretrained", default=DEFAULT_PRETRAINED,
                       help="open_clip tag, checkpoint file, Hugging Face directory, 'none' for random init, or 'default': the model's reference weights (openai for open_clip models, packaged weights for all-MiniLM-L6-v2, random for tiny)")
    group.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default cpu)")
    group.add_argument("--dtype", default="float32", choices=sorted(DTYPE_NAMES), help="precision of the encoder (default float32)")
    group.add_argument("--seed", type=int, default=0, help="seed of random init and of every random draw (default 0)")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks and debug logs")


# Arguments that never change a run's results: left out of the settings a resumed run must match.
# (threads_chosen/threads_reason: what setup_threads picked, which depends on the machine's load.)
NON_RESULT_ARGS = frozenset({"out", "overwrite", "debug", "no_progress", "threads", "threads_chosen", "threads_reason",
                             "name", "device", "cluster"})


def add_run_args(parser: argparse.ArgumentParser, *, out_help: str, out_required: bool = True,
                 threads_help: str | None = None) -> None:
    """``--out``, ``--overwrite``, ``--threads``, ``--no-progress``: the flags of the run contract
    (``threads_help`` for a command whose threads mean something narrower than torch's whole pool)."""
    group = parser.add_argument_group("run")
    group.add_argument("--out", required=out_required, help=out_help + "; rerunning with the same settings "
                       "resumes (or does nothing when the run is complete), other settings are refused")
    group.add_argument("--overwrite", action="store_true", help="replace whatever --out holds")
    group.add_argument("--threads", type=int, help=threads_help or "torch CPU threads (default: the physical cores, "
                       "1 when the load average says they are busy; the choice is recorded in config.json)")
    group.add_argument("--no-progress", action="store_true",
                       help="no progress bar (also off when stderr is not a terminal)")


def progress_enabled(args: argparse.Namespace) -> bool:
    """Show progress bars unless ``--no-progress`` or stderr is not a terminal (logs, pipes, CI)."""
    return not getattr(args, "no_progress", False) and sys.stderr.isatty()


def run_settings(args: argparse.Namespace, **extra) -> dict:
    """The arguments that decide a run's results (every flag but :data:`NON_RESULT_ARGS`), plus ``extra``."""
    settings = {k: v for k, v in vars(args).items() if k not in NON_RESULT_ARGS}
    settings.update(extra)
    return settings


def check_device(device: str) -> None:
    """Refuse an unknown or unavailable ``--device`` before anything loads."""
    from interp.models.checks import check_device as check

    try:
        check(device)
    except ClipInterpError as err:
        raise type(err)(f"--device {device}: {err}") from err


def check_model_args(args: argparse.Namespace) -> None:
    """The cheap model checks (device, thread count) before anything loads."""
    check_device(args.device)
    from interp.cli.validate import at_least

    at_least(getattr(args, "threads", None), "--threads")


def setup_threads(args: argparse.Namespace) -> tuple[int, str]:
    """Set torch's threads by the policy of :func:`interp.runs.threads.choose_threads` (``--threads``
    when the command has it and it is given; else automatic) and record the choice on ``args``
    (``threads_chosen``, ``threads_reason``), which the commands' config.json records."""
    import torch

    from interp.runs.threads import choose_threads

    n, reason = choose_threads(getattr(args, "threads", None))
    torch.set_num_threads(n)
    args.threads_chosen, args.threads_reason = n, reason
    logging.getLogger(__name__).info("torch threads: %d (%s)", n, reason)
    return n, reason


def load_model_from_args(args: argparse.Namespace):
    """The hooked text encoder the parsed ``--model/--pretrained/--device/--dtype/--seed`` name
    (after setting torch's threads, :func:`setup_threads`)."""
    from interp.models.loading import load_text_encoder

    check_model_args(args)
    setup_threads(args)
    pretrained = None if str(args.pretrained).lower() == "none" else args.pretrained
    return load_text_encoder(args.model, pretrained, device=args.device, dtype=torch_dtype(args.dtype), seed=args.seed)


def run_cli(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> int:
    """Run ``main(argv)``; turn expected errors into one stderr line and exit code 2."""
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(main(argv) or 0)
    except ClipInterpError as err:
        if debug:
            raise
        message = " ".join(str(err).split())  # one line, whatever the message holds
        print(f"error: {message}", file=sys.stderr)  # noqa: T201 - the CLI's one-line answer
        return EXIT_USER_ERROR
    except KeyboardInterrupt as err:
        from interp.runs.rundir import RunInterrupted

        # A RunInterrupted says what its run directory kept; before one is opened nothing was written.
        message = str(err) if isinstance(err, RunInterrupted) else "interrupted: nothing written (no run folder was opened yet)"
        print(message, file=sys.stderr)  # noqa: T201
        return 130
