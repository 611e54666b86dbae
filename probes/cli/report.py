"""Report helpers of the probes CLIs: the figure backend and markdown tables (the run directory itself
is :class:`interp.runs.rundir.RunDir`, shared by every command)."""

from __future__ import annotations

import logging
from typing import Sequence

import pandas as pd

from interp.runs.plots import pyplot_and_seaborn
from interp.runs.report import markdown_table as _interp_markdown_table

log = logging.getLogger(__name__)


def pyplot():
    """matplotlib.pyplot on the Agg backend and seaborn (:func:`interp.runs.plots.pyplot_and_seaborn`)."""
    return pyplot_and_seaborn()


def markdown_table(df: pd.DataFrame, columns: Sequence[str] | None = None, digits: int = 3) -> str:
    """A GitHub markdown table of ``df`` restricted to ``columns`` (:func:`interp.runs.report.markdown_table`)."""
    return _interp_markdown_table(df[list(columns or df.columns)], floatfmt=f".{digits}f")
