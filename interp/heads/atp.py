"""Attribution patching (AtP) for ablations of heads, attention blocks and MLPs.

The exact ablation engine (:mod:`interp.heads.ablation`) re-runs the encoder once per component.
AtP (Nanda 2023; Kramar et al. 2024, "AtP*") estimates every component's effect at once, to first
order: with ``a`` a component's clean activation at the ablated positions, ``a'`` its
replacement (zero or the reference mean) and ``g = dS/da`` the gradient of the score in the clean
run,

    S(ablated) - S(clean) ~= sum over ablated positions of (a' - a) . g

One forward (caching ``a``) and one backward (giving every ``g``) per chunk of sentences, however
many components. The estimate is exact when the score is affine in the component's activation
(tested on a planted linear encoder) and otherwise approximate: attention softmax saturation and
LayerNorm curvature are what it misses, so every use should check it against exact re-runs
(:func:`fidelity`).

AtP*'s QK fix (Kramar et al. 2024, Sec. 3.1) is for nodes whose effect goes *through* an
attention pattern: :func:`atp_qk_ablation_scores` estimates ablating a head's queries or keys with
the pattern recomputed exactly. Head outputs ``z`` and block outputs enter the residual stream
linearly, so their estimate (:func:`atp_ablation_scores`) has no softmax step to re-run.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from interp.data.scoring import score
from interp.heads.ablation import (
    ablated_positions,
    AblationError,
    AblationScores,
    Component,
    _AttnResult,
    _trim,
    _values,
    check_components,
)
from interp.models.tokenization import TokenBatch

ATP_METHODS = ("zero", "mean")
# metric(embedding [b, d_embed], sentence index [b]) -> [b]
SentenceMetric = Callable[[Float[Tensor, "b d_embed"], Int[Tensor, " b"]], Float[Tensor, " b"]]


def _cosine_metric(directions: Tensor) -> SentenceMetric:
    def metric(embedding: Tensor, rows: Tensor) -> Tensor:
        return score(embedding.float(), directions[rows.cpu()].to(embedding.device).float())

    return metric


def atp_ablation_scores(
    model,
    batch: TokenBatch,
    components: Sequence[Component],
    method: str = "mean",
    *,
    directions: Float[Tensor, "sentence d_embed"] | None = None,
    metric: SentenceMetric | None = None,
    means: dict | None = None,
    positions: Bool[Tensor, "sentence pos"] | None = None,
    sentence_batch: int = 64,
) -> AblationScores:
    """First-order estimates of every component's ablated score (the same table as
    :func:`~interp.heads.ablation.ablation_scores`, ``ablated`` estimated).

    Args:
        batch: the sentences.
        components: heads (at ``hook_z``), attention blocks or MLPs (at their outputs).
        method: ``zero`` or ``mean`` (``means`` from :func:`~interp.heads.ablation.reference_means`,
            site ``z``); resampling has a different replacement per sentence and is not estimated.
        directions: ``[sentence, d_embed]``: the score is ``normalize(embedding) . direction``.
        metric: instead of ``directions``, any row-wise ``f(embedding, sentence_index) -> [b]``.
        positions: ``[sentence, pos]`` where to ablate (default every real token).
    """
    if method not in ATP_METHODS:
        raise AblationError(f"AtP estimates {' and '.join(ATP_METHODS)} ablation, not {method!r} "
                            "(a resampled value differs per sentence: run the exact engine)")
    check_components(model, components)
    components = list(components)
    if (metric is None) == (directions is None):
        raise AblationError("pass directions=[sentence, d_embed] (cosine score) or metric=f(embedding, rows), one of them")
    if directions is not None and directions.shape[0] != len(batch):
        raise AblationError(f"directions has {directions.shape[0]} rows for {len(batch)} sentences: pass one per sentence")
    metric = metric or _cosine_metric(directions)
    mask_all = ablated_positions(batch, positions, method, means, components)

    names = sorted({c.hook_name("z") for c in components})
    clean = torch.zeros(len(batch))
    estimate = torch.zeros(len(components), len(batch))
    order = torch.argsort(batch.lengths, stable=True)
    with _AttnResult(model, False):
        for start in range(0, len(batch), sentence_batch):
            idx = order[start:start + sentence_batch]
            sub = _trim(model, batch, idx).to(model.device)
            width = sub.tokens.shape[1]
            mask = mask_all[idx][:, :width].to(model.device)
            acts, grads, scores = _forward_backward(model, sub, names, lambda e: metric(e, idx))
            clean[idx] = scores.detach().float().cpu()
            for c, comp in enumerate(components):
                act, grad = comp.select(acts[comp.hook_name("z")]), comp.select(grads[comp.hook_name("z")])
                new = _values([comp], method, width, tuple(act.shape), means, None, "z", act.dtype, act.device)[0]
                delta = torch.where(mask[..., None], new - act, torch.zeros_like(act))  # NaN-free off the mask
                estimate[c, idx] = (clean[idx] + (delta * grad).sum((1, 2)).float().cpu())
    return AblationScores(clean=clean, ablated=estimate, components=components)


def _forward_backward(model, batch: TokenBatch, names: Sequence[str], metric) -> tuple[dict, dict, Tensor]:
    """One forward caching the activations at ``names`` and one backward of the summed metric.

    Rows are independent (attention never mixes sentences), so the gradient of the sum with
    respect to a row's activation is that row's own gradient."""
    acts: dict[str, Tensor] = {}

    def keep(act: Tensor, hook) -> Tensor:
        acts[hook.name] = act
        return act

    with torch.enable_grad():
        x0 = model(batch, stop_at_layer=0).detach().requires_grad_(True)
        with model.hooks(fwd_hooks=[(name, keep) for name in names]):
            scores = metric(model(batch, start_at_layer=0, residual=x0))
        grads = torch.autograd.grad(scores.sum(), [acts[n] for n in names])
    return {n: a.detach() for n, a in acts.items()}, dict(zip(names, grads)), scores.detach()


# ------------------------------------------------------------------------------------ fidelity
def _rank(values: np.ndarray) -> np.ndarray:
    return pd.Series(values).rank(method="average").to_numpy()


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation (average ranks for ties); NaN for fewer than 2 values or a constant."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) < 2 or np.all(x == x[0]) or np.all(y == y[0]):
        return float("nan")
    return float(np.corrcoef(_rank(x), _rank(y))[0, 1])


def top_k_overlap(x: Sequence[float], y: Sequence[float], k: int) -> float:
    """Share of the k largest ``|x|`` that are among the k largest ``|y|`` (ties by order)."""
    x, y = np.abs(np.asarray(x, dtype=float)), np.abs(np.asarray(y, dtype=float))
    k = min(k, len(x))
    if k == 0:
        return float("nan")
    top_x = set(np.argsort(-x, kind="stable")[:k].tolist())
    top_y = set(np.argsort(-y, kind="stable")[:k].tolist())
    return len(top_x & top_y) / k


def fidelity(estimate: pd.DataFrame, exact: pd.DataFrame, *, value: str = "effect", by: str | None = "layer",
             unit: str = "component", k: int = 10) -> pd.DataFrame:
    """How far to trust AtP: Spearman correlation and top-k overlap of the estimated vs exact
    ``value`` of each ``unit`` (averaged over items first), overall and per ``by`` group.

    Both tables need columns ``unit``, ``value`` (and ``by``); they are matched on ``unit``.
    """
    est = estimate.groupby(unit)[value].mean()
    exa = exact.groupby(unit)[value].mean()
    joined = pd.concat({"estimate": est, "exact": exa}, axis=1).dropna()
    groups = [("all", joined)]
    if by is not None:
        group_of = exact.drop_duplicates(unit).set_index(unit)[by]
        groups += [(g, part) for g, part in joined.groupby(group_of.reindex(joined.index))]
    rows = []
    for name, part in groups:
        rows.append({by or "group": name, "n": len(part), "spearman": spearman(part["estimate"], part["exact"]),
                     f"top{k}_overlap": top_k_overlap(part["estimate"], part["exact"], k),
                     "max_abs_error": float((part["estimate"] - part["exact"]).abs().max())})
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------ queries and keys
QK_SITES = ("q", "k")


def atp_qk_ablation_scores(
    model,
    batch: TokenBatch,
    heads: Sequence[Component],
    site: str,
    method: str = "zero",
    *,
    directions: Float[Tensor, "sentence d_embed"] | None = None,
    metric: SentenceMetric | None = None,
    qk_fix: bool = True,
    sentence_batch: int = 64,
) -> AblationScores:
    """Estimated scores with each head's queries (``site="q"``) or keys (``"k"``) ablated at every
    real position: ``zero``, or ``mean`` (per position over the real tokens of ``batch`` itself).

    With ``qk_fix`` (AtP*, Kramar et al. 2024, Sec. 3.1) the head's attention pattern under the
    ablation is recomputed exactly (one softmax, no forward pass) and only the step from the
    pattern to the score is linearised: ``sum (P' - P) . dS/dP``. Plain AtP linearises through the
    softmax, ``sum (q' - q) . dS/dq``, and misses saturation: a score far from the softmax's
    linear range changes the pattern much less (or more) than its gradient says.
    """
    if site not in QK_SITES:
        raise AblationError(f"site={site!r}: the QK estimate is for a head's queries 'q' or keys 'k'")
    if method not in ATP_METHODS:
        raise AblationError(f"AtP estimates {' and '.join(ATP_METHODS)} ablation, not {method!r}")
    heads = list(heads)
    check_components(model, heads)
    if any(c.kind != "head" for c in heads):
        raise AblationError("queries and keys belong to heads: pass head components only")
    if (metric is None) == (directions is None):
        raise AblationError("pass directions=[sentence, d_embed] (cosine score) or metric=f(embedding, rows), one of them")
    metric = metric or _cosine_metric(directions)
    layers = sorted({c.layer for c in heads})
    names = [f"blocks.{l}.attn.hook_{w}" for l in layers for w in ("q", "k", "attn_scores", "pattern")]
    means = _qk_means(model, batch, layers, site, sentence_batch) if method == "mean" else None
    clean = torch.zeros(len(batch))
    estimate = torch.zeros(len(heads), len(batch))
    order = torch.argsort(batch.lengths, stable=True)
    for start in range(0, len(batch), sentence_batch):
        idx = order[start:start + sentence_batch]
        sub = _trim(model, batch, idx).to(model.device)
        width = sub.tokens.shape[1]
        keep = sub.attention_mask[:, :, None, None]
        acts, grads, scores = _forward_backward(model, sub, names, lambda e: metric(e, idx))
        clean[idx] = scores.float().cpu()
        per_layer = {}
        for layer in layers:
            a = lambda w: acts[f"blocks.{layer}.attn.hook_{w}"]  # noqa: E731
            act = a(site)
            value = torch.zeros_like(act) if means is None else means[layer][None, :width].to(act).expand_as(act)
            new = torch.where(keep, value, act)
            if qk_fix:
                q, k = (new, a("k")) if site == "q" else (a("q"), new)
                logits = torch.einsum("bqhe,bkhe->bhqk", q, k) / model.cfg.d_head ** 0.5
                logits = logits.masked_fill(torch.isinf(a("attn_scores")), float("-inf"))
                change = torch.softmax(logits, dim=-1) - a("pattern")
                per_layer[layer] = (change.nan_to_num() * grads[f"blocks.{layer}.attn.hook_pattern"]).sum((2, 3))
            else:
                per_layer[layer] = ((new - act) * grads[f"blocks.{layer}.attn.hook_{site}"]).sum((1, 3))
        for c, comp in enumerate(heads):
            estimate[c, idx] = clean[idx] + per_layer[comp.layer][:, comp.head].float().cpu()
    return AblationScores(clean=clean, ablated=estimate, components=heads)


@torch.no_grad()
def _qk_means(model, batch: TokenBatch, layers: Sequence[int], site: str, sentence_batch: int) -> dict[int, Tensor]:
    """Per-position mean ``[pos, head, d_head]`` of each layer's q or k over the batch's real tokens."""
    names = [f"blocks.{l}.attn.hook_{site}" for l in layers]
    width = batch.tokens.shape[1]
    sums = {l: None for l in layers}
    counts = torch.zeros(width, dtype=torch.float64)
    for start in range(0, len(batch), sentence_batch):
        sub = batch[list(range(start, min(start + sentence_batch, len(batch))))].to(model.device)
        _, cache = model.run_with_cache(sub, names_filter=names)
        keep = sub.attention_mask.to(torch.float64).cpu()
        counts += keep.sum(0)
        for l, name in zip(layers, names):
            part = torch.einsum("bp,bphe->phe", keep, cache[name].double().cpu())
            sums[l] = part if sums[l] is None else sums[l] + part
    return {l: (sums[l] / counts.clamp(min=1)[:, None, None]).to(model.dtype) for l in layers}
