"""Report directories for the probes CLIs: config + versions JSON, CSV tables, figures, report.md.

A report is written into ``<out>.partial-<pid>`` and renamed to ``<out>`` only when complete, so a
failed run never leaves a half-written report under the requested name.
"""

from __future__ import annotations

from interp.errors import ClipInterpError
from interp.runs.report import markdown_table as _interp_markdown_table
from interp.runs.plots import pyplot_and_seaborn
from interp.runs.rundir import VERSIONED_PACKAGES, package_versions

import json
import logging
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

log = logging.getLogger(__name__)


class ReportError(ClipInterpError, RuntimeError):
    """The report directory cannot be written as asked."""


def versions() -> dict[str, Any]:
    """The project's package versions (:func:`interp.runs.rundir.package_versions`, plus scikit-learn) and
    the git commit of the working tree (if any)."""
    out: dict[str, Any] = package_versions((*VERSIONED_PACKAGES, "scikit-learn"))
    try:
        here = Path(__file__).resolve().parent
        out["git_commit"] = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10, check=False
        ).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        out["git_commit"] = None
    return out


class ReportDir:
    """Context manager that stages a report and renames it into place on success.

    >>> with ReportDir(out, overwrite=False) as rep:
    ...     rep.table(df, "metrics")
    """

    def __init__(self, out: str | Path, overwrite: bool = False):
        self.out = Path(out)
        if self.out.exists() and not overwrite:
            raise ReportError(f"output directory {self.out} already exists: pass --overwrite or choose another --out")
        self.stage = self.out.with_name(f"{self.out.name}.partial-{os.getpid()}")

    def __enter__(self) -> "ReportDir":
        if self.stage.exists():
            shutil.rmtree(self.stage)
        (self.stage / "figures").mkdir(parents=True)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            shutil.rmtree(self.stage, ignore_errors=True)
            return
        if self.out.exists():
            shutil.rmtree(self.out)
        self.stage.rename(self.out)
        log.info("report written to %s", self.out)

    def path(self, name: str) -> Path:
        return self.stage / name

    def json(self, obj: Any, name: str) -> Path:
        p = self.path(name)
        p.write_text(json.dumps(obj, indent=2, default=str, sort_keys=False) + "\n", encoding="utf-8")
        return p

    def table(self, df: pd.DataFrame, name: str) -> Path:
        p = self.path(f"{name}.csv")
        df.to_csv(p, index=False)
        return p

    def text(self, text: str, name: str) -> Path:
        p = self.path(name)
        p.write_text(text, encoding="utf-8")
        return p

    def figure(self, fig: Any, name: str) -> Path:
        p = self.path(f"figures/{name}.png")
        fig.savefig(p, dpi=120, bbox_inches="tight")
        import matplotlib.pyplot as plt

        plt.close(fig)
        return p


def pyplot():
    """matplotlib.pyplot on the Agg backend and seaborn (:func:`interp.runs.plots.pyplot_and_seaborn`)."""
    return pyplot_and_seaborn()


def markdown_table(df: pd.DataFrame, columns: Sequence[str] | None = None, digits: int = 3) -> str:
    """A GitHub markdown table of ``df`` restricted to ``columns`` (:func:`interp.runs.report.markdown_table`)."""
    return _interp_markdown_table(df[list(columns or df.columns)], floatfmt=f".{digits}f")
