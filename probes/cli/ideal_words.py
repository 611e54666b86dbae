"""``python -m probes.ideal_words``: ideal-word report for concept sets on a hooked encoder.

Writes a run directory under the toolkit's run contract (:class:`interp.runs.rundir.RunDir`; a
one-shot run: a rerun with the same settings does nothing, an interrupted run leaves nothing):
``config.json`` (settings, arguments, versions, preset), tables (``metrics.csv`` one row per
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
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

# Light imports only at module level (--help must not wait for torch or pandas).
from interp.cli.common import (add_model_args, add_run_args, check_model_args, load_model_from_args,
                               progress_enabled, run_cli, run_settings)
from interp.cli.validate import UsageParser, at_least, writable_out
from interp.presets import preset_record, preset_sentence
from probes.concepts import ConceptSet, builtin_names, load_concept_set, load_idiom_tests

if TYPE_CHECKING:
    import pandas as pd

    from interp.runs.rundir import RunDir

log = logging.getLogger(__name__)

TOOL = "probes.ideal_words"

TRAINED, RANDOM = "model", "random-init baseline"


def build_parser() -> argparse.ArgumentParser:
    p = UsageParser(prog="python -m probes.ideal_words", description=__doc__.split("\n\n")[0])
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
    add_run_args(p, out_help="run directory for the tables, figures and report")
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
    from probes.ideal_words.decomposition import alphas_from_mapping

    if not spec:
        return None
    return alphas_from_mapping([f.values for f in cs.factors], cs.factor_names, spec)


def _image_inputs(args: argparse.Namespace, sets: list[ConceptSet]) -> tuple[ConceptSet, Callable[[], Any], pd.DataFrame] | None:
    """The label set, a function giving the image embeddings, and the labels (checked against each other).

    An embeddings file is read and checked here; images in a folder are embedded only when the
    function is called (inside the run, so a finished run's rerun does not embed them again).
    """
    from probes.ideal_words.uses import LabelError, load_image_embeddings, read_labels

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
        return cs, lambda: emb, labels
    from probes.embeddings import embed_image_files

    labels = read_labels(args.labels, cs)
    return cs, lambda: embed_image_files(args.model, args.pretrained, args.images, labels["image"].tolist(),
                                         device=args.device, batch_size=args.batch_size,
                                         progress=progress_enabled(args)), labels


def check_args(args: argparse.Namespace) -> None:
    """Every check that needs no model, run before it loads (and before --out is made)."""
    from probes.ideal_words.uses import LabelError

    at_least(args.batch_size, "--batch-size")
    writable_out(args.out)
    if args.labels and not (args.image_embeddings or args.images):
        raise LabelError("--labels given without --image-embeddings or --images: pass the images too")
    for flag, value in (("--image-embeddings", args.image_embeddings), ("--labels", args.labels)):
        if value and not Path(value).is_file():
            raise LabelError(f"{flag} {value} does not exist: pass an existing file")
    if args.images and not Path(args.images).is_dir():
        raise LabelError(f"--images {args.images} is not a folder: pass the folder holding the images")
    check_model_args(args)


def run(args: argparse.Namespace, argv: Sequence[str] | None = None) -> Path:
    """Check the inputs, then compute every table and write the run directory; returns it."""
    check_args(args)
    from interp.files import file_sha256
    from interp.models.loading import weights_fingerprint
    from interp.runs.rundir import RunDir
    from probes.ideal_words.analysis import is_random_init, model_label
    from probes.ideal_words.decomposition import DecompositionError, parse_alpha_args

    spec = parse_alpha_args(args.alpha)
    sets = [load_concept_set(c) for c in (args.concepts or builtin_names())]
    if len({cs.name for cs in sets}) != len(sets):
        raise DecompositionError(f"two --concepts sets share a name: {[cs.name for cs in sets]}")
    alphas = {cs.name: _alphas_for(cs, spec) for cs in sets}
    idioms = [] if args.idioms == "none" else load_idiom_tests(None if args.idioms == "builtin" else args.idioms)
    if args.debias_class and not any(args.debias_class in cs.factor_names for cs in sets):
        raise DecompositionError(f"--debias-class {args.debias_class!r} is not a factor of any --concepts set")
    image_inputs = _image_inputs(args, sets)
    model = load_model_from_args(args)
    with_baseline = not is_random_init(model) and not args.no_baseline
    # The contents behind the file arguments decide the results too: an edited concept, idiom,
    # embeddings or label file is another run, not the finished one.
    settings = run_settings(
        args, pretrained=str(model.cfg.pretrained), weights_fingerprint=weights_fingerprint(model),
        concept_sets=[cs.to_dict() for cs in sets],
        idiom_tests=[{"name": t.name, "idiom": t.idiom.to_dict(), "control": t.control.to_dict()} for t in idioms],
        **{f"{name}_sha256": file_sha256(getattr(args, name)) for name in ("image_embeddings", "labels")
           if getattr(args, name)},
    )
    settings.update(preset_record({"ideal_words": {"alpha": " ".join(args.alpha) if args.alpha else "uniform"}}))
    info = {"argv": list(sys.argv[1:] if argv is None else argv), "device": args.device,
            "threads": getattr(args, "threads_chosen", None), "threads_reason": getattr(args, "threads_reason", None)}
    with RunDir(args.out, TOOL, settings, info, arguments=vars(args), overwrite=args.overwrite, resumable=False) as run:
        if run.complete:
            log.info("%s already holds this run (same settings): nothing to do", run.path)
            return run.path
        models = [(TRAINED, model)] + ([(RANDOM, random_baseline(model, args.seed))] if with_baseline else [])
        frames = compute_tables(args, models, sets, alphas, idioms, image_inputs)
        summary = {
            "models": {kind: {"label": model_label(m), "config": m.cfg.to_dict()} for kind, m in models},
            "alpha": spec,
            "normalisation": "every embedding L2-normalised once (per layer for residuals), never re-normalised",
            "baseline": "same architecture, HookedTextEncoder.init_weights(seed)" if with_baseline else None,
        }
        for name, frame in frames.items():
            run.write_table(frame, f"{name}.csv")
        draw_figures(run, frames)
        run.write_text(render_markdown(summary, frames, run.settings), "report.md")
        run.record(summary=summary)
        run.finish()
    log.info("wrote %s", run.path / "report.md")
    return run.path


def compute_tables(args: argparse.Namespace, models: list[tuple[str, Any]], sets: list[ConceptSet],
                   alphas: dict[str, Any], idioms: list[Any],
                   image_inputs: tuple[ConceptSet, Callable[[], Any], pd.DataFrame] | None) -> dict[str, pd.DataFrame]:
    """Every table of the report, one frame per table name, each row naming its model."""
    import pandas as pd
    from tqdm.auto import tqdm

    from probes.ideal_words.analysis import (
        embed_concept_set,
        ideal_word_rows,
        idiom_rows,
        metric_rows,
        model_label,
        residual_rows,
    )
    from probes.ideal_words.uses import debias_tables, zero_shot_tables

    images = None
    if image_inputs is not None:
        label_set, embed_images, labels = image_inputs
        images = (label_set, embed_images(), labels)
    tables: dict[str, list[dict]] = {k: [] for k in ("metrics", "residuals", "ideal_words", "idioms")}
    zs_acc, zs_pred, debias = [], [], []
    bar = tqdm(total=len(models) * len(sets), desc="concept sets", disable=not progress_enabled(args))
    for kind, m in models:
        tags = {"model_kind": kind, "model": model_label(m)}
        for cs in sets:
            log.info("%s: concept set %s (%d prompts)", tags["model"], cs.name, cs.n_combinations)
            emb = embed_concept_set(m, cs, layers=not args.no_layers, batch_size=args.batch_size)
            tables["metrics"] += metric_rows(emb, alphas[cs.name], **tags)
            tables["residuals"] += residual_rows(emb, alphas[cs.name], **tags)
            tables["ideal_words"] += ideal_word_rows(emb, alphas[cs.name], **tags)
            labelled = images if images is not None and cs.name == images[0].name and kind == TRAINED else None
            if labelled is not None:
                acc, pred = zero_shot_tables(labelled[1], labelled[2], emb, **tags)
                zs_acc.append(acc)
                zs_pred.append(pred)
            if args.debias_class and args.debias_class in cs.factor_names:
                debias.append(debias_tables(emb, args.debias_class, labelled[1] if labelled else None,
                                            labelled[2] if labelled else None, concept_set=cs.name, **tags))
            bar.update()
        tables["idioms"] += idiom_rows(m, idioms, **tags)
    bar.close()
    frames = {k: pd.DataFrame(v) for k, v in tables.items()}
    if zs_acc:
        frames["zero_shot"] = pd.concat(zs_acc, ignore_index=True)
        frames["zero_shot_predictions"] = pd.concat(zs_pred, ignore_index=True)
    if debias:
        frames["debias"] = pd.concat(debias, ignore_index=True)
    return frames


def draw_figures(run: RunDir, frames: dict[str, pd.DataFrame]) -> None:
    """Figures drawn only from the tables."""
    from interp.runs.plots import pyplot_and_seaborn

    plt, sns = pyplot_and_seaborn()
    m = frames["metrics"]
    layers = m[m["layer"] != "final"].copy()
    if not layers.empty:
        layers["layer"] = layers["layer"].astype(int)
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for ax, col in zip(axes, ("IW", "IW_rel")):
            sns.lineplot(data=layers, x="layer", y=col, hue="concept_set", style="model_kind", marker="o", ax=ax)
            ax.set_title(f"{col} of the pooled residual per layer")
            ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
        run.save_figure(fig, "iw_by_layer.png")
    final = m[m["layer"] == "final"].melt(id_vars=["model_kind", "concept_set"], value_vars=["IW", "RW", "Avg"],
                                          var_name="metric")
    g = sns.catplot(data=final, x="concept_set", y="value", hue="model_kind", col="metric", kind="bar",
                    height=3.5, sharey=False)
    g.set_xticklabels(rotation=30)
    run.save_figure(g.figure, "metrics_final.png")
    if not frames["idioms"].empty:
        idi = frames["idioms"].melt(id_vars=["model_kind", "test"], value_vars=["idiom_IW", "control_IW"],
                                    var_name="set", value_name="IW")
        g = sns.catplot(data=idi, x="test", y="IW", hue="set", col="model_kind", kind="bar", height=3.5)
        run.save_figure(g.figure, "idioms.png")


def _table(frame: pd.DataFrame, columns: Sequence[str] | None = None) -> str:
    from interp.runs.report import markdown_table

    return markdown_table(frame[list(columns or frame.columns)])


def render_markdown(summary: dict[str, Any], frames: dict[str, pd.DataFrame], settings: dict[str, Any]) -> str:
    """report.md from the tables, the run's summary and its settings (which carry the preset)."""
    models = summary["models"]
    lines = ["# Ideal-word report", ""]
    lines.append("**Model:** " + models[TRAINED]["label"] + (
        "  (random weights: no number here is a result about a trained model)"
        if RANDOM not in models else "; baseline: " + models[RANDOM]["label"]))
    lines += ["", "Embeddings are L2-normalised once and never re-normalised. IW = mean distance of each "
              "embedding to its ideal-word approximation; RW = distance to the mean of the single-word "
              "embeddings; Avg = mean squared pairwise distance; effective_rank = 1 + the principal directions "
              "holding 99% of the spread around u_0, against the bound 1 + sum(n_i - 1) an exactly decomposable set "
              "cannot exceed; rank_eps = numerical rank at machine-epsilon tolerance (full as soon as there is any "
              "noise, so it says little about decomposability); r2 = share of the spread around u_0 the "
              "decomposition explains.", "", preset_sentence(settings), ""]
    m = frames["metrics"]
    lines += ["## Final embedding", "",
              _table(m[m["layer"] == "final"],
                             ["model_kind", "concept_set", "shape", "IW", "RW", "Avg", "effective_rank", "rank_eps",
                              "rank_bound", "r2"]), ""]
    layers = m[m["layer"] != "final"]
    if not layers.empty:
        piv = layers.pivot_table(index=["model_kind", "concept_set"], columns="layer", values="IW_rel")
        piv = piv[sorted(piv.columns, key=int)].reset_index()
        piv.columns = [f"L{c}" if str(c).isdigit() else str(c) for c in piv.columns]
        lines += ["## IW / mean distance to u_0, per layer (pooled residual)", "",
                  _table(piv), "", "![IW by layer](figures/iw_by_layer.png)", ""]
    if not frames["idioms"].empty:
        lines += ["## Idiom residual test", "", "Idioms should break compositionality: with trained weights "
                  "the idiom set's IW should exceed its literal control's.", "",
                  _table(frames["idioms"], ["model_kind", "test", "idiom_IW", "control_IW", "difference"]),
                  "", "![idioms](figures/idioms.png)", ""]
    if "zero_shot" in frames:
        lines += ["## Compositional zero-shot classification", "",
                  _table(frames["zero_shot"], ["method", "target", "accuracy", "n_images"]), ""]
    else:
        lines += ["No images given: compositional zero-shot classification was not run "
                  "(pass --image-embeddings or --images with --labels).", ""]
    if "debias" in frames:
        lines += ["## Debiasing", "", _table(frames["debias"], ["model_kind", "concept_set", "kind", "class", "value"]), ""]
    lines += ["![final metrics](figures/metrics_final.png)", "",
              "Tables: metrics.csv, residuals.csv, ideal_words.csv, idioms.csv" +
              (", zero_shot.csv" if "zero_shot" in frames else "") + "; settings and package versions in config.json."]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    run(build_parser().parse_args(argv), argv)
    return 0


def cli(argv: Sequence[str] | None = None) -> int:
    return run_cli(main, argv)
