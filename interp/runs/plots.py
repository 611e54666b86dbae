"""Seaborn figures drawn from result tables (Agg backend, written atomically).

Generic helpers shared by the CLIs: :func:`roles_layers_heatmap` (the reference study's layout:
token roles as rows, layers as columns) and :func:`heads_heatmap` (layers x heads, diverging
around 0). Plotting needs the ``plots`` extra (matplotlib, seaborn); the engines never import it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from interp.errors import ClipInterpError
from interp.files import save_figure


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import seaborn as sns
    except ImportError as err:  # pragma: no cover - depends on the install
        raise ClipInterpError("figures need matplotlib and seaborn: pip install 'clip-interp[plots]'") from err
    return plt, sns


def _save(fig, path: str | os.PathLike) -> Path:
    return save_figure(fig, path, dpi=120, bbox_inches="tight")  # the one atomic writer (interp.files)


def _finish(plt, fig, ax, path: str | os.PathLike, title: str, xlabel: str, ylabel: str = "",
            title_size: int = 10) -> Path:
    """Label the axes, save atomically, always close the figure."""
    ax.set_title(title, fontsize=title_size)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    try:
        return _save(fig, path)
    finally:
        plt.close(fig)


def roles_layers_heatmap(
    matrix: pd.DataFrame,
    path: str | os.PathLike,
    title: str,
    *,
    vmin: float = -0.2,
    vmax: float = 1.0,
    cmap: str = "viridis",
    xlabel: str = "layer",
) -> Path:
    """Heatmap of a roles (rows) x layers (columns) table, values annotated to 2 decimals."""
    plt, sns = _pyplot()
    height = 0.45 * len(matrix) + 1.5
    width = 0.55 * matrix.shape[1] + 2.5
    fig, ax = plt.subplots(figsize=(width, height))
    sns.heatmap(matrix.astype(float), ax=ax, annot=True, fmt=".2f", vmin=vmin, vmax=vmax, cmap=cmap,
                cbar_kws={"shrink": 0.8}, annot_kws={"fontsize": 7})
    return _finish(plt, fig, ax, path, title, xlabel)


def heads_heatmap(
    matrix: pd.DataFrame,
    path: str | os.PathLike,
    title: str,
    *,
    center: float = 0.0,
    limit: float | None = None,
    cmap: str = "RdBu_r",
    annotate: bool = True,
    colorbar_label: str = "",
) -> Path:
    """Layers (rows) x heads (columns) heatmap, diverging around ``center`` (symmetric limits);
    ``colorbar_label`` names the quantity the colours show."""
    plt, sns = _pyplot()
    values = matrix.astype(float)
    bound = limit if limit is not None else float(max(abs(values.min().min() - center), abs(values.max().max() - center), 1e-12))
    fig, ax = plt.subplots(figsize=(0.5 * values.shape[1] + 2.5, 0.4 * values.shape[0] + 1.5))
    sns.heatmap(values, ax=ax, center=center, vmin=center - bound, vmax=center + bound, cmap=cmap,
                annot=annotate, fmt=".2f", annot_kws={"fontsize": 6},
                cbar_kws={"shrink": 0.8, "label": colorbar_label})
    return _finish(plt, fig, ax, path, title, "head", "layer")


def layer_bars(
    frame: pd.DataFrame,
    path: str | os.PathLike,
    title: str,
    *,
    x: str = "layer",
    y: str = "effect",
    hue: str | None = None,
    xlabel: str = "layer (0-indexed)",
) -> Path:
    """Bars of ``y`` per ``x`` (e.g. per layer), one colour per ``hue`` value, with a zero line."""
    plt, sns = _pyplot()
    order = [str(v) for v in sorted(frame[x].unique())]
    fig, ax = plt.subplots(figsize=(max(5.0, 0.45 * len(order) + 2.5), 3.5))
    sns.barplot(data=frame.assign(**{x: frame[x].astype(str)}), x=x, y=y, hue=hue, order=order, ax=ax)
    ax.axhline(0, color="black", linewidth=0.8)
    return _finish(plt, fig, ax, path, title, xlabel, y, title_size=9)


# Public name for callers drawing their own figures with the same backend (save them with
# interp.files.save_figure or RunDir.save_figure).
pyplot_and_seaborn = _pyplot
