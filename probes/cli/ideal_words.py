"""``python -m probes.ideal_words``: ideal-word report for concept sets on a hooked encoder.

Writes a run directory: ``config.json`` (arguments, models, concept sets, versions), tables (``metrics.csv`` one row per
model x concept set x layer; ``residuals.csv`` one row per model x set x layer x combination;
``ideal_words.csv``; ``idioms.csv``; with images ``zero_shot.csv``/``zero_shot_predictions.csv``;
with ``--debias-class`` ``debias.csv``), ``figures/*.png`` drawn from those tables, and ``report.md``.
Every row names the model it came from; a trained model is always reported beside a random-init
baseline of the same architecture.
"""

from __future__ import annotations

import argparse
import copy
import logging
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from interp.cli.common import add_model_args, add_run_args, apply_threads, check_positive, load_model_from_args, run_cli, run_settings
from probes.concepts import ConceptSet, builtin_names, load_concept_set, load_idiom_tests
from probes.ideal_words.decomposition import DecompositionError, alphas_from_mapping, parse_alpha_args
from probes.ideal_words.analysis import (
    embed_concept_set,
    ideal_word_rows,
    idiom_rows,
    is_random_init,
    metric_rows,
    model_label,
    residual_rows,
)
from probes.ideal_words.uses import LabelError, debias_tables, load_image_embeddings, read_labels, zero_shot_tables
from interp.models.loading import weights_fingerprint
from interp.runs.rundir import RunDir, file_sha256
from probes.cli.report import markdown_table, pyplot

log = logging.getLogger(__name__)
TOOL = "ideal_words"

TRAINED, RANDOM = "model", "random-init baseline"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m probes.ideal_words", description=__doc__.split("\n\n")[0])
    add_model_args(p)
    p.add_argument("--concepts", action="append", metavar="NAME|FILE",
                   help=f"concept set: a built-in ({', '.join(builtin_names())}) or a YAML/JSON file; "
                        "repeatable (default: every built-in)")
    p.add_argument("--alpha", action="append", default=[], metavar="FACTOR:VALUE=W[,VALUE=W]",
                   help="non-uniform weights for a factor (values not named get 0), e.g. object:house=1; "
                        "every --concepts set must have that factor")
    p.add_argument("--idioms", default="builtin", metavar="builtin|FILE|none",
                   help="idiom tests to run (default: the built-in ones)")
    p.add_argument("--no-baseline", action="store_true",
                   help="skip the random-init baseline (it is never run when the model itself is random)")
    p.add_argument("--no-layers", action="store_true", help="final embedding only (no per-layer curves)")
    g = p.add_argument_group("images (optional: compositional zero-shot classification, debiasing)")
    g.add_argument("--image-embeddings", metavar="FILE", help=".npy/.npz/.pt image embeddings from the same model")
    g.add_argument("--images", metavar="DIR", help="folder of images to embed with the model's image tower "
                   "(open_clip models only)")
    g.add_argument("--labels", metavar="CSV", help="CSV with column 'image' and one column per factor")
    g.add_argument("--label-set", metavar="NAME", help="which --concepts set the labels use (default: the first)")
    g.add_argument("--debias-class", metavar="FACTOR",
                   help="debias this factor's class prompts by averaging over the other factors")
    p.add_argument("--batch-size", type=int, default=64, help="texts per forward pass (default 64)")
    add_run_args(p, out_help="run directory for the report")
    return p


def random_baseline(model: Any, seed: int) -> Any:
    """The same architecture with fresh random weights (``init_weights``: normal std 0.02, LayerNorm
    identity), seeded; the tokenizer is shared."""
    base = copy.deepcopy(model)
    base.init_weights(seed=seed)
    base.cfg = copy.deepcopy(model.cfg)
    base.cfg.pretrained = f"random-init (init_weights seed {seed})"
    return base


def _alphas_for(cs: ConceptSet, spec: dict[str, dict[str, float]]) -> list | None:
    if not spec:
        return None
    return alphas_from_mapping([f.values for f in cs.factors], cs.factor_names, spec)


def _image_inputs(args: argparse.Namespace, sets: list[ConceptSet]) -> tuple[ConceptSet, Any, pd.DataFrame] | None:
    if not (args.image_embeddings or args.images):
        if args.labels:
            raise LabelError("--labels given without --image-embeddings or --images: pass the images too")
        return None
    if not args.labels:
        raise LabelError("image inputs need --labels CSV (column 'image' plus one column per factor)")
    names = {cs.name: cs for cs in sets}
    if args.label_set and args.label_set not in names:
        raise LabelError(f"--label-set {args.label_set!r} is not one of the --concepts sets {list(names)}")
    cs = names[args.label_set] if args.label_set else sets[0]
    if args.image_embeddings:
        emb, ids = load_image_embeddings(args.image_embeddings)
        labels = read_labels(args.labels, cs, image_ids=ids, n_images=emb.shape[0])
        return cs, emb, labels
    from probes.embeddings import embed_image_files

    labels = read_labels(args.labels, cs)
    images = embed_image_files(args.model, args.pretrained, args.images, labels["image"].tolist(),
                               device=args.device, batch_size=args.batch_size)
    return cs, images, labels


def run(args: argparse.Namespace) -> Path:
    """Compute every table and write the report; returns the report directory."""
    check_positive(args.batch_size, "--batch-size")
    apply_threads(args)
    spec = parse_alpha_args(args.alpha)
    sets = [load_concept_set(c) for c in (args.concepts or builtin_names())]
    if len({cs.name for cs in sets}) != len(sets):
        raise DecompositionError(f"two --concepts sets share a name: {[cs.name for cs in sets]}")
    alphas = {cs.name: _alphas_for(cs, spec) for cs in sets}
    idioms = [] if args.idioms == "none" else load_idiom_tests(None if args.idioms == "builtin" else args.idioms)
    if args.debias_class and not any(args.debias_class in cs.factor_names for cs in sets):
        raise DecompositionError(f"--debias-class {args.debias_class!r} is not a factor of any --concepts set")
    model = load_model_from_args(args)
    models = [(TRAINED, model)]
    if not is_random_init(model) and not args.no_baseline:
        models.append((RANDOM, random_baseline(model, args.seed)))
    image_inputs = _image_inputs(args, sets)
    settings = run_settings(args, concepts=[cs.to_dict() for cs in sets], idiom_tests=[t.name for t in idioms],
                            weights_fingerprint=weights_fingerprint(model),
                            image_embeddings=file_sha256(args.image_embeddings) if args.image_embeddings else None,
                            labels=file_sha256(args.labels) if args.labels else None)
    with RunDir(args.out, TOOL, settings, arguments=vars(args), overwrite=args.overwrite, resumable=False) as rd:
        if rd.complete:
            log.info("%s already holds this run (same settings): nothing to do", rd.path)
            return rd.path
        frames, config = _compute(args, sets, alphas, idioms, models, image_inputs, spec)
        rd.record(**config)
        for name, df in frames.items():
            rd.write_table(df, f"{name}.csv")
        draw_figures(rd, frames)
        rd.write_text(render_markdown(config, frames), "report.md")
        rd.finish()
    return rd.path


def _compute(args, sets, alphas, idioms, models, image_inputs, spec) -> tuple[dict[str, pd.DataFrame], dict[str, Any]]:
    """Every table of the report, and the description of the run recorded in config.json."""
    tables: dict[str, list[pd.DataFrame] | list[dict]] = {k: [] for k in
                                                          ("metrics", "residuals", "ideal_words", "idioms")}
    zs_acc, zs_pred, debias = [], [], []
    for kind, m in models:
        tags = {"model_kind": kind, "model": model_label(m)}
        for cs in sets:
            log.info("%s: concept set %s (%d prompts)", tags["model"], cs.name, cs.n_combinations)
            emb = embed_concept_set(m, cs, layers=not args.no_layers, batch_size=args.batch_size)
            tables["metrics"] += metric_rows(emb, alphas[cs.name], **tags)
            tables["residuals"] += residual_rows(emb, alphas[cs.name], **tags)
            tables["ideal_words"] += ideal_word_rows(emb, alphas[cs.name], **tags)
            if image_inputs is not None and cs.name == image_inputs[0].name and kind == TRAINED:
                acc, pred = zero_shot_tables(image_inputs[1], image_inputs[2], emb, **tags)
                zs_acc.append(acc)
                zs_pred.append(pred)
            if args.debias_class and args.debias_class in cs.factor_names:
                imgs = image_inputs if image_inputs is not None and cs.name == image_inputs[0].name and kind == TRAINED else None
                debias.append(debias_tables(emb, args.debias_class, imgs[1] if imgs else None,
                                            imgs[2] if imgs else None, concept_set=cs.name, **tags))
        tables["idioms"] += idiom_rows(m, idioms, **tags)
    frames = {k: pd.DataFrame(v) for k, v in tables.items()}
    if zs_acc:
        frames["zero_shot"] = pd.concat(zs_acc, ignore_index=True)
        frames["zero_shot_predictions"] = pd.concat(zs_pred, ignore_index=True)
    if debias:
        frames["debias"] = pd.concat(debias, ignore_index=True)
    config = {
        "models": {kind: {"label": model_label(m), "config": m.cfg.to_dict()} for kind, m in models},
        "concept_sets": [cs.to_dict() for cs in sets],
        "idiom_tests": [t.name for t in idioms],
        "alpha": spec,
        "normalisation": "every embedding L2-normalised once (per layer for residuals), never re-normalised",
        "baseline": "same architecture, HookedTextEncoder.init_weights(seed)" if len(models) > 1 else None,
    }
    return frames, config


def draw_figures(rep: RunDir, frames: dict[str, pd.DataFrame]) -> None:
    """Figures drawn only from the tables."""
    plt, sns = pyplot()
    m = frames["metrics"]
    layers = m[m["layer"] != "final"].copy()
    if not layers.empty:
        layers["layer"] = layers["layer"].astype(int)
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for ax, col in zip(axes, ("IW", "IW_rel")):
            sns.lineplot(data=layers, x="layer", y=col, hue="concept_set", style="model_kind", marker="o", ax=ax)
            ax.set_title(f"{col} of the pooled residual per layer")
            ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
        rep.save_figure(fig, "iw_by_layer.png")
    final = m[m["layer"] == "final"].melt(id_vars=["model_kind", "concept_set"], value_vars=["IW", "RW", "Avg"],
                                          var_name="metric")
    g = sns.catplot(data=final, x="concept_set", y="value", hue="model_kind", col="metric", kind="bar",
                    height=3.5, sharey=False)
    g.set_xticklabels(rotation=30)
    rep.save_figure(g.figure, "metrics_final.png")
    if not frames["idioms"].empty:
        idi = frames["idioms"].melt(id_vars=["model_kind", "test"], value_vars=["idiom_IW", "control_IW"],
                                    var_name="set", value_name="IW")
        g = sns.catplot(data=idi, x="test", y="IW", hue="set", col="model_kind", kind="bar", height=3.5)
        rep.save_figure(g.figure, "idioms.png")


def render_markdown(config: dict[str, Any], frames: dict[str, pd.DataFrame]) -> str:
    models = config["models"]
    lines = ["# Ideal-word report", ""]
    lines.append("**Model:** " + models[TRAINED]["label"] + (
        "  (random weights: no number here is a result about a trained model)"
        if RANDOM not in models else "; baseline: " + models[RANDOM]["label"]))
    lines += ["", "Embeddings are L2-normalised once and never re-normalised. IW = mean distance of each "
              "embedding to its ideal-word approximation; RW = distance to the mean of the single-word "
              "embeddings; Avg = mean squared pairwise distance; rank vs bound 1 + sum(n_i - 1); r2 = share "
              "of the spread around u_0 the decomposition explains.", ""]
    m = frames["metrics"]
    lines += ["## Final embedding", "",
              markdown_table(m[m["layer"] == "final"],
                             ["model_kind", "concept_set", "shape", "IW", "RW", "Avg", "rank", "rank_bound", "r2"]), ""]
    layers = m[m["layer"] != "final"]
    if not layers.empty:
        piv = layers.pivot_table(index=["model_kind", "concept_set"], columns="layer", values="IW_rel")
        piv = piv[sorted(piv.columns, key=int)].reset_index()
        piv.columns = [f"L{c}" if str(c).isdigit() else str(c) for c in piv.columns]
        lines += ["## IW / mean distance to u_0, per layer (pooled residual)", "",
                  markdown_table(piv), "", "![IW by layer](figures/iw_by_layer.png)", ""]
    if not frames["idioms"].empty:
        lines += ["## Idiom residual test", "", "Idioms should break compositionality: with trained weights "
                  "the idiom set's IW should exceed its literal control's.", "",
                  markdown_table(frames["idioms"], ["model_kind", "test", "idiom_IW", "control_IW", "difference"]),
                  "", "![idioms](figures/idioms.png)", ""]
    if "zero_shot" in frames:
        lines += ["## Compositional zero-shot classification", "",
                  markdown_table(frames["zero_shot"], ["method", "target", "accuracy", "n_images"]), ""]
    else:
        lines += ["No images given: compositional zero-shot classification was not run "
                  "(pass --image-embeddings or --images with --labels).", ""]
    if "debias" in frames:
        lines += ["## Debiasing", "", markdown_table(frames["debias"], ["model_kind", "concept_set", "kind", "class", "value"]), ""]
    lines += ["![final metrics](figures/metrics_final.png)", "",
              "Tables: metrics.csv, residuals.csv, ideal_words.csv, idioms.csv" +
              (", zero_shot.csv" if "zero_shot" in frames else "") + "; config.json (arguments, models, versions) beside them."]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    run(args)
    return 0


def cli(argv: Sequence[str] | None = None) -> int:
    return run_cli(main, argv)
