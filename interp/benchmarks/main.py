"""Benchmarks: ``python -m interp.bench trace|ablate|atp|image-trace|load|fidelity``.

Each benchmark times the fast engine and its plain reference side by side in one process and
prints ratios; the README's performance section quotes their output with the command.
"""

from __future__ import annotations

import importlib
import sys

BENCHMARKS = {"trace": "interp.benchmarks.trace", "ablate": "interp.benchmarks.ablate", "atp": "interp.benchmarks.atp",
              "image-trace": "interp.benchmarks.image_trace", "load": "interp.benchmarks.load",
              "fidelity": "interp.benchmarks.fidelity",
              "cluster": "interp.benchmarks.cluster"}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    usage = f"usage: python -m interp.bench {{{'|'.join(BENCHMARKS)}}} [options]   (python -m interp.bench NAME --help for its options)"
    if argv and argv[0] in ("-h", "--help"):
        print(usage)  # noqa: T201 - the command's answer
        return 0
    if not argv or argv[0] not in BENCHMARKS:
        print(usage, file=sys.stderr)  # noqa: T201
        return 2
    module = importlib.import_module(BENCHMARKS[argv[0]])
    return int(module.main(argv[1:]) or 0)


def cli(argv: list[str] | None = None) -> int:
    return main(argv)
