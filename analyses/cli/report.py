"""The representation-similarity report of two paired embedding sets, written into a run directory.

The run directory (:class:`interp.runs.rundir.RunDir`) holds data first: ``config.json`` (settings,
arguments, package versions, the options, the preset record, and the models and weights behind each
input, or "synthetic"), CSV tables (``cka.csv``, ``cka_layers.csv``, ``matching.csv``,
``alignment.csv``, ``alignment_summary.csv``, ``maps.csv``), seaborn figures drawn from those tables
(``figures/cka_layers_<kernel>.png``, ``figures/pk_curves.png``) and ``report.md`` built from the tables.

The report is computed as independent *tasks* (:func:`report_tasks`: one per section, and one per seed
of the matching section, the slow one). Each finished task's table is kept under ``items/``, so a
killed run loses at most the task in flight and a rerun with the same settings resumes. The final
tables are always assembled from the stored task tables, so a resumed run writes the same tables as an
uninterrupted one.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from analyses.alignment.procrustes import CSLS_K, PRECISION_KS, kfold_alignment
from analyses.assignment_map import PRESET_LABELS, AssignmentMapConfig, compare_maps
from analyses.io import EmbeddingSet, check_pairing
from analyses.matching import matching_protocol
from analyses.similarity import cka_matrix, permutation_test
from analyses.validation import AnalysisInputError
from interp.presets import preset_record, preset_sentence
from interp.runs.plots import pyplot_and_seaborn
from interp.runs.report import markdown_table
from interp.runs.rundir import read_csv

if TYPE_CHECKING:
    from interp.runs.rundir import RunDir

log = logging.getLogger(__name__)

from analyses.options import SECTIONS  # noqa: E402,F401 - re-exported

MATCHING_TASK_PREFIX = "matching-seed-"  # one matching task per split seed: "matching-seed-0", ...


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
    match_kernel: str = "rbf"
    match_protocol: str = "fixed_base"
    local_cka_bandwidth: str = "per_set"
    folds: int = 5
    csls_k: int = CSLS_K
    map_config: AssignmentMapConfig = field(default_factory=AssignmentMapConfig)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["map_config"] = self.map_config.as_dict()
        return d


def presets_of(opts: ReportOptions) -> dict[str, Any]:
    """Preset name and deviations from seed 002 (matching) and VLAP (assignment map) of these options,
    judged only for the sections that run."""
    chosen: dict[str, dict[str, Any]] = {}
    if "matching" in opts.sections:
        chosen["matching"] = {"kernel": opts.match_kernel, "protocol": opts.match_protocol}
        if opts.match_kernel == "rbf":
            chosen["matching"]["local_cka_bandwidth"] = opts.local_cka_bandwidth
    if "maps" in opts.sections:
        chosen["assignment_map"] = opts.map_config.paper_settings()
    return preset_record(chosen)


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
    """The checks that need the data but no analysis (run before any output folder exists)."""
    check_pairing(x, y)
    unknown = set(opts.sections) - set(SECTIONS)
    if unknown:
        raise AnalysisInputError(f"unknown report section(s) {sorted(unknown)}: choose from {SECTIONS}.")
    if "matching" in opts.sections and opts.n_base + opts.n_query > x.n:
        raise AnalysisInputError(
            f"requested {opts.n_base} base + {opts.n_query} query pairs but only {x.n} pairs are available: "
            "lower --n-base/--n-query or pass more pairs."
        )


def report_tasks(x: EmbeddingSet, y: EmbeddingSet, opts: ReportOptions) -> list[str]:
    """The independent pieces of the report, in report order: a section name, or ``matching-seed-<s>``."""
    tasks = []
    for section in SECTIONS:
        if section not in opts.sections or (section == "layers" and not (x.layers and y.layers)):
            continue
        if section == "matching":
            tasks += [f"{MATCHING_TASK_PREFIX}{s}" for s in opts.match_seeds]
        else:
            tasks.append(section)
    return tasks


def compute_task(x: EmbeddingSet, y: EmbeddingSet, opts: ReportOptions, task: str, progress: bool = False) -> pd.DataFrame:
    """The table of one task of :func:`report_tasks` (one row per kernel x estimator, layer pair, seed x
    method, fold x retrieval, or map); ``progress`` shows the analyses' own progress bars."""
    n = x.n
    if task == "cka":
        rows = []
        for kernel in ("linear", "rbf"):
            if kernel == "rbf" and n > opts.rbf_max_n:
                log.info("RBF CKA skipped: n=%d > rbf_max_n=%d (needs n x n kernels)", n, opts.rbf_max_n)
                continue
            for debiased in (False, True):
                res = permutation_test(x.embeddings, y.embeddings, kernel=kernel, debiased=debiased,
                                       n_permutations=opts.permutations, seed=opts.seed, progress=progress)
                rows.append({"kernel": kernel, "debiased": debiased, "n": n, "cka": res.observed,
                             "shuffled_mean": res.null_mean, "shuffled_max": float(res.null.max()),
                             "permutations": opts.permutations, "p_value": res.p_value})
        return pd.DataFrame(rows)
    if task == "layers":
        rows = []
        for kernel in opts.layer_kernels:
            mat = cka_matrix(x.layers, y.layers, kernel=kernel, names=("--x", "--y"), constant_layers="nan",
                             progress=progress)
            for i, xname in enumerate(x.layer_names):
                for j, yname in enumerate(y.layer_names):
                    rows.append({"kernel": kernel, "x_layer": xname, "y_layer": yname, "x_index": i,
                                 "y_index": j, "cka": mat[i, j]})
        return pd.DataFrame(rows)
    if task.startswith(MATCHING_TASK_PREFIX):
        # One seed of the protocol: the base set depends on opts.seed only, the queries on this seed,
        # so the rows equal those of one call over every seed.
        seed = int(task[len(MATCHING_TASK_PREFIX):])
        return matching_protocol(
            x.embeddings, y.embeddings, n_base=opts.n_base, n_query=opts.n_query, seeds=(seed,),
            stretching=opts.stretching, base_selection=opts.base_selection, kernel=opts.match_kernel,
            qap_restarts=opts.qap_restarts, protocol=opts.match_protocol, base_seed=opts.seed,
            local_cka_bandwidth=opts.local_cka_bandwidth, progress=progress,
        )
    if task == "alignment":
        groups = y.groups if y.groups is not None else x.groups
        return kfold_alignment(x.embeddings, y.embeddings, _pairs_from_groups(groups, n), groups=groups,
                               n_folds=opts.folds, seed=opts.seed, csls_k=opts.csls_k)
    if task == "maps":
        return compare_maps(x.embeddings, y.embeddings, seed=opts.seed, config=opts.map_config, progress=progress)
    raise AnalysisInputError(f"unknown report task {task!r}: see report_tasks().")


def assemble_tables(parts: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """The report's tables (one DataFrame per CSV) from the task tables of :func:`report_tasks`."""
    tables = {name: parts[name] for name in ("cka", "layers") if name in parts}
    if "layers" in tables:
        tables["cka_layers"] = tables.pop("layers")
    matching = [part for task, part in parts.items() if task.startswith(MATCHING_TASK_PREFIX)]
    if matching:
        tables["matching"] = pd.concat(matching, ignore_index=True)
    if "alignment" in parts:
        table = tables["alignment"] = parts["alignment"]
        pk = [f"P@{k}" for k in PRECISION_KS]
        tables["alignment_summary"] = table.groupby("retrieval", sort=False)[pk].agg(["mean", "std"]).pipe(
            lambda t: t.set_axis([f"{a} {b}" for a, b in t.columns], axis=1)).reset_index()
    if "maps" in parts:
        tables["maps"] = parts["maps"]
    return tables


def compute_tables(x: EmbeddingSet, y: EmbeddingSet, opts: ReportOptions) -> dict[str, pd.DataFrame]:
    """All report tables computed in memory (no files), from the two embedding sets."""
    check_inputs(x, y, opts)
    return assemble_tables({task: compute_task(x, y, opts, task) for task in report_tasks(x, y, opts)})


def _figures(tables: dict[str, pd.DataFrame], run: RunDir) -> list[str]:
    """Draw the figures from the tables into ``figures/``; their names relative to the run."""
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


def _markdown(tables: dict[str, pd.DataFrame], inputs: dict[str, Any], opts: ReportOptions,
              presets: dict[str, Any], figures: list[str]) -> str:
    lines = ["# Representation similarity report", "",
             f"- X: `{inputs['x']['path']}`: {inputs['x']['description']}",
             f"- Y: `{inputs['y']['path']}`: {inputs['y']['description']}",
             f"- {inputs['n']} paired items. All numbers below come from these inputs; they are CLIP results only if "
             "both inputs were extracted with real CLIP weights.",
             f"- {preset_sentence(presets)}",
             *([f"- Assignment map settings: {PRESET_LABELS.get(opts.map_config.preset, '?')}."] if "maps" in tables else []),
             ""]
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


def describe_inputs(x: EmbeddingSet, y: EmbeddingSet, sources: tuple[str, str]) -> dict[str, Any]:
    """What config.json and report.md say about the two inputs: path, model and weights, size, layers."""
    return {"n": x.n, **{side: {"path": source, "description": describe(data), "meta": data.meta,
                                "dim": data.embeddings.shape[1], "layers": data.layer_names}
                         for side, data, source in (("x", x, sources[0]), ("y", y, sources[1]))}}


def write_report(run: RunDir, x: EmbeddingSet, y: EmbeddingSet, opts: ReportOptions, *,
                 sources: tuple[str, str] = ("<memory>", "<memory>"), progress: bool = False) -> list[str]:
    """Compute the tasks ``run`` does not hold yet (each stored in ``items/`` when done), then write the
    tables, figures and report.md from the stored task tables. Returns the written file names."""
    from tqdm.auto import tqdm

    check_inputs(x, y, opts)
    tasks = report_tasks(x, y, opts)
    done = run.items.done()
    todo = [task for task in tasks if task not in done]
    log.info("%d report tasks, %d already done in %s", len(tasks), len(tasks) - len(todo), run.path)
    for task in tqdm(todo, desc="report tasks", disable=not progress):
        run.items.write(task, compute_task(x, y, opts, task, progress).assign(item_id=task))
    parts = {task: read_csv(run.items.file_of(task)).drop(columns="item_id") for task in tasks}
    tables = assemble_tables(parts)
    written = [run.write_table(table, f"{name}.csv").name for name, table in tables.items()]
    figures = _figures(tables, run)
    inputs, presets = describe_inputs(x, y, sources), presets_of(opts)
    run.record(inputs=inputs, options=opts.as_dict(), presets=presets,
               tables=sorted(f"{name}.csv" for name in tables), figures=figures)
    run.write_text(_markdown(tables, inputs, opts, presets, figures), "report.md")
    return [*written, *figures, "report.md"]
