"""Markdown reports drawn from result tables: a small builder and a table formatter.

Reports state facts computed from the tables beside them; nothing in a report is typed by hand.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from interp.files import atomic_write_text


def _cell(value: Any, floatfmt: str) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        return format(value, floatfmt)
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(frame: pd.DataFrame, floatfmt: str = ".3f", index: bool = False) -> str:
    """A GitHub-flavoured markdown table (floats formatted with ``floatfmt``; NaN shown as n/a)."""
    if index:
        frame = frame.reset_index()
    header = [str(c) for c in frame.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in frame.itertuples(index=False):
        lines.append("| " + " | ".join(_cell(v, floatfmt) for v in row) + " |")
    return "\n".join(lines)


class Report:
    """Collect markdown sections, then :meth:`write` them atomically."""

    def __init__(self, title: str):
        self.parts: list[str] = [f"# {title}", ""]

    def heading(self, text: str, level: int = 2) -> "Report":
        self.parts += [f"{'#' * level} {text}", ""]
        return self

    def paragraph(self, text: str) -> "Report":
        self.parts += [text, ""]
        return self

    def bullets(self, items: Iterable[str]) -> "Report":
        self.parts += [f"- {item}" for item in items] + [""]
        return self

    def table(self, frame: pd.DataFrame, floatfmt: str = ".3f", caption: str | None = None,
              index: bool = False) -> "Report":
        if caption:
            self.parts += [caption, ""]
        self.parts += [markdown_table(frame, floatfmt, index=index), ""]
        return self

    def image(self, path: str | os.PathLike, alt: str, relative_to: str | os.PathLike | None = None) -> "Report":
        target = Path(path)
        if relative_to is not None:
            target = Path(os.path.relpath(target, relative_to))
        self.parts += [f"![{alt}]({target.as_posix()})", ""]
        return self

    def text(self) -> str:
        return "\n".join(self.parts).rstrip() + "\n"

    def write(self, path: str | os.PathLike) -> Path:
        return atomic_write_text(path, self.text())
