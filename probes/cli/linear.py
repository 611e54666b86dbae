"""``python -m probes.linear --task existence``: controlled probes for "this sentence is negated".

Data: the VALSE existence minimal pairs (docs/data.md), token-aligned by the model's own
tokenizer; each pair gives a negated sentence N (label 1) and its affirmative A (label 0), grouped by
item so a pair never straddles CV folds. Per role (negator slot, first subject token, period, the
encoder's pooled read-out, ...) and layer: accuracy, control accuracy, selectivity. The direction of
the chosen (role, layer) is then checked causally: removed from N and added to A at that layer
through a hook, with the text target score ``cos(x, e_N) - cos(x, e_A)`` (or CLIP's S with images).

Writes a run directory under the toolkit's run contract (:class:`interp.runs.rundir.RunDir`):
``config.json`` (settings, arguments, versions, preset), ``items/`` (one file per finished
(role, layer) fit: a killed run loses at most the fit in flight and resumes from the others),
``probe.csv`` (one row per role x layer), ``directions.csv`` + ``directions.npz`` (the exported
directions), ``causal.csv`` (one row per sentence x direction kind), ``rejected.csv`` (pairs that
could not be token-aligned), ``figures/`` and ``report.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

# Light imports only at module level (--help must not wait for torch, pandas or scikit-learn).
from interp.cli.common import (
    add_model_args,
    add_run_args,
    check_model_args,
    load_model_from_args,
    progress_enabled,
    run_cli,
    run_settings,
)
from interp.cli.validate import UsageParser, at_least, positive_number, writable_out
from interp.presets import preset_record, preset_sentence
from interp.runs.cluster import add_cluster_arg, check_cluster, open_executor
from probes.linear.defaults import DEFAULT_C, DEFAULT_FOLDS

if TYPE_CHECKING:
    import pandas as pd
    import torch

    from interp.runs.rundir import RunDir

log = logging.getLogger(__name__)

TOOL = "probes.linear"
POOLED = "pooled"
# A finished fit's item row is its probe.csv row plus these columns of directions.csv and the
# direction itself (column "direction", JSON, whose floats read back exactly).
DIRECTION_COLUMNS = ("mean_pos", "mean_neg", "gap", "train_accuracy")
DEFAULT_ROLES = ("negator", "first_subject", "period", POOLED)
TASKS = ("existence",)


def build_parser() -> argparse.ArgumentParser:
    p = UsageParser(prog="python -m probes.linear", description=__doc__.split("\n\n")[0])
    add_model_args(p)
    p.add_argument("--task", required=True, choices=TASKS, help="probing task (existence: negated vs affirmative)")
    p.add_argument("--roles", default=",".join(DEFAULT_ROLES),
                   help="comma-separated token roles to probe (SOT, there, is/are, negator, first_subject, "
                        f"further, period, EOT, {POOLED} = the encoder's own pooling); default %(default)s")
    p.add_argument("--layers", default="all", help="residual states to probe: 'all' or e.g. 0,2,4 (default all)")
    p.add_argument("--folds", type=int, default=DEFAULT_FOLDS, help="grouped CV folds (default %(default)s)")
    p.add_argument("--controls", type=int, default=1, help="control-label draws to average (default 1)")
    p.add_argument("--control", choices=("permuted", "type"), default="permuted",
                   help="control task: permuted labels, or one random label per token type at the probed "
                        "position (Hewitt & Liang); default permuted")
    p.add_argument("--C", type=float, default=DEFAULT_C, help="inverse L2 strength of the probe (default 1)")
    p.add_argument("--causal-role", default=POOLED, help="role whose direction is checked causally (default pooled)")
    p.add_argument("--causal-layer", default="best",
                   help="layer of the causal check: 'best' (highest selectivity of --causal-role) or a number")
    p.add_argument("--images", metavar="DIR", help="Visual7W images: score with CLIP's S instead of the text target")
    p.add_argument("--limit", type=int, help="use only the first N aligned pairs (smoke runs)")
    p.add_argument("--valse-dir", help="folder holding VALSE existence.json (default: the toolkit's lookup order)")
    p.add_argument("--batch-size", type=int, default=64, help="sentences per forward pass (default 64)")
    add_run_args(p, out_help="run directory (one item per finished (role, layer) fit)")
    add_cluster_arg(p)
    return p


def _parse_layers(spec: str, n_layers: int) -> list[int]:
    from probes.linear.probe import ProbeError

    if spec == "all":
        return list(range(n_layers + 1))
    try:
        layers = sorted({int(x) for x in spec.split(",")})
    except ValueError as exc:
        raise ProbeError(f"--layers {spec!r} is not 'all' or comma-separated integers") from exc
    bad = [x for x in layers if not 0 <= x <= n_layers]
    if bad:
        raise ProbeError(f"--layers {bad} outside 0..{n_layers} (the model has {n_layers} blocks)")
    return layers


def existence_samples(model: Any, data_dir: str | None, limit: int | None):
    """Aligned pairs -> (texts [2n], labels, groups, aligned pairs, rejected table)."""
    import numpy as np
    import pandas as pd

    from interp.data.existence import load_aligned
    from probes.linear.probe import ProbeError

    data = load_aligned(model.tokenizer, data_dir, model_name=model.cfg.model_name)  # the checks trace and ablate make
    aligned, rejected = data.aligned, data.rejected
    if limit is not None:
        aligned = aligned[:limit]
    if len(aligned) < 4:
        raise ProbeError(f"only {len(aligned)} token-aligned pairs: need at least 4 (check --limit)")
    texts, labels, groups = [], [], []
    for a in aligned:
        texts += [a.pair.negated, a.pair.affirmative]
        labels += [1, 0]
        groups += [a.pair.item_id] * 2
    rej = pd.DataFrame([{"item_id": r.pair.item_id, "reason": r.reason} for r in rejected],
                       columns=["item_id", "reason"])
    return texts, np.array(labels), np.array(groups), aligned, rej


def _role_positions(aligned: Sequence[Any], role: str) -> list[list[int]]:
    out = []
    for a in aligned:
        pos = list(a.positions(role))
        out += [pos, pos]  # N and A share roles
    return out


def _score_fn(model: Any, args: argparse.Namespace, texts: list[str], aligned: Sequence[Any]):
    """(score function over final embeddings in ``texts`` order, target description)."""

    from interp.data.scoring import image_target_directions, score, text_target_directions
    from probes.embeddings import encode_texts

    if args.images:
        from probes.embeddings import embed_image_files

        img = embed_image_files(args.model, args.pretrained, args.images, [a.pair.image_file for a in aligned],
                                device=args.device, batch_size=args.batch_size, progress=progress_enabled(args))
        direction = image_target_directions(img.double(), model.logit_scale.double()).repeat_interleave(2, 0)
        target = "image: S = exp(logit_scale) * cos(text, image)"
    else:
        e = encode_texts(model, texts, batch_size=args.batch_size).final.double()
        direction = text_target_directions(e[0::2], e[1::2]).repeat_interleave(2, 0)
        target = "text: cos(x, e_N) - cos(x, e_A) of the sentence's own pair"

    def fn(emb: torch.Tensor) -> torch.Tensor:
        return score(emb.double(), direction)

    return fn, target


def check_args(args: argparse.Namespace) -> list[str]:
    """Every check that needs no model, run before it loads (and before --out is made); returns the roles."""
    from interp.data.negation import ROLES
    from probes.linear.probe import ProbeError

    at_least(args.limit, "--limit", minimum=4)  # a probe needs at least 4 pairs
    at_least(args.batch_size, "--batch-size")
    at_least(args.folds, "--folds", minimum=2)
    at_least(args.controls, "--controls")
    positive_number(args.C, "--C")
    check_cluster(args.cluster)  # a bad --cluster fails before anything is loaded or written
    roles = [r.strip() for r in args.roles.split(",") if r.strip()]
    bad = [r for r in roles if r not in (*ROLES, POOLED)]
    if bad or not roles or len(set(roles)) != len(roles):
        raise ProbeError(f"--roles {args.roles!r}: choose distinct roles from {', '.join((*ROLES, POOLED))}")
    if args.causal_role not in roles:
        raise ProbeError(f"--causal-role {args.causal_role!r} is not among --roles {roles}")
    if args.control == "type" and POOLED in roles:
        raise ProbeError(f"--control type needs token positions: it is undefined for the {POOLED} role; drop "
                         f"{POOLED} from --roles (and pass another --causal-role), or use --control permuted")
    if args.causal_layer != "best":
        try:
            int(args.causal_layer)
        except ValueError as err:
            raise ProbeError(f"--causal-layer {args.causal_layer!r} is not 'best' or a layer number, e.g. 2") from err
    if args.layers != "all":
        _parse_layers(args.layers, 10**6)  # syntax only: the range needs the model
    if args.images and not Path(args.images).is_dir():
        raise ProbeError(f"--images {args.images} is not a folder: pass the folder holding the images, or drop it")
    writable_out(args.out)
    check_model_args(args)
    return roles


def _check_type_controls(role: str, labels: Any, types: list[int], args: argparse.Namespace) -> None:
    """Refuse a per-type control that draws one class only (e.g. a role with one token type, such as
    the period): the control probe could not be fitted, and the fold error would blame --folds."""
    import numpy as np

    from probes.linear.probe import ProbeError, control_labels

    for draw in range(args.controls):  # the draws probe_layers makes
        if len(np.unique(control_labels(labels, args.seed + draw, types))) < 2:
            raise ProbeError(
                f"--control type: role {role!r} has {len(set(types))} token type(s) and control draw {draw} "
                f"(seed {args.seed + draw}) gives them all one label, so no control probe can be fitted: drop "
                f"{role} from --roles, or use --control permuted")


def plan_fits(model: Any, args: argparse.Namespace, roles: list[str], layers: list[int], texts: list[str],
              aligned: Sequence[Any], labels: Any) -> tuple[dict[str, Any], list[tuple[str, Any, Any]]]:
    """The role positions and the probed roles (role, kept sentences mask, control types), with every
    check that needs the data but no features, so a bad choice fails before --out is made."""
    import numpy as np

    from probes.linear.probe import ProbeError

    positions = {r: (None if r == POOLED else _role_positions(aligned, r)) for r in roles}
    tokens = model.to_token_batch(texts).tokens if args.control == "type" else None
    probed = []
    for role in roles:
        keep = np.ones(len(texts), dtype=bool) if positions[role] is None else \
            np.array([len(p) > 0 for p in positions[role]])
        if keep.sum() < 2 * args.folds:
            log.warning("role %s: only %d sentences have it; skipped", role, keep.sum())
            continue
        types = None if tokens is None else [int(tokens[j, positions[role][j][0]]) for j in np.flatnonzero(keep)]
        if types is not None:
            _check_type_controls(role, labels[keep], types, args)
        probed.append((role, keep, types))
    if not probed:
        raise ProbeError("no role had enough sentences to probe: pass more pairs (--limit) or fewer --folds")
    if args.causal_role not in [role for role, _, _ in probed]:
        raise ProbeError(f"--causal-role {args.causal_role!r} was skipped (too few sentences have it)")
    if args.causal_layer != "best" and int(args.causal_layer) not in layers:
        raise ProbeError(f"--causal-layer {args.causal_layer} is not among the probed --layers {layers}")
    cpos = positions[args.causal_role]
    if cpos is not None and not all(len(p) for p in cpos):
        raise ProbeError(f"--causal-role {args.causal_role!r} is missing in some sentences: choose a role every "
                         "sentence has (negator, first_subject, period, EOT, pooled)")
    return positions, probed


def fit_id(role: str, layer: int) -> str:
    """The item id of one (role, layer) fit, also its key in directions.npz."""
    return f"{role}/L{layer}"


def _item_rows(row: dict[str, Any], direction: Any) -> pd.DataFrame:
    """One finished fit as an item table row: the probe.csv row, the direction's projections and the
    direction itself (JSON floats, which read back bit for bit)."""
    import pandas as pd

    return pd.DataFrame([{
        "item_id": fit_id(row["role"], row["layer"]), **row,
        **{k: getattr(direction, k) for k in DIRECTION_COLUMNS},
        "direction": json.dumps(direction.direction.tolist()),
    }])


def run(args: argparse.Namespace, argv: Sequence[str] | None = None) -> Path:
    """Load, check, then probe into the run directory (resuming its finished fits); returns it."""
    roles = check_args(args)
    from interp.models.loading import weights_fingerprint
    from interp.runs.rundir import RunDir

    model = load_model_from_args(args)
    layers = _parse_layers(args.layers, model.cfg.n_layers)
    texts, labels, groups, aligned, rejected = existence_samples(model, args.valse_dir, args.limit)
    positions, probed = plan_fits(model, args, roles, layers, texts, aligned, labels)
    settings = run_settings(args, pretrained=str(model.cfg.pretrained), weights_fingerprint=weights_fingerprint(model))
    settings.update(preset_record({"linear_probe": {"classifier": "logistic_regression", "cv_grouping": "item",
                                                    "control": args.control}}))
    info = {"argv": list(sys.argv[1:] if argv is None else argv), "device": args.device, "cluster": args.cluster,
            "threads": getattr(args, "threads_chosen", None), "threads_reason": getattr(args, "threads_reason", None)}
    with RunDir(args.out, TOOL, settings, info, arguments=vars(args), overwrite=args.overwrite, resumable=True) as run:
        _probe_into(run, args, model, layers, texts, labels, groups, aligned, rejected, positions, probed)
        run.finish()
    log.info("wrote %s", run.path / "report.md")
    return run.path


def _probe_into(run: RunDir, args: argparse.Namespace, model: Any, layers: list[int], texts: list[str],
                labels: Any, groups: Any, aligned: Sequence[Any], rejected: pd.DataFrame,
                positions: dict[str, Any], probed: list[tuple[str, Any, Any]]) -> None:
    """Fit the (role, layer) probes ``run`` has not finished (each stored as soon as it is done), then
    write the tables, the causal check, the figures and the report from every stored fit."""
    import numpy as np
    import pandas as pd

    from probes.ideal_words.analysis import is_random_init, model_label
    from probes.linear.probe import causal_check, collect_role_features, fit_direction, probe_one_layer

    log.info("%s: %d pairs, roles %s, layers %s", model_label(model), len(aligned), list(positions), layers)
    feats = collect_role_features(model, texts, positions, layers=layers, batch_size=args.batch_size,
                                  progress=progress_enabled(args))
    order = [fit_id(role, layer) for role, _, _ in probed for layer in layers]
    done = run.items.done()
    fits = [(role, layer, feats[role][i:i + 1, keep], labels[keep], groups[keep], types)
            for role, keep, types in probed for i, layer in enumerate(layers) if fit_id(role, layer) not in done]
    log.info("%d (role, layer) fits, %d to run", len(order), len(fits))
    shared = {"n_folds": args.folds, "C": args.C, "seed": args.seed, "n_controls": args.controls}
    with open_executor(args.cluster) as executor:
        for _, (row, direction) in executor.map(probe_one_layer, fits, shared, name="probe-fit"):
            run.items.write(fit_id(row["role"], row["layer"]), _item_rows(row, direction))

    fitted = run.items.read(order=order)  # in (role, layer) order, whatever order the fits finished in
    extra = {"item_id", "direction", *DIRECTION_COLUMNS}
    probe_df = fitted[[c for c in fitted.columns if c not in extra]]
    dir_df = fitted[["role", "layer", *DIRECTION_COLUMNS]]
    directions = {key: np.array(json.loads(d), dtype=np.float64) for key, d in zip(fitted["item_id"], fitted["direction"])}

    sub = probe_df[probe_df["role"] == args.causal_role]
    causal_layer = int(sub.loc[sub["selectivity"].idxmax(), "layer"]) if args.causal_layer == "best" \
        else int(args.causal_layer)
    i = layers.index(causal_layer)
    probe = fit_direction(feats[args.causal_role][i], labels, C=args.C, layer=causal_layer, role=args.causal_role)
    score_fn, target = _score_fn(model, args, texts, aligned)
    causal = pd.DataFrame(causal_check(model, texts, labels, probe, score_fn, positions[args.causal_role],
                                       seed=args.seed, batch_size=args.batch_size))
    causal.insert(0, "item_id", groups[causal["sample"].to_numpy()])
    causal.insert(1, "negation_side", np.repeat([a.pair.negation_side for a in aligned], 2)[causal["sample"].to_numpy()])
    causal.insert(2, "text", [texts[s] for s in causal["sample"]])

    summary = {
        "model": {"label": model_label(model), "random_init": is_random_init(model), "config": model.cfg.to_dict()},
        "n_pairs": len(aligned), "n_rejected": len(rejected), "layers": layers, "roles": list(positions),
        "causal": {"role": args.causal_role, "layer": causal_layer, "target": target,
                   "shift": "class-mean gap along the unit probe direction; removed from N, added to A",
                   "control": "random unit direction, same shift"},
    }
    run.write_table(probe_df, "probe.csv")
    run.write_table(dir_df, "directions.csv")
    from interp.files import atomic_path

    with atomic_path(run.file("directions.npz")) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **directions)
    run.write_table(causal, "causal.csv")
    run.write_table(rejected, "rejected.csv")
    draw_figures(run, probe_df, causal)
    run.write_text(render_markdown(summary, probe_df, causal, run.settings), "report.md")
    run.record(summary=summary)


def causal_summary(causal: pd.DataFrame) -> pd.DataFrame:
    return (causal.groupby(["direction", "intervention"])
            .agg(n=("change", "size"), mean_change=("change", "mean"), mean_abs_change=("change", lambda s: s.abs().mean()),
                 sign_flip_rate=("sign_flipped", "mean"), mean_score_clean=("score_clean", "mean"))
            .reset_index())


def draw_figures(run: RunDir, probe_df: pd.DataFrame, causal: pd.DataFrame) -> None:
    """Figures drawn only from the tables."""
    from interp.runs.plots import pyplot_and_seaborn

    plt, sns = pyplot_and_seaborn()
    long = probe_df.melt(id_vars=["role", "layer"], value_vars=["accuracy", "control_accuracy", "selectivity"],
                         var_name="measure")
    g = sns.relplot(data=long, x="layer", y="value", hue="role", col="measure", kind="line", marker="o", height=3.5)
    for ax in g.axes.flat:
        ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
    run.save_figure(g.figure, "probe_by_layer.png")
    fig, ax = plt.subplots(figsize=(6, 4))
    sns.stripplot(data=causal, x="intervention", y="change", hue="direction", dodge=True, size=3, alpha=0.6, ax=ax)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_title("score change when the direction is removed (N) / added (A)")
    run.save_figure(fig, "causal.png")


def render_markdown(summary: dict[str, Any], probe_df: pd.DataFrame, causal: pd.DataFrame,
                    settings: dict[str, Any]) -> str:
    """report.md from the tables, the run's summary and its settings (which carry the preset)."""
    from interp.runs.report import markdown_table

    m = summary["model"]
    lines = ["# Linear probe report: existence (negated vs affirmative)", "",
             f"**Model:** {m['label']}" + ("  (random weights: no number here is a result about a trained model)"
                                           if m["random_init"] else ""), "",
             f"{summary['n_pairs']} token-aligned VALSE existence pairs ({summary['n_rejected']} rejected, see "
             "rejected.csv); each pair gives one negated (label 1) and one affirmative (label 0) sentence; "
             f"grouped {probe_df['n_folds'].iloc[0]}-fold CV by item; control = {probe_df['control'].iloc[0]} labels; "
             "selectivity = accuracy - control accuracy.", "", preset_sentence(settings), "",
             "## Selectivity per role and layer", ""]
    piv = probe_df.pivot_table(index="role", columns="layer", values="selectivity")
    piv.columns = [f"L{c}" for c in piv.columns]
    lines += [markdown_table(piv.reset_index()), "", "## Accuracy per role and layer", ""]
    piv = probe_df.pivot_table(index="role", columns="layer", values="accuracy")
    piv.columns = [f"L{c}" for c in piv.columns]
    lines += [markdown_table(piv.reset_index()), "", "![probes](figures/probe_by_layer.png)", ""]
    c = summary["causal"]
    lines += [f"## Causal check: role {c['role']}, layer {c['layer']}", "",
              f"Target: {c['target']}. Shift: {c['shift']}; control: {c['control']}.", "",
              markdown_table(causal_summary(causal)), "", "![causal](figures/causal.png)", "",
              "Tables: probe.csv, directions.csv (+ directions.npz), causal.csv, rejected.csv; one file per "
              "(role, layer) fit in items/; settings and package versions in config.json."]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    run(build_parser().parse_args(argv), argv)
    return 0


def cli(argv: Sequence[str] | None = None) -> int:
    return run_cli(main, argv)
