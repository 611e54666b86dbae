"""``python -m interp.ablate``: which heads does the model need for negation?

On the VALSE existence minimal pairs: negator-selective attention per head, ablation of every
head (and optionally attention blocks and MLPs, optionally per token role) with zero / mean /
resample values, and the heads' direct effects on d. Conventions shared with ``interp.trace``: model
args, ``--images DIR | --image-embeddings F | --target text``, a resumable run directory
(``interp.runs``), tables first, then seaborn figures and ``report.md`` drawn from the tables.

The per-item quantity is ``d = S(caption) - S(foil)`` with an image target and the N-versus-A gap
``S(N) - S(A)`` with the text target (where accuracy is undefined). Ablation effect = ablated minus
clean value, per item and component.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

# Light imports only at module level (--help and argument errors must not wait for torch).
from interp.cli.common import add_model_args, add_run_args, load_model_from_args, progress_enabled, run_cli
from interp.cli.validate import UsageParser, at_least, writable_out
from interp.data.negation import ROLES
from interp.data.segment_labels import SEGMENT_LABELS
from interp.errors import ClipInterpError
from interp.heads.options import FURTHER_POOLS, MEAN_OVER, METHODS, SITES
from interp.runs.cluster import ModelTask, add_cluster_arg, check_cluster, model_recipe, open_executor
from interp.presets import PREPROCESS_PIPELINES, preset_record, preset_sentence

if TYPE_CHECKING:
    import pandas as pd
    import torch

    from interp.heads.ablation import Component

log = logging.getLogger("interp.ablate")
KIND_CHOICES = ("head", "attn", "mlp")


def build_parser() -> argparse.ArgumentParser:
    p = UsageParser(prog="python -m interp.ablate", description=__doc__.splitlines()[0])
    add_model_args(p)
    p.add_argument("--task", default="existence", choices=["existence"], help="VALSE piece (existence minimal pairs)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--images", help="folder with the Visual7W images of the items")
    src.add_argument("--image-embeddings", help="precomputed image embeddings (.npy/.npz/.safetensors keyed by image file)")
    src.add_argument("--target", choices=["text"], help="score against the N-versus-A text target (no images)")
    p.add_argument("--preprocess", choices=PREPROCESS_PIPELINES,
                   help="image preprocessing: hf (CLIPImageProcessor, the negation study's) or open_clip "
                        "(default: follows the weights' source, hf for a Hugging Face checkpoint)")
    p.add_argument("--method", default="mean", help=f"ablation method: {', '.join(METHODS)} (default mean), or atp: "
                   "attribution-patching estimates of the --atp-ablation (one backward pass per chunk)")
    p.add_argument("--atp-ablation", default="mean", choices=["mean", "zero"], help="what --method atp estimates (default mean)")
    p.add_argument("--atp-check", type=int, default=0, metavar="N",
                   help="with --method atp: re-run the first N items exactly and report AtP's fidelity per layer")
    p.add_argument("--mean-over", default="items", choices=MEAN_OVER,
                   help="mean per position over the reference sentences (items) or over all their tokens (positions)")
    p.add_argument("--reference", default="all", choices=["all", "negated", "affirmative"],
                   help="sentences the mean (or resample donors) come from (default both sentences of every item)")
    p.add_argument("--site", default="z", choices=SITES, help="a head's z (default) or its result")
    p.add_argument("--components", default="head", help="comma list of head, attn, mlp (default head)")
    p.add_argument("--layers", default=None, help="comma list of 0-indexed layers (default all)")
    p.add_argument("--by-role", action="store_true", help="also ablate at each token role's positions only")
    p.add_argument("--segment", default="all", choices=["all", *SEGMENT_LABELS], help="items of one d segment (needs images)")
    p.add_argument("--attention-items", default="all", choices=["all", "segment"],
                   help="items of the negator-attention analysis: all (the negation study's; default) or only --segment's")
    p.add_argument("--further-pool", default="max", choices=FURTHER_POOLS,
                   help="pooling of the 'further' positions in the attention role table: max per item (the study's; default) or mean")
    p.add_argument("--limit", type=int, default=None, help="first N token-aligned pairs only (taken before --segment)")
    p.add_argument("--valse-dir", help="folder with VALSE's existence.json (default: the packaged copy)")
    p.add_argument("--batch-size", type=int, default=32,
                   help="items ablated together; a killed run loses at most this many (default 32)")
    add_run_args(p, out_required=False, out_help="run directory (default results/ablate/<model>/<method>/)")
    add_cluster_arg(p)
    return p


def _int_list(text: str | None, what: str) -> list[int] | None:
    if text is None:
        return None
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError as err:
        raise ClipInterpError(f"--{what} {text!r} must be a comma list of integers, e.g. 0,3,4") from err
    if not values:
        raise ClipInterpError(f"--{what} {text!r} names no {what}: pass e.g. 0,3,4 or leave it out for all")
    repeated = sorted({v for v in values if values.count(v) > 1})
    if repeated:  # each would be ablated twice and fill one row of the results twice
        raise ClipInterpError(f"--{what} {text!r} lists {repeated} more than once: name each once")
    return values


def _kinds(kinds: str) -> list[str]:
    chosen = [k.strip() for k in kinds.split(",") if k.strip()]
    bad = [k for k in chosen if k not in KIND_CHOICES]
    if bad or not chosen or len(set(chosen)) != len(chosen):
        raise ClipInterpError(f"--components {kinds!r}: choose a comma list of distinct kinds from {', '.join(KIND_CHOICES)}")
    return chosen


def parse_components(model, kinds: str, layers: str | None) -> list[Component]:
    """Components from ``--components`` and ``--layers`` (0-indexed), range-checked."""
    from interp.heads.ablation import Component, check_components

    chosen = _kinds(kinds)
    layer_list = _int_list(layers, "layers")
    layer_list = list(range(model.cfg.n_layers)) if layer_list is None else layer_list
    comps = []
    for layer in layer_list:
        if "head" in chosen:
            comps += [Component("head", layer, h) for h in range(model.cfg.n_heads)]
        comps += [Component(k, layer) for k in ("attn", "mlp") if k in chosen]
    check_components(model, comps)
    return comps


def targets(args, model, aligned) -> tuple[str, torch.Tensor, torch.Tensor]:
    """(target kind, directions of the first sentence [item, d], of the second sentence)."""
    from interp.data.existence import IMAGE, TEXT, check_target, image_directions, image_embeddings, text_directions

    kind = check_target(args.images, args.image_embeddings, args.target, args.segment)
    if kind == TEXT:
        direction = text_directions(model, aligned).float().cpu()
        return TEXT, direction, direction
    emb = image_embeddings(model, [a.pair.image_file for a in aligned], images=args.images,
                           image_embeddings=args.image_embeddings, model_name=args.model, pretrained=args.pretrained,
                           device=args.device, seed=args.seed, progress=progress_enabled(args),
                           preprocess=args.preprocess)
    direction = image_directions(model, emb).float().cpu()
    return IMAGE, direction, direction


def sentences(aligned, target: str) -> tuple[list, list]:
    """(first, second) sentences: (caption, foil) for images, (N, A) for the text target."""
    if target == "image":
        return [a.tokens_caption for a in aligned], [a.tokens_foil for a in aligned]
    return [a.tokens_negated for a in aligned], [a.tokens_affirmative for a in aligned]


def role_masks(aligned, width: int) -> dict[str, torch.Tensor]:
    """``{role: [2 * item, width]}`` masks of each role's positions (both sentences share roles)."""
    import torch

    out = {}
    for role in ROLES:
        mask = torch.zeros(len(aligned), width, dtype=torch.bool)
        for i, a in enumerate(aligned):
            for p in a.positions(role):
                mask[i, p] = True
        out[role] = torch.cat([mask, mask])
    return out


def ablate_items(model, aligned, dirs1, dirs2, comps, args, target, means, donors) -> pd.DataFrame:
    """Rows (item x component x role) for a chunk of items: clean and ablated value, effect."""
    import pandas as pd
    import torch

    from interp.heads.ablation import ablation_scores
    from interp.heads.attention import batch_from_ids

    first, second = sentences(aligned, target)
    batch = batch_from_ids(model, first + second)
    directions = torch.cat([dirs1, dirs2])
    donor_batch, donor_pos = (None, None) if donors is None else donors
    masks = {"all": None}
    if args.by_role:
        masks.update(role_masks(aligned, batch.tokens.shape[1]))
    n = len(aligned)
    frames = []
    for role, mask in masks.items():
        if getattr(args, "atp", False):
            from interp.heads.atp import atp_ablation_scores

            result = atp_ablation_scores(model, batch, comps, args.method, directions=directions, means=means,
                                         positions=mask)
        else:
            result = ablation_scores(model, batch, directions, comps, args.method, means=means, donors=donor_batch,
                                     donor_positions=donor_pos, positions=mask, site=args.site, progress=False)
        clean = result.clean[:n] - result.clean[n:]
        ablated = result.ablated[:, :n] - result.ablated[:, n:]  # [component, item]
        for c, comp in enumerate(comps):
            frames.append(pd.DataFrame({
                "item_id": [a.pair.item_id for a in aligned],
                "negation_side": [a.pair.negation_side for a in aligned],
                "component": comp.label, "kind": comp.kind, "layer": comp.layer,
                "head": -1 if comp.head is None else comp.head, "role": role,
                "d_clean": clean.numpy(), "d_ablated": ablated[c].numpy(),
                "effect": (ablated[c] - clean).numpy(),
            }))
    return pd.concat(frames, ignore_index=True)


def ablate_chunk(model, payload, *, comps, args, target, means) -> pd.DataFrame:
    """One chunk's rows (a task: runs in the driver or on a cluster worker); payload = (items, dirs1, dirs2, donors)."""
    part, dirs1, dirs2, donors = payload
    return ablate_items(model, part, dirs1, dirs2, comps, args, target, means, donors)


def summarize_ablation(rows: pd.DataFrame, target: str) -> pd.DataFrame:
    """Per (component, role, group): n, mean clean and ablated d, mean effect, accuracies (images)."""
    import pandas as pd

    out = []
    for group, part in [("all", rows), *rows.groupby("negation_side")]:
        keys = ["component", "kind", "layer", "head", "role"]
        agg = part.groupby(keys, sort=False).agg(
            n=("item_id", "size"), d_clean=("d_clean", "mean"), d_ablated=("d_ablated", "mean"),
            effect=("effect", "mean"), effect_std=("effect", "std"))
        if target == "image":
            acc = part.assign(c=part.d_clean > 0, a=part.d_ablated > 0).groupby(keys, sort=False)[["c", "a"]].mean()
            agg["accuracy_clean"], agg["accuracy_ablated"] = acc["c"], acc["a"]
            agg["accuracy_change"] = acc["a"] - acc["c"]
        out.append(agg.reset_index().assign(group=group))
    return pd.concat(out, ignore_index=True)


def direct_effect_tables(model, aligned, dirs1, dirs2, target, batch_size: int = 64):
    """(per-item long table, summary table, max |sum of parts - embedding|)."""
    import pandas as pd

    from interp.heads.attention import batch_from_ids
    from interp.heads.direct_effects import direct_effects, direct_effects_on_d

    frames, worst = [], 0.0
    for start in range(0, len(aligned), batch_size):
        part = aligned[start:start + batch_size]
        first, second = sentences(part, target)
        de1, de2 = direct_effects(model, batch_from_ids(model, first)), direct_effects(model, batch_from_ids(model, second))
        worst = max(worst, float((de1.contributions.sum(1) - de1.embedding).abs().max()),
                    float((de2.contributions.sum(1) - de2.embedding).abs().max()))
        effect = direct_effects_on_d(de1, de2, dirs1[start:start + batch_size], dirs2[start:start + batch_size])
        for c, label in enumerate(de1.labels):
            frames.append(pd.DataFrame({
                "item_id": [a.pair.item_id for a in part], "negation_side": [a.pair.negation_side for a in part],
                "component": label, "kind": de1.kinds[c], "layer": de1.layers[c], "head": de1.heads[c],
                "direct_effect": effect[:, c].numpy(),
            }))
    items = pd.concat(frames, ignore_index=True)
    d_total = items.groupby("item_id")["direct_effect"].sum()
    summary = items.groupby(["component", "kind", "layer", "head"], sort=False).agg(
        n=("item_id", "size"), direct_effect=("direct_effect", "mean")).reset_index()
    summary["share_of_mean_d"] = summary["direct_effect"] / d_total.mean()
    return items, summary, worst


def select_items(args, model, aligned, dirs1, dirs2, target):
    """Apply --segment (image target only); returns (items, dirs1, dirs2, exclusions)."""
    from interp.data.existence import IMAGE, clean_d, select_segment

    d = clean_d(model, aligned, dirs1) if target == IMAGE and args.segment != "all" else None
    keep, excluded = select_segment(aligned, d, args.segment)
    return [aligned[i] for i in keep], dirs1[keep], dirs2[keep], excluded


def _heatmap(table: pd.DataFrame, value: str, title: str, path: Path) -> None:
    """Layers x heads heatmap of ``value`` (shared helper :func:`interp.runs.plots.heads_heatmap`)."""
    from interp.runs.plots import heads_heatmap

    grid = table.pivot(index="layer", columns="head", values=value)
    grid.index.name, grid.columns.name = "layer (0-indexed)", "head (0-indexed)"
    heads_heatmap(grid, path, title.replace("; ", "\n", 1), annotate=grid.size <= 144)


def _top(frame: pd.DataFrame, column: str, k: int = 5) -> str:
    top = frame.reindex(frame[column].abs().sort_values(ascending=False).index).head(k)
    return ", ".join(f"{r.component} ({r.role}) {getattr(r, column):+.4f}" for r in top.itertuples())


def write_outputs(run, model, args, target, aligned, rejected, seg_excluded, loaded, dirs1, dirs2, comps,
                  attention_aligned=None) -> None:
    """Aggregated tables, figures and report.md, all drawn from the per-item tables. The negator
    attention runs on ``attention_aligned`` (default: the ablated items)."""
    import numpy as np
    import torch

    from interp.data.scoring import TEXT_MODE_NOTE, score
    from interp.heads.attention import batch_from_ids, negator_attention
    from interp.models.loading import weights_fingerprint
    from interp.runs.report import Report

    order = [a.pair.item_id for a in aligned]
    rows = run.items.read(order)
    summary = summarize_ablation(rows, target)
    run.write_table(summary, "ablation_summary.csv")
    attention_aligned = aligned if attention_aligned is None else attention_aligned
    att = negator_attention(model, attention_aligned, progress=False)
    att_mean = att.mean_table()
    run.write_table(att.table(), "negator_attention_items.csv")
    run.write_table(att_mean, "negator_attention.csv")
    layer_means = att.mean_scores().mean(1)
    top_layer = int(layer_means.argmax())
    run.write_table(att.role_table(top_layer, further_pool=args.further_pool).reset_index(), "negator_attention_roles.csv")
    first_comp = rows[(rows.role == "all")].drop_duplicates("item_id").set_index("item_id").loc[order]
    d_clean = torch.tensor(first_comp["d_clean"].to_numpy())
    notes, invariants = [], []
    # invariant: the engine's clean d equals a plain forward's
    first, second = sentences(aligned, target)
    with torch.no_grad():
        plain = score(model(batch_from_ids(model, first)).float().cpu(), dirs1) - score(model(batch_from_ids(model, second)).float().cpu(), dirs2)
    invariants.append(f"clean d in the ablation table equals a plain forward: max |diff| = {float((plain - d_clean).abs().max()):.2e}")
    if model.cfg.causal:
        before = ~att.after_negator_mask() & (torch.arange(att.diff.shape[-1])[None] < att.negator_pos[:, None])
        gap = att.diff.permute(0, 3, 1, 2)[before].abs().max() if bool(before.any()) else torch.tensor(0.0)
        invariants.append(f"causal mask: attention to the negator from queries before it is 0 in N and A: max |a_N - a_A| = {float(gap):.2e}")
    if target == "image":
        # d is known for the ablated items only: correlate on those (their rows in the attention result)
        att_row = {item_id: i for i, item_id in enumerate(att.item_ids)}
        d_att = np.full(len(att.item_ids), np.nan)
        d_att[[att_row[i] for i in order]] = d_clean.numpy()
        run.write_table(att.correlation_with(d_att, items=[att_row[i] for i in order]), "negator_attention_d_correlation.csv")
    de_summary = None
    if model.cfg.norm == "pre":
        de_items, de_summary, worst = direct_effect_tables(model, aligned, dirs1, dirs2, target)
        run.write_table(de_items, "direct_effects_items.csv")
        run.write_table(de_summary, "direct_effects.csv")
        per_item = de_items.groupby("item_id")["direct_effect"].sum().loc[order].to_numpy()
        invariants.append(f"direct-effect parts sum to the embedding: max |sum - embedding| = {worst:.2e}")
        invariants.append(f"direct effects sum to d per item: max |sum - d| = {float(abs(per_item - d_clean.numpy()).max()):.2e}")
    else:
        notes.append("Direct effects skipped: post-LN encoder, whose residual is not a sum of component outputs.")

    figures = []
    heads_all = summary[(summary.kind == "head") & (summary.role == "all") & (summary.group == "all")]
    quantity = "d" if target == "image" else "S(N) - S(A)"
    if len(heads_all):
        _heatmap(heads_all, "effect", f"mean change in {quantity} when ablating each head ({args.method}); layers/heads 0-indexed",
                 run.figure_path("head_importance.png"))
        figures.append("head_importance.png")
    _heatmap(att_mean[att_mean.group == "all"], "mean_score", "negator-selective attention: mean max_q (a_N - a_A); 0-indexed",
             run.figure_path("negator_attention.png"))
    figures.append("negator_attention.png")
    blocks = summary[(summary.role == "all") & (summary.group == "all")]
    per_layer = blocks.groupby(["layer", "kind"], as_index=False)["effect"].sum()
    from interp.runs.plots import layer_bars

    layer_bars(per_layer, run.figure_path("per_layer.png"), f"per-layer change in {quantity} ({args.method}; heads summed); 0-indexed",
               hue="kind")
    figures.append("per_layer.png")
    if de_summary is not None:
        de_heads = de_summary[de_summary.kind == "head"]
        _heatmap(de_heads, "direct_effect", f"mean direct effect of each head on {quantity}; 0-indexed", run.figure_path("direct_effects.png"))
        figures.append("direct_effects.png")

    c = model.cfg
    random_weights = not c.pretrained or "random" in str(c.pretrained) or "hand-built" in str(c.pretrained)
    rep = Report("Head ablation and attribution: VALSE existence")
    rep.bullets([
        f"Model: `{c.model_name}`, weights: {c.pretrained or 'random init'} (fingerprint `{weights_fingerprint(model)[:16]}`)."
        + (" **Random or hand-built weights: these numbers say nothing about CLIP.**" if random_weights else ""),
        f"Target: {target}" + (" (S = exp(logit_scale) cos(text, image); d = S(caption) - S(foil))" if target == "image"
                               else " (S(x) = cos(x, e_N) - cos(x, e_A); the per-item value is S(N) - S(A))"),
        f"Ablation: {args.method}"
        + (f", per-{'position mean over the reference sentences' if args.mean_over == 'items' else 'component mean over every token of the reference sentences'}"
           f" (reference: {args.reference} sentences of the {len(aligned)} items)" if args.method == "mean" else "")
        + (f", donors from other items, seed {args.seed}" if args.method == "resample" else "")
        + f"; head site `{args.site}`; {len(comps)} components" + (", also per token role" if args.by_role else "") + ".",
        f"Items: {loaded.counts['raw']} in the file, {loaded.counts['valid']} valid, {loaded.counts['minimal_pairs']} minimal pairs"
        + (f", first {args.limit} kept (--limit)" if args.limit else "")
        + f"; {len(rejected)} not token-aligned; {len(seg_excluded)} outside --segment {args.segment}; **n = {len(aligned)}** analysed.",
        "Layers and heads are 0-indexed in every table and figure (add 1 to both for the paper's L4H2-style labels).",
        *([f"Image preprocessing: `{run.settings['preprocess']}`."] if "preprocess" in run.settings else []),
        *([preset_sentence(run.settings)] if "preset" in run.settings else []),
    ])
    if rejected:
        rep.paragraph("Not token-aligned:").bullets(f"{r.pair.item_id}: {r.reason}" for r in rejected[:20])
    if seg_excluded:
        rep.paragraph(f"Outside the segment: {len(seg_excluded)} items, e.g. " + "; ".join(f"{i}: {why}" for i, why in seg_excluded[:5]))
    rep.heading("Ablation (`ablation_summary.csv`, per item: `items/`)")
    rep.paragraph(f"n = {len(aligned)} items x {len(comps)} components. Mean clean {quantity}: {float(d_clean.mean()):+.4f}. "
                  f"Largest mean effects (ablated - clean): {_top(heads_all if len(heads_all) else blocks, 'effect')}.")
    if target == "image":
        acc = blocks[["component", "accuracy_clean", "accuracy_ablated", "accuracy_change"]]
        worst_acc = acc.reindex(acc.accuracy_change.abs().sort_values(ascending=False).index).head(5)
        rep.paragraph(f"Clean accuracy {float((d_clean > 0).float().mean()):.4f} (n = {len(aligned)}); largest accuracy changes:")
        rep.table(worst_acc, floatfmt=".4f")
    else:
        rep.paragraph(f"Accuracy: {TEXT_MODE_NOTE}.")
    top_att = att_mean[att_mean.group == "all"]
    top_att = top_att.reindex(top_att.mean_score.sort_values(ascending=False).index).head(5)
    top_att = top_att.assign(label=[f"L{r.layer}H{r.head}" for r in top_att.itertuples()],
                             paper_label=[f"L{r.layer + 1}H{r.head + 1}" for r in top_att.itertuples()])
    rep.heading("Negator-selective attention (`negator_attention.csv`)")
    att_scope = ("all token-aligned items, as the negation study (--segment restricts the ablation only)"
                 if args.attention_items == "all" else "the items of --segment only (--attention-items segment)")
    rep.paragraph(f"n = {len(att.item_ids)} items: {att_scope}. 'further' positions pooled by {args.further_pool} per item "
                  f"in `negator_attention_roles.csv`. Top heads (label 0-indexed, paper_label 1-indexed):")
    rep.table(top_att[["label", "paper_label", "mean_score", "n"]], floatfmt=".4f")
    rep.paragraph(f"Layer with the highest mean over heads: {top_layer} (0-indexed); per-role table: `negator_attention_roles.csv`.")
    if de_summary is not None:
        top_de = de_summary[de_summary.kind == "head"]
        top_de = top_de.reindex(top_de.direct_effect.abs().sort_values(ascending=False).index).head(5)
        rep.heading("Direct effects (`direct_effects.csv`)")
        rep.paragraph(f"n = {len(aligned)} items. Largest head direct effects on {quantity} and their share of its mean:")
        rep.table(top_de[["component", "direct_effect", "share_of_mean_d", "n"]], floatfmt=".4f")
    rep.heading("Invariants checked").bullets([*invariants, *notes])
    rep.heading("Figures")
    for f in figures:
        rep.image(f"figures/{f}", f)
    rep.write(run.path / "report.md")



def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.method not in (*METHODS, "atp"):
        raise ClipInterpError(f"--method {args.method!r} does not exist: choose one of {', '.join(METHODS)}, atp")
    args.atp = args.method == "atp"
    if args.atp_check < 0 or (args.atp_check and not args.atp):
        raise ClipInterpError(f"--atp-check {args.atp_check} needs --method atp and a count >= 0")
    if args.atp:
        if args.site != "z":
            raise ClipInterpError("--method atp estimates head ablation at z: drop --site result")
        args.method = args.atp_ablation  # from here on: the ablation AtP estimates
    at_least(args.limit, "--limit")
    at_least(args.batch_size, "--batch-size")
    _kinds(args.components)
    _int_list(args.layers, "layers")
    if args.preprocess and not args.images:
        raise ClipInterpError(f"--preprocess {args.preprocess} only applies to images read from --images DIR: "
                              "drop it, or pass --images")
    if args.attention_items == "segment" and args.segment == "all":
        raise ClipInterpError("--attention-items segment needs --segment correct|ambiguous|incorrect: pass one, "
                              "or drop --attention-items")
    if args.images and not Path(args.images).is_dir():
        raise ClipInterpError(f"--images {args.images} is not a folder: pass the folder holding the images, or --target text")
    if args.image_embeddings and not Path(args.image_embeddings).is_file():
        raise ClipInterpError(f"--image-embeddings {args.image_embeddings} does not exist: pass the embeddings file, or --target text")
    check_cluster(args.cluster)  # a bad --cluster fails before anything is loaded or written
    writable_out(args.out)
    from interp.data.existence import check_target, load_aligned
    from interp.models.loading import weights_fingerprint
    from interp.runs.rundir import RunDir, default_run_dir

    check_target(args.images, args.image_embeddings, args.target, args.segment)
    model = load_model_from_args(args).eval()
    comps = parse_components(model, args.components, args.layers)
    data = load_aligned(model.tokenizer, args.valse_dir, model_name=args.model)
    loaded, aligned, rejected = data.loaded, data.aligned, data.rejected
    aligned = aligned[: args.limit]  # before --segment: an embeddings file may hold only these items' images
    target, dirs1, dirs2 = targets(args, model, aligned)
    all_aligned = aligned  # the negator attention runs on these unless --attention-items segment
    aligned, dirs1, dirs2, seg_excluded = select_items(args, model, aligned, dirs1, dirs2, target)
    settings = {
        "task": args.task, "model": args.model, "pretrained": model.cfg.pretrained,
        "weights_fingerprint": weights_fingerprint(model), "dtype": args.dtype, "seed": args.seed,
        "target": target, "image_source": args.images or args.image_embeddings, "method": args.method,
        **({"estimate": "atp"} if args.atp else {}),
        "mean_over": args.mean_over, "reference": args.reference, "site": args.site,
        "components": args.components, "layers": args.layers, "by_role": args.by_role,
        "segment": args.segment, "limit": args.limit, "attention_items": args.attention_items,
        "further_pool": args.further_pool,
        "batch_size": args.batch_size,  # items batched together: another batching changes the last bits of the floats
    }
    if target == "image" and not args.image_embeddings:
        from interp.data.images import default_pipeline
        from interp.models.loading import resolve_pretrained

        settings["preprocess"] = args.preprocess or default_pipeline(resolve_pretrained(args.model, args.pretrained))
    settings.update(preset_record({
        "negation_scoring": {k: settings[k] for k in ("preprocess",) if k in settings},
        "negator_attention": {"further_pool": args.further_pool, "attention_items": args.attention_items},
    }))
    out = Path(args.out) if args.out else default_run_dir("ablate", args.model, ("atp-" if args.atp else "") + args.method)
    info = {"device": args.device, "argv": list(argv or sys.argv[1:]), "threads": args.threads_chosen,
            "threads_reason": args.threads_reason}
    with RunDir(out, "ablate", settings, info, arguments=vars(args), overwrite=args.overwrite, resumable=True) as run:
        _ablate_into(run, args, model, comps, target, aligned, all_aligned, rejected, seg_excluded, loaded,
                     dirs1, dirs2, settings)
        run.finish()
    log.info("wrote %s", run.path / "report.md")
    return 0


def _ablate_into(run, args, model, comps, target, aligned, all_aligned, rejected, seg_excluded, loaded,
                 dirs1, dirs2, settings) -> None:
    """Ablate the items not yet in ``run`` (in process or on a cluster), then write the tables,
    figures and report (and, for --method atp --atp-check N, the fidelity table)."""
    from tqdm.auto import tqdm

    from interp.heads.ablation import reference_means, resample_donors
    from interp.heads.attention import batch_from_ids

    # The reference set is every selected item (fixed before any chunk runs, so resuming gives the same values).
    first, second = sentences(aligned, target)
    ref_ids = {"all": first + second, "negated": [a.tokens_negated for a in aligned],
               "affirmative": [a.tokens_affirmative for a in aligned]}[args.reference]
    ref_groups = {"all": list(range(len(aligned))) * 2}.get(args.reference, list(range(len(aligned))))
    reference = batch_from_ids(model, ref_ids)
    means = reference_means(model, reference, comps, site=args.site, mean_over=args.mean_over) if args.method == "mean" else None
    index_of = {a.pair.item_id: i for i, a in enumerate(aligned)}
    n_items = len(aligned)
    donor_index = donor_pos = None
    if args.method == "resample":  # drawn once for every selected sentence: chunking cannot change them
        everything = batch_from_ids(model, first + second)
        donor_index, donor_pos = resample_donors(everything.lengths, reference.lengths, args.seed,
                                                 target_groups=list(range(n_items)) * 2, reference_groups=ref_groups)

    done = run.items.done()
    # Chunks are fixed slices of the full item list, whatever is already done: a resumed run batches
    # every item with the same neighbours as an uninterrupted one, so its floats are bit-identical.
    chunks = [aligned[start:start + args.batch_size] for start in range(0, n_items, args.batch_size)]
    todo = [part for part in chunks if any(a.pair.item_id not in done for a in part)]
    log.info("%d items in %d chunks, %d chunks to run", n_items, len(chunks), len(todo))
    payloads = []  # one task per chunk: its items, their directions and resample donors
    for part in todo:
        rows_idx = [index_of[a.pair.item_id] for a in part]
        donors = None
        if donor_index is not None:
            sel = rows_idx + [n_items + i for i in rows_idx]
            donors = (reference[donor_index[sel]], donor_pos[sel])
        payloads.append((part, dirs1[rows_idx], dirs2[rows_idx], donors))
    task = ModelTask(model_recipe(args, model, settings["weights_fingerprint"]), ablate_chunk)
    shared = {"comps": comps, "args": args, "target": target, "means": means}
    with open_executor(args.cluster) as executor:
        for _, rows in tqdm(executor.map(task, payloads, shared, name="ablate-chunk"), total=len(payloads),
                            desc="ablation chunks", disable=not progress_enabled(args)):
            for item_id, item_rows in rows.groupby("item_id", sort=False):
                if item_id not in done:
                    run.items.write(item_id, item_rows)

    write_outputs(run, model, args, target, aligned, rejected, seg_excluded, loaded, dirs1, dirs2, comps,
                  attention_aligned=all_aligned if args.attention_items == "all" else aligned)
    if args.atp and args.atp_check:
        _atp_fidelity(run, model, aligned[: args.atp_check], dirs1[: args.atp_check], dirs2[: args.atp_check],
                      comps, args, target, means)


def _atp_fidelity(run, model, items, dirs1, dirs2, comps, args, target, means) -> None:
    """Re-run the first items exactly; write atp_fidelity.csv (per layer) and add it to the report."""
    from interp.heads.atp import fidelity
    from interp.runs.report import markdown_table

    args.atp = False
    exact = ablate_items(model, items, dirs1, dirs2, comps, args, target, means, None)
    args.atp = True
    estimate = ablate_items(model, items, dirs1, dirs2, comps, args, target, means, None)
    exact, estimate = exact[exact["role"] == "all"], estimate[estimate["role"] == "all"]
    table = fidelity(estimate, exact, k=10)
    run.write_table(table, "atp_fidelity.csv")
    report = run.path / "report.md"
    report.write_text(report.read_text() + (
        f"\n## AtP fidelity (--atp-check {len(items)})\n\nThe effects above are attribution-patching estimates "
        f"(first order) of {args.method} ablation. The first {len(items)} items were re-run exactly; Spearman "
        "correlation and top-10 overlap (by |effect|) of each component's estimated vs exact effect (averaged "
        "over those items), over all components and per layer:\n\n" + markdown_table(table) + "\n"))


def cli(argv: Sequence[str] | None = None) -> int:
    """Entry point with the toolkit's error handling (one line on stderr, exit code 2)."""
    return run_cli(main, argv)
