"""``clip-interp <command> [flags]``: one console script for every command (same flags as ``python -m``)."""

from __future__ import annotations

import importlib
import sys
from typing import Sequence

# command -> (module holding its ``cli(argv)``, the equivalent ``python -m`` module)
COMMANDS = {
    "trace": ("interp.cli.trace", "interp.trace"),
    "ablate": ("interp.cli.ablate", "interp.ablate"),
    "data": ("interp.cli.data", "interp.data"),
    "image": ("interp.cli.image", "interp.image"),
    "sweep": ("interp.cli.sweep", "interp.sweep"),
    "bench": ("interp.benchmarks.main", "interp.bench"),
    "ideal-words": ("probes.cli.ideal_words", "probes.ideal_words"),
    "linear-probe": ("probes.cli.linear", "probes.linear"),
    "alignment": ("analyses.cli.alignment", "analyses.alignment"),
    "extract": ("analyses.cli.extract", "analyses.extract"),
    "analyses-bench": ("analyses.bench", "analyses.bench"),
}


def usage() -> str:
    rows = "\n".join(f"  {name:<13} = python -m {module}" for name, (_, module) in COMMANDS.items())
    return f"usage: clip-interp <command> [flags]   (clip-interp <command> --help for its flags)\n\ncommands:\n{rows}"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())  # noqa: T201 - the command's answer
        return 0 if argv else 2
    if argv[0] not in COMMANDS:
        print(f"error: unknown command {argv[0]!r}: use one of {', '.join(COMMANDS)}", file=sys.stderr)  # noqa: T201
        return 2
    module = importlib.import_module(COMMANDS[argv[0]][0])
    return int(module.cli(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
