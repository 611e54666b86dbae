"""The measured effect of each deviation from the seed papers: ``python -m interp.bench fidelity``.

For every method with a ``paper`` preset, runs the paper's setting and the toolkit's option side by
side on data available offline and writes one row per comparison to ``fidelity.csv`` (method,
setting, paper value, option value, quantity, the two measurements, the data used), with
``config.json`` (arguments, versions). docs/fidelity.md quotes this table.

Data, and what the numbers can say:

- images: synthetic pictures with the shapes that matter (odd crop margins, palette, RGBA); pixel
  differences only, no image tower;
- matching and assignment map: the planted pair of :func:`analyses.synthetic.synthetic_pair`;
- ideal words, negator attention, ROME noise: the packaged MiniLM (all-MiniLM-L6-v2, the one trained
  text encoder offline) on the builtin concept sets / VALSE existence. None of these are CLIP results.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("interp.bench.fidelity")
MINILM = "all-MiniLM-L6-v2"


def _row(method: str, setting: str, paper: Any, option: Any, quantity: str, at_paper: float, at_option: float,
         data: str) -> dict[str, Any]:
    return {"method": method, "setting": setting, "paper": paper, "option": option, "quantity": quantity,
            "value_paper": float(at_paper), "value_option": float(at_option),
            "difference": float(at_option) - float(at_paper), "data": data}


def preprocessing_rows() -> list[dict[str, Any]]:
    from PIL import Image

    from interp.data.images import CLIP_STD, PreprocessConfig, preprocess_image

    rng = np.random.default_rng(0)
    rows = []
    cases = {"odd margin 1024x683 RGB": (1024, 683, "RGB"), "palette 400x301": (400, 301, "P"),
             "RGBA 333x517 (random alpha)": (333, 517, "RGBA"), "greyscale 300x261": (300, 261, "L")}
    for name, (w, h, mode) in cases.items():
        y, x = np.mgrid[0:h, 0:w]
        base = np.stack([255 * x / (w - 1), 255 * y / (h - 1), 128 + 0 * x], -1) + rng.normal(0, 40, (h, w, 3))
        image = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8), "RGB")
        if mode == "RGBA":
            image = image.convert("RGBA")
            image.putalpha(Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8), "L"))
        else:
            image = image.convert(mode)
        hf = preprocess_image(image, PreprocessConfig(pipeline="hf"))
        oc = preprocess_image(image, PreprocessConfig(pipeline="open_clip"))
        delta = np.abs(hf - oc)
        grey = (delta * np.asarray(CLIP_STD)[:, None, None] * 255).mean()
        rows.append(_row("image preprocessing", "preprocess", "hf", "open_clip",
                         f"mean |delta| normalised units ({name}; grey levels {grey:.2f})", 0.0, delta.mean(),
                         f"synthetic image, {name}"))
    return rows


def matching_rows(n_base: int, n_query: int, restarts: int, seeds: tuple[int, ...]) -> list[dict[str, Any]]:
    from analyses.matching import hungarian_accuracy, local_cka_scores, matching_protocol, protocol_splits, retrieval_topk
    from analyses.synthetic import synthetic_pair

    x_set, y_set = synthetic_pair(n_base + 3 * n_query, seed=0, noise=1.0)
    x, y = x_set.embeddings, y_set.embeddings
    data = f"synthetic_pair(n={x.shape[0]}, noise=1.0), {n_base} base / {n_query} queries, seeds {list(seeds)}"
    common = dict(n_base=n_base, n_query=n_query, seeds=seeds, qap_restarts=restarts)
    rbf = matching_protocol(x, y, methods=("qap",), **common)
    linear = matching_protocol(x, y, methods=("qap",), kernel="linear", **common)
    rows = [_row("matching", "QAP graph kernel", "rbf", "linear", "QAP accuracy (mean over seeds)",
                 rbf.accuracy.mean(), linear.accuracy.mean(), data)]
    redraw = matching_protocol(x, y, methods=("qap",), protocol="redraw", **common)
    rows.append(_row("matching", "protocol", "fixed_base", "redraw", "QAP accuracy (mean over seeds)",
                     rbf.accuracy.mean(), redraw.accuracy.mean(), data))
    rows.append(_row("matching", "protocol", "fixed_base", "redraw", "QAP accuracy (std over seeds)",
                     rbf.accuracy.std(), redraw.accuracy.std(), data))
    base, query = protocol_splits(x, n_base, n_query, seeds[:1])[0]
    t0 = time.process_time()
    exact = local_cka_scores(x[base], x[query], y[base], y[query])
    t_exact = time.process_time() - t0
    t0 = time.process_time()
    shared = local_cka_scores(x[base], x[query], y[base], y[query], bandwidth="shared")
    t_shared = time.process_time() - t0
    one = f"{data.split(', seeds')[0]}, seed {seeds[0]}"
    rows += [
        _row("matching", "local CKA bandwidth", "per_set", "shared", "max |score difference|", 0.0,
             np.abs(exact - shared).max(), one),
        _row("matching", "local CKA bandwidth", "per_set", "shared", "top-1 retrieval",
             retrieval_topk(exact)["top1"], retrieval_topk(shared)["top1"], one),
        _row("matching", "local CKA bandwidth", "per_set", "shared", "Hungarian accuracy",
             hungarian_accuracy(exact), hungarian_accuracy(shared), one),
        _row("matching", "local CKA bandwidth", "per_set", "shared", "CPU seconds", t_exact, t_shared, one),
    ]
    return rows


def assignment_rows(n: int) -> list[dict[str, Any]]:
    from analyses.assignment_map import AssignmentMapConfig, compare_maps
    from analyses.synthetic import synthetic_pair

    x_set, y_set = synthetic_pair(n, seed=0, noise=0.1)
    data = f"synthetic_pair(n={n}, noise=0.1), 20% held out; no word frequencies, so both use a uniform marginal"
    got, seconds = {}, {}
    for preset in ("vlap", "toolkit"):
        t0, c0 = time.perf_counter(), time.process_time()
        table = compare_maps(x_set.embeddings, y_set.embeddings, seed=0, config=AssignmentMapConfig.from_preset(preset))
        seconds[preset] = (time.perf_counter() - t0, time.process_time() - c0)
        got[preset] = table.set_index("map").loc["assignment_prediction"]
    setting = "preset (temperature 0.01 vs 0.05; 3 vs 20 Sinkhorn iterations)"
    rows = [_row("assignment map", setting, "vlap", "toolkit", f"held-out {k} retrieval", got["vlap"][k],
                 got["toolkit"][k], data) for k in ("top1", "top5")]
    rows += [_row("assignment map", setting, "vlap", "toolkit", f"{what} seconds (all three maps)",
                  seconds["vlap"][i], seconds["toolkit"][i], data) for i, what in enumerate(("wall", "CPU"))]
    return rows


def minilm_rows() -> list[dict[str, Any]]:
    import torch

    from interp import load_text_encoder
    from interp.data.negation import align_pairs, load_existence_pairs
    from interp.heads.attention import negator_attention
    from interp.tracing.noise import DEFAULT_NOISE_ROLES, calibration_token_ids, embedding_std
    from probes.concepts import builtin_names, load_concept_set
    from probes.ideal_words.analysis import embed_concept_set
    from probes.ideal_words.decomposition import compositionality_metrics

    model = load_text_encoder(MINILM)
    rows = []
    for name in builtin_names():
        cs = load_concept_set(name)
        if len(cs.shape) < 2:
            continue
        m = compositionality_metrics(embed_concept_set(model, cs, layers=False).final)
        rows.append(_row("ideal words", "rank definition", "effective (99% of spread)", "machine epsilon",
                         f"rank of {name} (bound {m['rank_bound']}, r2 {m['r2']:.3f})", m["effective_rank"],
                         m["rank_eps"], f"{MINILM}, concept set {name}"))
    aligned, _ = align_pairs(load_existence_pairs(valid_only=True).pairs, model.tokenizer)
    data = f"{MINILM}, {len(aligned)} token-aligned VALSE existence items"
    roles = DEFAULT_NOISE_ROLES
    corrupted = embedding_std(model, calibration_token_ids(aligned, roles, "corrupted"))
    everything = embedding_std(model, calibration_token_ids(aligned, roles, "all_tokens"))
    rows.append(_row("ROME noise", "noise calibration", "corrupted", "all_tokens",
                     f"token-embedding std (noised roles {','.join(roles)})", corrupted, everything, data))
    with torch.no_grad():
        att = negator_attention(model, aligned, progress=False)
    best_layer = int(att.mean_scores().mean(1).argmax())
    by_max = att.role_table(best_layer, further_pool="max")
    by_mean = att.role_table(best_layer, further_pool="mean")
    heads = [c for c in by_max.columns if c.startswith("head")]
    gaps = (by_mean.loc["further", heads].astype(float) - by_max.loc["further", heads].astype(float)).abs()
    head = gaps.idxmax()
    rows.append(_row("negator attention", "'further' pooling", "max", "mean",
                     f"'further' row, layer {best_layer} {head} (largest gap of the layer's heads)",
                     by_max.loc["further", head], by_mean.loc["further", head], data))
    rows.append(_row("negator attention", "'further' pooling", "max", "mean",
                     f"'further' row, layer {best_layer}, mean over heads",
                     by_max.loc["further", heads].astype(float).mean(), by_mean.loc["further", heads].astype(float).mean(),
                     data))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m interp.bench fidelity", description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for fidelity.csv and config.json")
    parser.add_argument("--n-base", type=int, default=100)
    parser.add_argument("--n-query", type=int, default=200)
    parser.add_argument("--qap-restarts", type=int, default=10)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--map-n", type=int, default=2000, help="pairs for the assignment-map comparison")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from threadpoolctl import threadpool_limits

    import pandas as pd

    from interp.runs.rundir import package_versions

    seeds = tuple(int(s) for s in args.seeds.split(","))
    rows: list[dict[str, Any]] = []
    timings = {}
    with threadpool_limits(1):  # small matrices: one BLAS thread (see the environment notes in the README)
        for name, job in (("preprocessing", preprocessing_rows),
                          ("matching", lambda: matching_rows(args.n_base, args.n_query, args.qap_restarts, seeds)),
                          ("assignment_map", lambda: assignment_rows(args.map_n)),
                          ("minilm", minilm_rows)):
            t0, c0 = time.perf_counter(), time.process_time()
            rows += job()
            timings[name] = {"wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0}
            log.info("%s: %.1f s wall, %.1f s CPU", name, timings[name]["wall_s"], timings[name]["cpu_s"])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(out / "fidelity.csv", index=False)
    config = {"argv": list(sys.argv[1:] if argv is None else argv), "args": vars(args), "timings": timings,
              "versions": package_versions()}
    (out / "config.json").write_text(json.dumps(config, indent=2, default=str))
    log.info("wrote %s", out / "fidelity.csv")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
