"""The files of a tracing run, all drawn from the per-item table: CSVs, heatmaps and report.md.

Files (in the run directory):

- ``cells.csv``: one row per item x layer x position (effect, patched/base/source scores, role,
  tokens, negation side, segment, d);
- ``items.csv``: one row per traced item (scores, gap, segment, d);
- ``roles_all.csv``, ``roles_by_side.csv`` (and ``roles_by_segment_side.csv`` with images): the 8
  role rows x layers, mean (token-weighted) / std / n;
- ``layers.csv``: per layer and negation side, statistics over all cells;
- ``invariants.csv``: the reference study's invariants with measured deviations;
- ``exclusions.csv``: every item not traced, with the stage and reason;
- ``figures/heatmap_<side>.png`` / ``figures/heatmap_all.png`` and ``report.md``.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from interp.data.negation import NEGATION_SIDES
from interp.presets import preset_sentence
from interp.runs.labels import relabel_roles, residual_axis_text, role_names, special_tokens_text
from interp.runs.report import Report
from interp.runs.rundir import RunDir, write_csv
from interp.data.scoring import TEXT_MODE_NOTE, summarize
from interp.tracing.aggregate import invariants, layer_table, role_matrix, role_table
from interp.tracing.spec import POSITIONAL_POOLS, TraceSpec

SIDE_TITLES = {"caption": "negation in caption", "foil": "negation in foil"}


@dataclass
class RunContext:
    """What the report needs to know besides the tables."""

    model: Any
    args: argparse.Namespace
    spec: TraceSpec
    target: Any
    counts: dict[str, int]
    exclusions: list[tuple[str, str]]
    rejected: list[tuple[str, str]]
    out_of_segment: list[str]
    beyond_limit: list[str]
    item_ids: list[str]
    stats: Any
    settings: dict[str, Any]
    noise_info: dict[str, Any] = field(default_factory=dict)
    d_all: np.ndarray | None = None
    sides_all: Sequence[str] | None = None


def _invariants_apply(ctx: RunContext) -> tuple[bool, str]:
    if ctx.spec.kind != "resid" or ctx.spec.window != 1:
        return False, f"not checked: the invariants are about single residual states (this run: --kind {ctx.spec.kind} --window {ctx.spec.window})"
    if ctx.args.mode == "noise" and ctx.noise_info.get("noise_roles") != ["negator"]:
        return False, "not checked: with noise on roles other than the negator, the corrupted and clean runs differ at more than one position"
    return True, ""


def exclusion_table(ctx: RunContext) -> pd.DataFrame:
    rows = [(i, "valid set / minimal pair rule", r) for i, r in ctx.exclusions]
    rows += [(i, "token alignment", r) for i, r in ctx.rejected]
    rows += [(i, "segment filter", f"not in segment {ctx.args.segment!r}") for i in ctx.out_of_segment]
    rows += [(i, "--limit", f"beyond --limit {ctx.args.limit}") for i in ctx.beyond_limit]
    return pd.DataFrame(rows, columns=["item_id", "stage", "reason"])


def write_outputs(run: RunDir, ctx: RunContext, figures: bool = True) -> list[Path]:
    """Write every table, figure and the report from the per-item table; returns the paths."""
    cells = run.items.read(order=ctx.item_ids)
    cells["segment"] = cells["segment"].astype(object).where(cells["segment"].notna(), "").astype(str)
    written = [write_csv(cells, run.path / "cells.csv")]
    items = cells.groupby("item_id", sort=False).first().reset_index()[
        ["item_id", "negation_side", "segment", "d", "length", "base", "source"]]
    items["gap"] = items["source"] - items["base"]
    written.append(write_csv(items, run.path / "items.csv"))
    by_side = role_table(cells, by=["negation_side"])
    written.append(run.write_table(role_table(cells), "roles_all.csv"))
    written.append(run.write_table(by_side, "roles_by_side.csv"))
    image = ctx.target.kind == "image"
    if image:
        written.append(run.write_table(role_table(cells, by=["segment", "negation_side"]), "roles_by_segment_side.csv"))
    written.append(run.write_table(layer_table(cells, by=["negation_side"]), "layers.csv"))
    cfg = ctx.model.cfg
    check, why_not = _invariants_apply(ctx)
    inv = invariants(cells, ctx.spec.n_axis, bool(cfg.causal), cfg.pool in POSITIONAL_POOLS) if check else pd.DataFrame()
    if check:
        written.append(run.write_table(inv, "invariants.csv"))
    excluded = exclusion_table(ctx)
    written.append(run.write_table(excluded, "exclusions.csv"))
    figure_paths: dict[str, Path] = {}
    if figures:
        from interp.runs.plots import roles_layers_heatmap

        xlabel = "residual after block l (0 = embedding output)" if ctx.spec.kind == "resid" else "block"
        for side in NEGATION_SIDES:
            part = by_side[by_side["negation_side"] == side]
            if len(part):
                n = int(items["negation_side"].eq(side).sum())
                figure_paths[side] = roles_layers_heatmap(
                    relabel_roles(role_matrix(part), cfg), run.figure_path(f"heatmap_{side}.png"),
                    f"{SIDE_TITLES[side]} (n = {n}): effect by role and layer", xlabel=xlabel)
        figure_paths["all"] = roles_layers_heatmap(
            relabel_roles(role_matrix(role_table(cells)), cfg), run.figure_path("heatmap_all.png"),
            f"all items (n = {len(items)}): effect by role and layer", xlabel=xlabel)
        written += list(figure_paths.values())
    report = _report(run, ctx, cells, items, by_side, inv, why_not, excluded, figure_paths)
    written.append(report.write(run.path / "report.md"))
    return written


def _report(run, ctx, cells, items, by_side, inv, why_not, excluded, figures) -> Report:
    cfg, args = ctx.model.cfg, ctx.args
    effect_name = "CTE = (S*(A) - S(A)) / (S(N) - S(A))" if args.mode == "patch" and args.direction == "denoise" else \
        "effect = (mean S*(base) - mean S(base)) / (mean S(source) - mean S(base))"
    rep = Report(f"Causal tracing: {args.task}, {args.model}")
    rep.heading("Model and weights").bullets([
        f"model: `{args.model}`; weights: `{cfg.pretrained or 'random init'}`"
        + (" (random weights: these numbers say nothing about trained CLIP)" if not cfg.pretrained or "random" in str(cfg.pretrained) else ""),
        f"weights fingerprint (sha256 over the loaded parameters, `interp.weights_fingerprint`): "
        f"`{ctx.settings['weights_fingerprint'][:16]}...`"
        + (f"; weights file sha256 `{cfg.extra['weights_sha256']}`" if "weights_sha256" in cfg.extra else "")
        + f"; dtype {args.dtype}; seed {args.seed}",
        f"{cfg.n_layers} layers, d_model {cfg.d_model}, {'causal' if cfg.causal else 'bidirectional'}, pool {cfg.pool}",
    ])
    if ctx.target.kind == "image":
        target_text = f"image: S = exp(logit_scale) * cos(text, image), images from `{ctx.target.source}`"
    else:
        target_text = "text: S(x) = cos(x, e_N) - cos(x, e_A) (no images). " + TEXT_MODE_NOTE
    setup = [f"target: {target_text}", f"mode: {args.mode}, direction: {args.direction}, kind: {args.kind}, window: {args.window}",
             f"effect: {effect_name}; layer axis: {residual_axis_text(cfg) if args.kind == 'resid' else 'blocks 0..L-1'}"]
    if ctx.noise_info:
        ni = ctx.noise_info
        calibrated_on = {"corrupted": "the std of the noised roles' token embeddings (ROME's rule)",
                         "all_tokens": "the std of every token of both sentences (toolkit option)"}
        setup.append(f"noise: {ni['samples']} seeded draws of std {ni['noise_std']:.4g} = {ni['noise_scale']} x "
                     f"{ni['embedding_std']:.4g}, {calibrated_on.get(ni.get('noise_calibration'), 'token-embedding std')}, "
                     f"on roles {', '.join(ni['noise_roles'])}; clean sentence = N")
    if "preprocess" in ctx.settings:
        setup.append(f"image preprocessing: `{ctx.settings['preprocess']}`")
    if args.segment:
        setup.append(f"segment: only items with segment `{args.segment}`")
    if "preset" in ctx.settings:
        setup.append(preset_sentence(ctx.settings))
    rep.heading("Setup").bullets(setup)

    counts = ctx.counts
    count_rows = [
        ("raw items", counts.get("raw"), counts.get("raw_caption"), counts.get("raw_foil")),
        ("valid (mturk.caption >= 2)", counts.get("valid"), counts.get("valid_caption"), counts.get("valid_foil")),
        ("minimal pairs", counts.get("minimal_pairs"), counts.get("minimal_pairs_caption"), counts.get("minimal_pairs_foil")),
        ("token-aligned", counts.get("minimal_pairs", 0) - len(ctx.rejected), None, None),
        ("traced (this report)", len(items), int(items["negation_side"].eq("caption").sum()), int(items["negation_side"].eq("foil").sum())),
    ]
    count_rows = [tuple("" if v is None else str(v) for v in row) for row in count_rows]
    rep.heading("Items").table(pd.DataFrame(count_rows, columns=["stage", "n", "negation in caption", "negation in foil"]))
    stage_counts = excluded.groupby(["stage"]).size().reset_index(name="n") if len(excluded) else pd.DataFrame(columns=["stage", "n"])
    rep.paragraph(f"{len(excluded)} items not traced (every one listed with its reason in `exclusions.csv`):")
    if len(stage_counts):
        rep.table(stage_counts)
    if len(ctx.rejected):
        rep.table(pd.DataFrame(ctx.rejected[:20], columns=["item_id", "alignment failure"]),
                  caption="Items that failed token alignment (first 20):")
    if ctx.target.kind == "image" and ctx.d_all is not None:
        summary = summarize(ctx.d_all, "image", groups=list(ctx.sides_all))
        seg = summary["segments"]
        rep.heading("Scores against the images (all token-aligned items)").bullets([
            f"pairwise accuracy acc_r = {summary['accuracy']:.4f} (n = {summary['n']})",
            f"segments: {seg['correct']} correct / {seg['ambiguous']} ambiguous / {seg['incorrect']} incorrect",
        ] + [f"negation in {g}: acc_r = {v['accuracy']:.4f} (n = {v['n']})" for g, v in summary["by_group"].items()])
    else:
        rep.heading("Accuracy and segments").paragraph(f"Not reported: {TEXT_MODE_NOTE}.")

    rep.heading("Effect by role and layer")
    rep.paragraph("Rows: the 8 token roles; a role's value is the mean effect over all its (item, position) "
                  "cells, so 'further' tokens weigh by each item's count of them. n below = items."
                  + (f" {special_tokens_text(cfg)} are this model's special tokens (the CSVs call them SOT/EOT)."
                     if role_names(cfg) else ""))
    for side in NEGATION_SIDES:
        part = by_side[by_side["negation_side"] == side]
        if not len(part):
            continue
        n = int(items["negation_side"].eq(side).sum())
        rep.heading(f"{SIDE_TITLES[side]} (n = {n})", level=3)
        if side in figures:
            rep.image(figures[side], f"heatmap {side}", relative_to=run.path)
        rep.table(relabel_roles(role_matrix(part), cfg), floatfmt=".2f", index=True)
    rep.heading("Sanity invariants")
    if len(inv):
        rep.paragraph("Measured on every traced item (max |effect - expected| over the cells the invariant covers):")
        rep.table(inv, floatfmt=".3g")
        skipped = []
        if not cfg.causal:
            skipped.append(f"{special_tokens_text(cfg).split('/')[0]}/there/is-are rows = 0: not checked, the encoder is bidirectional (later tokens reach the prefix)")
        if cfg.pool not in POSITIONAL_POOLS:
            skipped.append(f"({special_tokens_text(cfg).split('/')[1]}, L) = 1 and other positions at L = 0: not checked, pool '{cfg.pool}' reads every position")
        if skipped:
            rep.bullets(skipped)
    else:
        rep.paragraph(why_not or "not checked")
    stats = ctx.stats
    rep.heading("Run").bullets([
        f"this invocation: {stats.items_computed} items traced in {stats.seconds:.1f} s, {stats.items_skipped} resumed from the table",
        f"cells: {stats.cells_forward} computed by a forward, {stats.cells_shortcut} settled exactly by the shortcuts",
        "files: cells.csv, items.csv, roles_all.csv, roles_by_side.csv, layers.csv, invariants.csv, exclusions.csv, config.json",
    ])
    return rep
