"""Checks of command-line values every tool shares, run before anything slow (model load, data).

Each raises :class:`UsageError` (a :class:`interp.errors.ClipInterpError`), which the CLIs print as
one line naming the flag and the fix, with exit code 2.
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
from pathlib import Path

from interp.errors import ClipInterpError


class UsageError(ClipInterpError, ValueError):
    """A command-line value that cannot work (negative count, unwritable folder, unknown choice)."""


class UsageParser(argparse.ArgumentParser):
    """argparse with the toolkit's error contract: a bad flag is one line on stderr (exit code 2)
    instead of argparse's usage block."""

    def error(self, message: str):  # noqa: D102 - argparse's hook
        raise UsageError(f"{message} (see {self.prog} --help)")


def at_least(value: int | None, flag: str, minimum: int = 1) -> int | None:
    """``value`` if it is None or an integer >= ``minimum``; else a clear error naming ``flag``."""
    if value is not None and value < minimum:
        raise UsageError(f"{flag} {value} must be at least {minimum}")
    return value


def positive_number(value: float | None, flag: str) -> float | None:
    """``value`` if it is None or a finite number > 0."""
    if value is not None and not (math.isfinite(value) and value > 0):
        raise UsageError(f"{flag} {value} must be a positive number")
    return value


def writable_out(path: str | os.PathLike | None, flag: str = "--out") -> None:
    """Refuse an output folder that is a file, or under a file, or where nothing can be created.

    Probes the nearest existing ancestor by creating (and removing) a temporary folder in it, which
    is what the tool will do, so permission bits, read-only mounts and pseudo file systems all count.
    """
    if path is None:
        return
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise UsageError(f"{flag} {out} is a file, not a folder: pass a folder path")
    ancestor = out
    while not ancestor.exists():
        if ancestor.parent == ancestor:
            break
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UsageError(f"{flag} {out}: {ancestor} is a file, so no folder can be made under it: pass another path")
    try:
        tempfile.TemporaryDirectory(dir=ancestor, prefix=".clip-interp-probe-").cleanup()
    except OSError as err:
        raise UsageError(f"{flag} {out} is not writable ({err.strerror or err}): pass a folder you can write to") from err
