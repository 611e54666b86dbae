"""Compute the image-side analyses for the ``interp.image`` command, then write tables, figures and report.md.

Tables come first (one row per item x cell); every figure and report table is drawn from them.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from interp.models.loading import weights_fingerprint
from interp.presets import preset_record, preset_sentence
from interp.runs.report import Report
from interp.runs.rundir import RunDir, default_run_dir

TOOL = "image"
MAX_CHUNK = 8  # items per analysis batch
_PARTS_BUDGET_BYTES = 512 * 2**20  # the head parts are items x layers x heads x positions x d_embed floats

FIGURE_TEXT = {
    "decomposition_heads.png": "Direct effect of each image head (layers x heads), mean over items: its share of d "
                               "through the frozen ln_post and the projection, summed over source positions. Red "
                               "pushes the image towards the caption, blue towards the foil.",
    "decomposition_patches.png": "For the top heads, the share of d read from each patch (patch grid; the class "
                                 "token is left out), mean over items: where in the image each head takes its evidence.",
    "ablation_heads.png": "Total effect of ablating each image head on d (layers x heads), mean over items. "
                          "Negative = the head supports the caption.",
    "tracing_layers_by_row.png": "Causal tracing: recovered fraction of d when the clean state of one position is "
                                 "restored in the corrupted run, averaged over the patches of each patch row "
                                 "(columns; 'cls' = class token) at each layer (rows).",
    "tracing_grid.png": "Causal tracing on the patch grid: recovered fraction per patch, one panel per layer, mean over items.",
}


@dataclass
class Results:
    items: pd.DataFrame
    decomposition_heads: pd.DataFrame
    decomposition_components: pd.DataFrame
    decomposition_patches: pd.DataFrame
    ablation: pd.DataFrame
    tracing: pd.DataFrame
    tracing_by_row: pd.DataFrame
    bridge: pd.DataFrame
    checks: dict[str, Any] = field(default_factory=dict)


def _positions(cfg) -> pd.DataFrame:
    rows, cols = cfg.grid
    pos = np.arange(cfg.n_pos)
    return pd.DataFrame({"position": pos, "patch_row": np.where(pos == 0, -1, (pos - 1) // cols),
                         "patch_col": np.where(pos == 0, -1, (pos - 1) % cols)})


def _chunk_size(cfg) -> int:
    """Items per batch so that one batch's head parts stay within the memory budget (ViT-L-14: 1)."""
    per_item = cfg.n_layers * cfg.n_heads * cfg.n_pos * cfg.d_embed * 4
    return max(1, min(MAX_CHUNK, _PARTS_BUDGET_BYTES // per_item))


@torch.no_grad()
def compute(clip, inputs, args: argparse.Namespace) -> Results:
    from interp.vision.ablation import ablation_effects
    from interp.vision.bridge import bridge_table, text_head_effects
    from interp.vision.decomposition import decompose_image
    from interp.vision.scores import caption_minus_foil, score_gap
    from interp.vision.tracing import Corruption, gaussian_noise, trace_image

    image, cfg, scale = clip.image, clip.image.cfg, clip.logit_scale
    items = inputs.items
    ids = [item.item_id for item in items]
    images = inputs.images.to(image.device, image.dtype)
    u = caption_minus_foil(clip.encode_text([i.caption for i in items]), clip.encode_text([i.foil for i in items]))
    u = u.to(image.device, image.dtype)
    v = image(images)
    d = score_gap(v, u, scale)
    if inputs.corrupted is not None:
        corruption = Corruption(images=inputs.corrupted.to(image.device, image.dtype))
    else:
        corruption = gaussian_noise(image, images, args.noise_factor, seed=args.seed)
    donors = images.roll(1, dims=0) if args.ablation == "resample" else None
    if args.ablation == "resample" and len(items) < 2:
        from interp.errors import ClipInterpError

        raise ClipInterpError("--ablation resample takes each item's donor from the next item: analyse at least 2 items")

    head_shares, components, sums, abl_heads, abl_mlps, traces = [], [], [], [], [], []
    chunk = _chunk_size(cfg)
    for start in range(0, len(items), chunk):
        part = slice(start, start + chunk)
        scores = decompose_image(image, images[part]).scores(u[part], scale)
        head_shares.append(scores.heads.float().cpu())
        components.append(scores)
        sums.append((scores.total() - d[part]).abs().max().item())
        effects = ablation_effects(image, images[part], u[part], scale, args.ablation, reference=images,
                                   donors=None if donors is None else donors[part])
        abl_heads.append(effects.heads.float().cpu())
        abl_mlps.append(effects.mlps.float().cpu())
        sub = Corruption(noise=corruption.noise[part]) if corruption.noise is not None else Corruption(images=corruption.images[part])
        traces.append(trace_image(image, images[part], u[part], scale, sub))
    shares = torch.cat(head_shares)  # [item, layer, head, pos]
    heads_abl = torch.cat(abl_heads)
    text_effects = text_head_effects(clip.text, [i.caption for i in items], [i.foil for i in items], v, scale)

    L, H, P = cfg.n_layers, cfg.n_heads, cfg.n_pos
    grid = np.stack(np.meshgrid(np.arange(len(items)), np.arange(L), np.arange(H), indexing="ij"), -1).reshape(-1, 3)
    per_head = shares.sum(-1).numpy().reshape(-1)
    decomposition_heads = pd.DataFrame({"item_id": np.asarray(ids)[grid[:, 0]], "layer": grid[:, 1], "head": grid[:, 2],
                                        "share_of_d": per_head})
    comp_rows = []
    for chunk_start, scores in zip(range(0, len(items), chunk), components):
        for k in range(scores.embed.shape[0]):
            item_id = ids[chunk_start + k]
            comp_rows.append({"item_id": item_id, "component": "embed", "layer": -1, "share_of_d": float(scores.embed[k])})
            comp_rows.append({"item_id": item_id, "component": "ln_post_bias", "layer": -1, "share_of_d": float(scores.ln_bias[k])})
            for layer in range(L):
                comp_rows.append({"item_id": item_id, "component": "mlp", "layer": layer, "share_of_d": float(scores.mlps[k, layer])})
                comp_rows.append({"item_id": item_id, "component": "attn_bias", "layer": layer,
                                  "share_of_d": float(scores.attn_bias[k, layer])})
    mean_abs = shares.sum(-1).abs().mean(0).flatten()
    top = [(int(i) // H, int(i) % H) for i in mean_abs.argsort(descending=True)[: args.top_heads]]
    positions = _positions(cfg)
    patch_rows = []
    for layer, head in top:
        for k, item_id in enumerate(ids):
            frame = positions.copy()
            frame.insert(0, "head", head)
            frame.insert(0, "layer", layer)
            frame.insert(0, "item_id", item_id)
            frame["share_of_d"] = shares[k, layer, head].numpy()
            patch_rows.append(frame)
    ablation_rows = pd.DataFrame({"item_id": np.asarray(ids)[grid[:, 0]], "component": "head", "layer": grid[:, 1],
                                  "head": grid[:, 2], "effect_on_d": heads_abl.numpy().reshape(-1)})
    mlps = torch.cat(abl_mlps).numpy()
    mlp_rows = pd.DataFrame({"item_id": np.repeat(ids, L), "component": "mlp", "layer": np.tile(np.arange(L), len(items)),
                             "head": -1, "effect_on_d": mlps.reshape(-1)})
    trace_rows = []
    d_clean = torch.cat([t.d_clean for t in traces]).float().cpu().numpy()
    d_corrupt = torch.cat([t.d_corrupt for t in traces]).float().cpu().numpy()
    restored = torch.cat([t.d_restored for t in traces]).float().cpu()
    recovered = torch.cat([t.recovered for t in traces]).float().cpu()
    for k, item_id in enumerate(ids):
        for layer in range(L + 1):
            frame = positions.copy()
            frame.insert(0, "layer", layer)
            frame.insert(0, "item_id", item_id)
            frame["d_restored"] = restored[k, layer].numpy()
            frame["recovered"] = recovered[k, layer].numpy()
            trace_rows.append(frame)
    tracing = pd.concat(trace_rows, ignore_index=True)
    by_row = (tracing.assign(patch_row=tracing["patch_row"].map(lambda r: "cls" if r < 0 else str(r)))
              .groupby(["layer", "patch_row"], sort=False)["recovered"].mean().unstack("patch_row"))
    by_row = by_row[["cls", *[str(r) for r in range(cfg.grid[0])]]].reset_index()
    item_frame = pd.DataFrame({
        "item_id": ids, "image_file": [i.image_file for i in items], "caption": [i.caption for i in items],
        "foil": [i.foil for i in items], "d": d.float().cpu().numpy(), "d_corrupt": d_corrupt,
        "prefers_caption": (d > 0).cpu().numpy(),
    })
    checks = {"max_abs_decomposition_sum_minus_d": max(sums), "max_abs_trace_clean_minus_d": float(np.abs(d_clean - item_frame["d"]).max())}
    return Results(item_frame, decomposition_heads, pd.DataFrame(comp_rows), pd.concat(patch_rows, ignore_index=True),
                   pd.concat([ablation_rows, mlp_rows], ignore_index=True), tracing, by_row,
                   bridge_table(text_effects, heads_abl, args.top_heads), checks)


# ----------------------------------------------------------------------------- writing

TABLES = {
    "items.csv": "items",
    "decomposition_heads.csv": "decomposition_heads",
    "decomposition_components.csv": "decomposition_components",
    "decomposition_patches.csv": "decomposition_patches",
    "ablation.csv": "ablation",
    "tracing.csv": "tracing",
    "tracing_layers_by_row.csv": "tracing_by_row",
    "bridge.csv": "bridge",
}


def _settings(clip, args: argparse.Namespace, inputs) -> dict[str, Any]:
    return {
        "task": args.task, "model": args.model, "pretrained": clip.image.cfg.pretrained,
        "image_weights_fingerprint": weights_fingerprint(clip.image), "dtype": args.dtype, "seed": args.seed,
        "ablation": args.ablation, "corruption": "images" if args.corrupted_images else "noise",
        "noise_factor": None if args.corrupted_images else args.noise_factor, "top_heads": args.top_heads,
        "items": [item.item_id for item in inputs.items], "preprocess": clip.preprocess.pipeline,
        **_presets(clip, args),
    }


def _presets(clip, args: argparse.Namespace) -> dict[str, Any]:
    """The paper preset and this run's deviations (interp.presets)."""
    chosen = {"negation_scoring": {"preprocess": clip.preprocess.pipeline}}
    if not args.corrupted_images:
        # the noise covers every patch, so its std comes from the corrupted positions (ROME's rule)
        chosen["noise_tracing"] = {"noise_calibration": "corrupted", "noise_scale": args.noise_factor}
    return preset_record(chosen)


def open_run(clip, inputs, args: argparse.Namespace, argv: list[str]) -> RunDir:
    """The run directory (run contract: same settings resume as a no-op, others are refused)."""
    info = {"argv": argv, "device": args.device, "images": str(args.images), "corrupted_images": args.corrupted_images,
            "threads": torch.get_num_threads()}
    out = Path(args.out) if args.out else default_run_dir(TOOL, args.model, args.name)
    return RunDir(out, TOOL, _settings(clip, args, inputs), info, arguments=vars(args), overwrite=args.overwrite,
                  resumable=False)


def write_outputs(clip, inputs, results: Results, args: argparse.Namespace, run: RunDir) -> list[Path]:
    written = [run.write_table(getattr(results, attr), name) for name, attr in TABLES.items()]
    figures = [] if args.no_figures else draw_figures(results, clip.image.cfg, run.path)
    written += figures
    written.append(write_report(clip, inputs, results, args, run.path, figures))
    return written


def _mean_heads(frame: pd.DataFrame, value: str) -> pd.DataFrame:
    return frame.groupby(["layer", "head"])[value].mean().unstack("head")


def draw_figures(results: Results, cfg, folder: Path) -> list[Path]:
    from interp.runs.plots import heads_heatmap, pyplot_and_seaborn, save_figure

    paths = [
        heads_heatmap(_mean_heads(results.decomposition_heads, "share_of_d"), folder / "decomposition_heads.png",
                      "image heads: direct effect on d (mean over items)", annotate=cfg.n_heads <= 16),
        heads_heatmap(_mean_heads(results.ablation[results.ablation.component == "head"], "effect_on_d"),
                      folder / "ablation_heads.png", "image heads: ablation effect on d (mean over items)",
                      annotate=cfg.n_heads <= 16),
    ]
    plt, sns = pyplot_and_seaborn()
    rows, cols = cfg.grid
    patches = results.decomposition_patches[results.decomposition_patches.position > 0]
    heads = patches[["layer", "head"]].drop_duplicates().values.tolist()
    fig, axes = plt.subplots(1, len(heads), figsize=(3.2 * len(heads), 3.0), squeeze=False)
    for ax, (layer, head) in zip(axes[0], heads):
        mean = patches[(patches["layer"] == layer) & (patches["head"] == head)].groupby("position")["share_of_d"].mean()
        bound = max(float(mean.abs().max()), 1e-12)
        sns.heatmap(mean.to_numpy().reshape(rows, cols), ax=ax, cmap="RdBu_r", center=0, vmin=-bound, vmax=bound,
                    xticklabels=False, yticklabels=False, cbar_kws={"shrink": 0.7})
        ax.set_title(f"L{layer}H{head}", fontsize=9)
    fig.suptitle("share of d read from each patch (top heads)", fontsize=10)
    paths.append(save_figure(fig, folder / "decomposition_patches.png"))
    plt.close(fig)

    table = results.tracing_by_row.set_index("layer")
    fig, ax = plt.subplots(figsize=(0.5 * table.shape[1] + 2.5, 0.35 * table.shape[0] + 1.5))
    sns.heatmap(table.astype(float), ax=ax, cmap="Purples", annot=table.shape[1] <= 16, fmt=".2f", annot_kws={"fontsize": 6})
    ax.set_title("causal tracing: recovered fraction by layer and patch row", fontsize=10)
    ax.set_xlabel("patch row ('cls' = class token)")
    ax.set_ylabel("layer (state entering the block; last = after the last block)")
    paths.append(save_figure(fig, folder / "tracing_layers_by_row.png"))
    plt.close(fig)

    tracing = results.tracing[results.tracing.position > 0]
    layers = sorted(tracing.layer.unique())
    n_cols = min(len(layers), 5)
    n_rows = -(-len(layers) // n_cols)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(2.6 * n_cols, 2.4 * n_rows), squeeze=False)
    for ax in axes.flat[len(layers):]:
        ax.axis("off")
    for ax, layer in zip(axes.flat, layers):
        mean = tracing[tracing.layer == layer].groupby("position")["recovered"].mean()
        sns.heatmap(mean.to_numpy().reshape(rows, cols), ax=ax, cmap="Purples", vmin=0, vmax=1, cbar=False,
                    xticklabels=False, yticklabels=False)
        ax.set_title(f"layer {layer}", fontsize=8)
    fig.suptitle("causal tracing: recovered fraction per patch (0 white, 1 dark)", fontsize=10, y=1.03)
    paths.append(save_figure(fig, folder / "tracing_grid.png"))
    plt.close(fig)
    return paths


def write_report(clip, inputs, results: Results, args, folder: Path, figures: list[Path]) -> Path:
    cfg = clip.image.cfg
    report = Report(f"Image side of VALSE existence: {args.model}")
    random_weights = "random" in str(cfg.pretrained) or cfg.pretrained is None
    report.paragraph(
        f"Model **{args.model}**, weights **{cfg.pretrained}**; image tower: {cfg.n_layers} layers, {cfg.n_heads} heads, "
        f"d_model {cfg.d_model}, patch grid {cfg.grid[0]} x {cfg.grid[1]}, pool {cfg.pool}."
        + (" **These are random (or hand-built) weights: the numbers below test the pipeline and say nothing "
           "about trained CLIP.**" if random_weights else "")
    )
    report.paragraph(f"Image preprocessing: `{clip.preprocess.pipeline}`. " + preset_sentence(_presets(clip, args)))
    report.paragraph(
        f"{len(inputs.items)} items analysed (--limit {args.limit}) of the {inputs.n_items_total - inputs.n_without_image} "
        f"valid existence items whose image is in `{args.images}` ({inputs.n_without_image} have no image there). "
        "d = S(caption) - S(foil) = exp(logit_scale) * cos difference."
    )
    report.table(results.items[["item_id", "image_file", "d", "d_corrupt", "prefers_caption"]], caption="Items")
    report.heading("Exactness checks (this run)")
    report.bullets([
        f"max |sum of decomposition shares - d| = {results.checks['max_abs_decomposition_sum_minus_d']:.2e}",
        f"max |clean d of the tracing engine - d| = {results.checks['max_abs_trace_clean_minus_d']:.2e}",
    ])
    report.heading("Top heads: direct effect (decomposition)")
    mean = results.decomposition_heads.groupby(["layer", "head"])["share_of_d"].mean().reset_index()
    report.table(mean.reindex(mean.share_of_d.abs().sort_values(ascending=False).index).head(args.top_heads))
    comps = results.decomposition_components.groupby(["component", "layer"])["share_of_d"].mean().reset_index()
    report.table(comps.reindex(comps.share_of_d.abs().sort_values(ascending=False).index).head(6),
                 caption="Largest non-head parts (embedding, ln_post bias, attention biases, MLPs), mean share of d:")
    report.heading(f"Top heads: total effect ({args.ablation} ablation)")
    abl = results.ablation.groupby(["component", "layer", "head"])["effect_on_d"].mean().reset_index()
    report.table(abl.reindex(abl.effect_on_d.abs().sort_values(ascending=False).index).head(args.top_heads))
    report.heading("Causal tracing")
    corruption = (f"corrupted images from `{args.corrupted_images}`" if args.corrupted_images
                  else f"Gaussian noise of {args.noise_factor} x the patch-embedding std on every patch (seed {args.seed})")
    report.paragraph(f"Corruption: {corruption}. Mean recovered fraction by layer and patch row:")
    report.table(results.tracing_by_row, floatfmt=".2f")
    report.heading("Image-text bridge")
    report.paragraph("Top heads of each tower by mean |effect on d| (zero ablation for text heads, "
                     f"{args.ablation} ablation for image heads); the other tower is held fixed.")
    report.table(results.bridge)
    if figures:
        report.heading("Figures")
        for path in figures:
            report.paragraph(FIGURE_TEXT.get(path.name, path.name))
            report.image(path, path.stem, relative_to=folder)
    report.heading("Files")
    report.bullets([f"`{name}`" for name in TABLES] + ["`config.json` (settings, versions, command line)"])
    return report.write(folder / "report.md")
