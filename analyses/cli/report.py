"""Write a representation-similarity report for two paired embedding sets.

The report directory holds data first: ``config.json`` (arguments, package versions, the models and
weights behind each input, or "synthetic"), CSV tables (``cka.csv``, ``cka_layers.csv``,
``matching.csv``, ``alignment.csv``, ``alignment_summary.csv``, ``maps.csv``), seaborn figures drawn
from those tables (``figures/cka_layers_<kernel>.png``, ``figures/pk_curves.png``) and ``report.md`` built from the
tables. Everything is written into a temporary directory renamed into place at the end.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analyses.alignment.procrustes import CSLS_K, PRECISION_KS, kfold_alignment
from analyses.assignment_map import AssignmentMapConfig, compare_maps
from analyses.io import EmbeddingSet, check_pairing
from analyses.matching import matching_protocol
from analyses.similarity import cka_matrix, permutation_test
from analyses.validation import AnalysisInputError
from interp.runs.plots import pyplot_and_seaborn
from interp.runs.report import markdown_table
from interp.runs.rundir import RunDir

log = logging.getLogger(__name__)

SECTIONS: tuple[str, ...] = ("cka", "layers", "matching", "alignment", "maps")


@dataclass
class ReportOptions:
    """What to run and with which protocol knobs (the CLI flags map one to one)."""

    sections: tuple[str, ...] = SECTIONS
    seed: int = 0
    permutations: int = 100
    rbf_max_n: int = 5000
    layer_kernels: tuple[str, ...] = ("linear",)
    n_base: int = 320
    n_query: int = 500
    match_seeds: tuple[int, ...] = (0, 1, 2)
    qap_restarts: int = 50
    stretching: bool = False
    base_selection: str = "random"
    match_kernel: str = "linear"
    folds: int = 5
    csls_k: int = CSLS_K
    map_config: AssignmentMapConfig = field(default_factory=AssignmentMapConfig)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["map_config"] = self.map_config.as_dict()
        return d


def _pairs_from_groups(groups: np.ndarray | None, n: int) -> np.ndarray:
    """Dictionary (source row, target row) for paired rows: row i's gold is every row of its group."""
    if groups is None:
        return np.c_[np.arange(n), np.arange(n)]
    _, codes = np.unique(groups, return_inverse=True)
    order = np.argsort(codes, kind="stable")
    bounds = np.flatnonzero(np.diff(codes[order])) + 1
    pairs = [np.array(np.meshgrid(m, m)).reshape(2, -1).T for m in np.split(order, bounds)]
    return np.concatenate(pairs)


def check_inputs(x: EmbeddingSet, y: EmbeddingSet, opts: ReportOptions) -> None:
    """Refuse unpaired inputs and unknown sections before any work (and before a run folder exists)."""
    check_pairing(x, y)
    unknown = set(opts.sections) - set(SECTIONS)
    if unknown:
        raise AnalysisInputError(f"unknown report section(s) {sorted(unknown)}: choose from {SECTIONS}.")


def compute_tables(x: EmbeddingSet, y: EmbeddingSet, opts: ReportOptions) -> dict[str, pd.DataFrame]:
    """All report tables (one DataFrame per CSV), computed from the two embedding sets."""
    check_inputs(x, y, opts)
    tables: dict[str, pd.DataFrame] = {}
    n = x.n
    if "cka" in opts.sections:
        rows = []
        for kernel in ("linear", "rbf"):
            if kernel == "rbf" and n > opts.rbf_max_n:
                log.info("RBF CKA skipped: n=%d > rbf_max_n=%d (needs n x n kernels)", n, opts.rbf_max_n)
                continue
            for debiased in (False, True):
                res = permutation_test(x.embeddings, y.embeddings, kernel=kernel, debiased=debiased,
                                       n_permutations=opts.permutations, seed=opts.seed)
                rows.append({"kernel": kernel, "debiased": debiased, "n": n, "cka": res.observed,
                             "shuffled_mean": res.null_mean, "shuffled_max": float(res.null.max()),
                             "permutations": opts.permutations, "p_value": res.p_value})
        tables["cka"] = pd.DataFrame(rows)
    if "layers" in opts.sections and x.layers and y.layers:
        rows = []
        for kernel in opts.layer_kernels:
            mat = cka_matrix(x.layers, y.layers, kernel=kernel, names=("--x", "--y"), constant_layers="nan")
            for i, xname in enumerate(x.layer_names):
                for j, yname in enumerate(y.layer_names):
                    rows.append({"kernel": kernel, "x_layer": xname, "y_layer": yname, "x_index": i,
                                 "y_index": j, "cka": mat[i, j]})
        tables["cka_layers"] = pd.DataFrame(rows)
    if "matching" in opts.sections:
        tables["matching"] = matching_protocol(
            x.embeddings, y.embeddings, n_base=opts.n_base, n_query=opts.n_query, seeds=opts.match_seeds,
            stretching=opts.stretching, base_selection=opts.base_selection, kernel=opts.match_kernel,
            qap_restarts=opts.qap_restarts,
        )
    if "alignment" in opts.sections:
        groups = y.groups if y.groups is not None else x.groups
        table = kfold_alignment(x.embeddings, y.embeddings, _pairs_from_groups(groups, n), groups=groups,
                                n_folds=opts.folds, seed=opts.seed, csls_k=opts.csls_k)
        tables["alignment"] = table
        pk = [f"P@{k}" for k in PRECISION_KS]
        tables["alignment_summary"] = table.groupby("retrieval", sort=False)[pk].agg(["mean", "std"]).pipe(
            lambda t: t.set_axis([f"{a} {b}" for a, b in t.columns], axis=1)).reset_index()
    if "maps" in opts.sections:
        tables["maps"] = compare_maps(x.embeddings, y.embeddings, seed=opts.seed, config=opts.map_config)
    return tables


def _figures(tables: dict[str, pd.DataFrame], run: RunDir) -> list[str]:
    plt, sns = pyplot_and_seaborn()

    written = []
    if "cka_layers" in tables:
        for kernel, part in tables["cka_layers"].groupby("kernel"):
            grid = part.pivot(index="x_index", columns="y_index", values="cka")
            fig, ax = plt.subplots(figsize=(max(5.0, 2 + 0.6 * grid.shape[1]), max(4.0, 1.5 + 0.45 * grid.shape[0])))
            sns.heatmap(grid, ax=ax, vmin=0, vmax=1, cmap="viridis", annot=grid.size <= 100, fmt=".2f",
                        xticklabels=part.drop_duplicates("y_index")["y_layer"],
                        yticklabels=part.drop_duplicates("x_index")["x_layer"])
            ax.set(xlabel="Y layer", ylabel="X layer", title=f"{kernel} CKA by layer")
            run.save_figure(fig, f"cka_layers_{kernel}.png", dpi=100)
            written.append(f"figures/cka_layers_{kernel}.png")
    if "alignment" in tables:
        long = tables["alignment"].melt(id_vars=["fold", "retrieval"], value_vars=[f"P@{k}" for k in PRECISION_KS],
                                        var_name="k", value_name="precision")
        long["k"] = long["k"].str[2:].astype(int)
        fig, ax = plt.subplots(figsize=(5, 3.5))
        sns.lineplot(long, x="k", y="precision", hue="retrieval", marker="o", errorbar="sd", ax=ax)
        ax.set(xscale="log", ylim=(0, 1.02), title="Procrustes retrieval, P@k (mean ± sd over folds)")
        run.save_figure(fig, "pk_curves.png", dpi=100)
        written.append("figures/pk_curves.png")
    return written


def _markdown(tables: dict[str, pd.DataFrame], config: dict[str, Any], figures: list[str]) -> str:
    src = config["inputs"]
    lines = ["# Representation similarity report", "",
             f"- X: `{src['x']['path']}`: {src['x']['description']}",
             f"- Y: `{src['y']['path']}`: {src['y']['description']}",
             f"- {src['n']} paired items. All numbers below come from these inputs; they are CLIP results only if "
             "both inputs were extracted with real CLIP weights.", ""]
    sections = [
        ("cka", "CKA of the final embeddings, with a shuffled-pairing baseline"),
        ("cka_layers", "Layer-by-layer CKA"),
        ("matching", "Training-free matching (seeded QAP, local CKA + Hungarian)"),
        ("alignment_summary", "Procrustes alignment, P@k over folds"),
        ("maps", "Linear maps compared on one held-out split (retrieval among test targets)"),
    ]
    for key, title in sections:
        if key == "cka_layers" and key in tables:
            for kernel, part in tables[key].groupby("kernel", sort=False):
                grid = part.pivot(index="x_layer", columns="y_layer", values="cka")
                grid = grid.loc[part.drop_duplicates("x_index")["x_layer"], part.drop_duplicates("y_index")["y_layer"]]
                lines += [f"## {title} ({kernel}; rows: X layers, columns: Y layers)", "",
                          markdown_table(grid.reset_index().rename(columns={"x_layer": "X \\ Y"})), ""]
        elif key in tables:
            lines += [f"## {title}", "", markdown_table(tables[key]), ""]
    for fig in figures:
        lines += [f"![{fig}]({fig})", ""]
    return "\n".join(lines)


def describe(data: EmbeddingSet) -> str:
    meta = data.meta
    if not meta:
        return "no metadata (user-supplied embeddings)"
    if meta.get("synthetic"):
        return f"synthetic: {meta.get('description', 'planted data')}"
    return (f"model {meta.get('model')} weights {meta.get('pretrained') or 'random init (seed %s)' % meta.get('seed')}, "
            f"{meta.get('tower', '?')} tower")


def report_inputs(x: EmbeddingSet, y: EmbeddingSet, sources: tuple[str, str]) -> dict[str, Any]:
    """What config.json says about the two inputs (paths, descriptions, metadata, sizes)."""
    return {"n": x.n,
            "x": {"path": sources[0], "description": describe(x), "meta": x.meta, "dim": x.embeddings.shape[1],
                  "layers": x.layer_names},
            "y": {"path": sources[1], "description": describe(y), "meta": y.meta, "dim": y.embeddings.shape[1],
                  "layers": y.layer_names}}


def write_report(x: EmbeddingSet, y: EmbeddingSet, run: RunDir, opts: ReportOptions, *,
                 sources: tuple[str, str] = ("<memory>", "<memory>")) -> Path:
    """Compute every table and write them, the figures, report.md and the config sections into ``run``."""
    tables = compute_tables(x, y, opts)
    for name, table in tables.items():
        run.write_table(table, f"{name}.csv")
    figures = _figures(tables, run)
    config = {"options": opts.as_dict(), "inputs": report_inputs(x, y, sources),
              "tables": sorted(f"{name}.csv" for name in tables), "figures": figures}
    run.record(**config)
    run.write_text(_markdown(tables, config, figures), "report.md")
    log.info("report written to %s", run.path)
    return run.path
