"""Ablation of heads, attention blocks and MLPs (zero / mean / resample), batched.

An ablation replaces one component's output with a value that carries no item-specific
information and re-runs the encoder; the total effect is the change in the score. Components
(:class:`Component`): a head (its ``attn.hook_z`` slice, or ``attn.hook_result`` with
``site="result"``: both give the same output, since result = z @ W_O), a whole attention block
(``hook_attn_out``), or an MLP (``hook_mlp_out``), at every real position or at the positions a
mask selects.

Methods: ``zero``; ``mean`` (the component's mean over a reference set of sentences: per
position over the reference sentences long enough, ``mean_over="items"``, or one vector over every
real token, ``mean_over="positions"``); ``resample`` (the value on a donor sentence from another
item, drawn with a fixed seed by :func:`resample_donors`).

The engine (:func:`ablation_scores`) runs each chunk of sentences once clean, caching the
residual entering every layer; then for every layer it packs all of that layer's components (x
sentences) into the batch dimension and restarts the encoder at the layer
(``forward(start_at_layer=l, residual=...)``) with a hook editing each packed copy's own
component. :func:`ablation_scores_reference` is the plain per-component, per-sentence loop the
tests compare it with.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from jaxtyping import Bool, Float, Int
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from interp.errors import ClipInterpError, NonFiniteError
from interp.data.scoring import score
from interp.models.tokenization import TokenBatch

log = logging.getLogger(__name__)

from interp.heads.options import KINDS, MEAN_OVER, METHODS, SITES  # noqa: E402,F401 - re-exported


class AblationError(ClipInterpError, ValueError):
    """An ablation that cannot be run as asked (unknown method, index out of range, no reference)."""


@dataclass(frozen=True)
class Component:
    """One ablatable part of the encoder: ``head`` (layer, head), ``attn`` or ``mlp`` (layer).
    Layers and heads are 0-indexed."""

    kind: str
    layer: int
    head: int | None = None

    @property
    def label(self) -> str:
        return f"L{self.layer}H{self.head}" if self.kind == "head" else f"L{self.layer} {self.kind}"

    def hook_name(self, site: str = "z") -> str:
        if self.kind == "head":
            return f"blocks.{self.layer}.attn.hook_{site}"
        return f"blocks.{self.layer}.hook_{'attn' if self.kind == 'attn' else 'mlp'}_out"

    def select(self, act: Tensor) -> Tensor:
        """The component's slice of its hook's activation: ``[..., pos, d]``."""
        return act[..., self.head, :] if self.kind == "head" else act


def all_heads(model, layers: Sequence[int] | None = None) -> list[Component]:
    """Every head of the given layers (default all), layer-major."""
    layers = range(model.cfg.n_layers) if layers is None else layers
    return [Component("head", l, h) for l in layers for h in range(model.cfg.n_heads)]


def check_method(method: str, mean_over: str = "items", site: str = "z") -> None:
    if method not in METHODS:
        raise AblationError(f"ablation method {method!r} does not exist: choose one of {', '.join(METHODS)}")
    if mean_over not in MEAN_OVER:
        raise AblationError(f"mean_over={mean_over!r} is not one of {', '.join(MEAN_OVER)}")
    if site not in SITES:
        raise AblationError(f"site={site!r} is not one of {', '.join(SITES)} (a head's z or its result)")


def check_components(model, components: Sequence[Component]) -> None:
    """Clear errors for unknown kinds and layer/head indices out of range (0-indexed)."""
    if not components:
        raise AblationError("no components to ablate: pass at least one Component (e.g. all_heads(model))")
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    for comp in components:
        if comp.kind not in KINDS:
            raise AblationError(f"component kind {comp.kind!r} is not one of {', '.join(KINDS)}")
        if not 0 <= comp.layer < n_layers:
            raise AblationError(f"layer {comp.layer} of {comp.label} is out of range: valid layers are 0..{n_layers - 1} (0-indexed)")
        if comp.kind == "head" and (comp.head is None or not 0 <= comp.head < n_heads):
            raise AblationError(f"head {comp.head} of layer {comp.layer} is out of range: valid heads are 0..{n_heads - 1} (0-indexed)")
    seen: set[Component] = set()
    for comp in components:  # a repeated component would share one output row with its twin
        if comp in seen:
            raise AblationError(f"component {comp.label} is listed twice: pass each component once")
        seen.add(comp)


def _hook_names(components: Sequence[Component], site: str) -> list[str]:
    return sorted({c.hook_name(site) for c in components})


class _AttnResult:
    """Context manager: switch ``use_attn_result`` on for site="result", restore after."""

    def __init__(self, model, on: bool):
        self.model, self.on = model, on

    def __enter__(self):
        self.before = self.model.cfg.use_attn_result
        if self.on:
            self.model.set_use_attn_result(True)

    def __exit__(self, *exc):
        self.model.set_use_attn_result(self.before)


def _trim(model, batch: TokenBatch, index: Tensor | Sequence[int]) -> TokenBatch:
    """Rows ``index`` of the batch, cut to their longest real length when the model allows it."""
    sub = batch[index]
    if model.cfg.trims_to_longest:
        width = int(sub.lengths.max())
        sub = TokenBatch(sub.tokens[:, :width], sub.attention_mask[:, :width], sub.pool_index,
                         sub.token_type_ids[:, :width], sub.texts)
    return sub


@torch.no_grad()
def reference_means(
    model,
    reference: TokenBatch,
    components: Sequence[Component],
    *,
    site: str = "z",
    mean_over: str = "items",
    batch_size: int = 64,
) -> dict[Component, tuple[Tensor, Tensor]]:
    """Each component's mean activation over the real tokens of ``reference``.

    Returns ``{component: (mean, count)}``: with ``mean_over="items"`` mean is ``[pos, d]`` (per
    position, over the reference sentences that reach it; NaN where none does) and count ``[pos]``;
    with ``"positions"`` mean is ``[d]`` over every real token and count a scalar.
    """
    check_method("mean", mean_over, site)
    check_components(model, components)
    if reference is None or len(reference) == 0:
        raise AblationError("the reference set for mean ablation is empty: pass at least one reference sentence")
    names = _hook_names(components, site)
    width = reference.tokens.shape[1]
    sums: dict[Component, Tensor] = {}
    counts = torch.zeros(width, dtype=torch.float64)
    with _AttnResult(model, site == "result"):
        for start in range(0, len(reference), batch_size):
            sub = _trim(model, reference, range(start, min(start + batch_size, len(reference))))
            _, cache = model.run_with_cache(sub.to(model.device), names_filter=names)
            keep = sub.attention_mask.to(torch.float64)  # [b, pos]
            counts[: keep.shape[1]] += keep.sum(0)
            for comp in components:
                act = comp.select(cache[comp.hook_name(site)]).to(torch.float64).cpu()  # [b, pos, d]
                part = torch.einsum("bp,bpd->pd", keep, act)
                if comp not in sums:
                    sums[comp] = torch.zeros(width, act.shape[-1], dtype=torch.float64)
                sums[comp][: part.shape[0]] += part
    out = {}
    for comp, total in sums.items():
        if mean_over == "positions":
            out[comp] = ((total.sum(0) / counts.sum()).to(model.dtype), counts.sum())
        else:
            mean = total / counts[:, None]  # NaN where no reference sentence reaches a position
            out[comp] = (mean.to(model.dtype), counts)
    return out


def resample_donors(
    target_lengths: Int[Tensor, " n"],
    reference_lengths: Int[Tensor, " m"],
    seed: int,
    *,
    target_groups: Sequence[int] | None = None,
    reference_groups: Sequence[int] | None = None,
) -> tuple[Int[Tensor, " n"], Int[Tensor, "n pos"]]:
    """Donors for resample ablation: for each target sentence, a reference sentence from another
    group (item) when groups are given, drawn uniformly with ``torch.Generator().manual_seed(seed)``;
    the same inputs and seed always give the same donors.

    The donor is drawn among the allowed sentences at least as long as the target, and position p
    takes the donor's value at position p. A target longer than every allowed sentence (e.g. the
    single 16-token VALSE item) gets one of the longest ones instead, with its positions mapped
    ``p -> min(p, L_donor - 2)`` and its last position (CLIP's EOT) to the donor's last position.

    Returns:
        ``(index, positions)``: ``index[i]`` is the donor's row in the reference set and
        ``positions[i, p]`` the donor position whose value replaces target position p (``[n, max
        target length]``; 0 past the target's end).
    """
    target_lengths = torch.as_tensor(target_lengths).long()
    reference_lengths = torch.as_tensor(reference_lengths).long()
    if reference_lengths.numel() == 0:
        raise AblationError("the reference set for resample ablation is empty: pass at least one donor sentence")
    allowed = torch.ones(len(target_lengths), len(reference_lengths), dtype=torch.bool)
    if target_groups is not None or reference_groups is not None:
        if target_groups is None or reference_groups is None:
            raise AblationError("pass both target_groups and reference_groups, or neither")
        tg, rg = torch.as_tensor(list(target_groups)), torch.as_tensor(list(reference_groups))
        allowed = tg[:, None] != rg[None, :]
    if bool((~allowed.any(1)).any()):
        bad = int((~allowed.any(1)).nonzero()[0])
        raise AblationError(f"target sentence {bad} has no donor: every reference sentence is from its own item; "
                            "add sentences of other items to the reference set")
    longest = torch.where(allowed, reference_lengths[None, :], 0).amax(1)  # [n]
    long_enough = reference_lengths[None, :] >= torch.minimum(target_lengths, longest)[:, None]
    ok = allowed & long_enough
    n_ok = ok.sum(1)
    generator = torch.Generator().manual_seed(int(seed))
    draw = (torch.rand(len(target_lengths), generator=generator, dtype=torch.float64) * n_ok).long()
    draw = torch.minimum(draw, n_ok - 1)
    rank = ok.long().cumsum(1) - 1  # index of the draw-th allowed reference in each row
    index = ((rank == draw[:, None]) & ok).long().argmax(1)
    width = int(target_lengths.max())
    p = torch.arange(width)[None, :].expand(len(target_lengths), -1)
    donor_len = reference_lengths[index][:, None]
    short = donor_len < target_lengths[:, None]  # [n, 1]: the fallback rows
    mapped = torch.minimum(p, (donor_len - 2).clamp(min=0))
    mapped = torch.where(p == target_lengths[:, None] - 1, donor_len - 1, mapped)
    positions = torch.where(short, mapped, p)
    positions = torch.where(p < target_lengths[:, None], positions, 0)
    if bool(short.any()):
        log.info("resample: %d target sentences are longer than every allowed donor; mapped their tail "
                 "positions onto the donor's (see resample_donors)", int(short.sum()))
    return index, positions


@dataclass
class AblationScores:
    """Scores before and after ablation.

    Attributes:
        clean: ``[sentence]`` S of each unablated sentence.
        ablated: ``[component, sentence]`` S with that component ablated.
        components: the components, in row order.
    """

    clean: Float[Tensor, " sentence"]
    ablated: Float[Tensor, "component sentence"]
    components: list[Component]


def _score(emb: Float[Tensor, "b d_embed"], directions: Float[Tensor, "b d_embed"]) -> Float[Tensor, " b"]:
    return score(emb.float(), directions.float())


def _values(
    comps: list[Component], method: str, width: int, act_shape: tuple[int, ...], means, donor_cache, site,
    dtype, device,
) -> Tensor:
    """Replacement values ``[k, b, pos, d]`` for the packed components."""
    k, (b, _, d) = len(comps), act_shape
    if method == "zero":
        return torch.zeros(k, b, width, d, dtype=dtype, device=device)
    if method == "mean":
        vals = []
        for comp in comps:
            mean, _ = means[comp]
            if mean.ndim == 1:
                vals.append(mean.to(device)[None, None].expand(b, width, d))
            else:
                m = mean[:width].to(device)
                if m.shape[0] < width:
                    m = torch.cat([m, m.new_full((width - m.shape[0], d), float("nan"))])
                vals.append(m[None].expand(b, width, d))
        return torch.stack(vals)
    donor_cache, donor_pos = donor_cache
    gather = donor_pos[:, :width, None].expand(b, width, d)
    return torch.stack([comp.select(donor_cache[comp.hook_name(site)]).gather(1, gather) for comp in comps])


def _check_mean_coverage(means, components, mask: Bool[Tensor, "b pos"]) -> None:
    reached = mask.any(0).nonzero().flatten()
    for comp in components:
        mean, count = means[comp]
        if mean.ndim == 2:
            width = mean.shape[0]
            too_far = reached[reached >= width]
            short = too_far if too_far.numel() else reached[count[reached] == 0]
            if short.numel():
                raise AblationError(
                    f"position {int(short[0])} has no reference sentence for the per-position mean of {comp.label}: "
                    "use a reference set with sentences at least as long, or mean_over='positions'"
                )


def ablated_positions(batch: TokenBatch, positions: Tensor | None, method: str, means: Any,
                      components: Sequence[Component]) -> Bool[Tensor, "sentence pos"]:
    """Where the components are ablated: the real tokens, within ``positions`` when given. Checks
    that mean ablation has a mean for every component at every such position (shared by the exact
    sweep and its attribution-patching estimate)."""
    if method == "mean":
        if means is None:
            raise AblationError("method 'mean' needs means=reference_means(model, reference, components)")
        missing = [c.label for c in components if c not in means]
        if missing:
            raise AblationError(f"means lack {', '.join(missing[:5])}: compute reference_means for these components")
    mask = batch.attention_mask.clone()
    if positions is not None:
        if positions.shape != mask.shape:
            raise AblationError(f"positions has shape {tuple(positions.shape)}, expected {tuple(mask.shape)} (sentence x pos)")
        mask &= positions.to(torch.bool)
    if method == "mean":
        _check_mean_coverage(means, components, mask)
    return mask


@torch.no_grad()
def ablation_scores(
    model,
    batch: TokenBatch,
    directions: Float[Tensor, "sentence d_embed"],
    components: Sequence[Component],
    method: str = "mean",
    *,
    means: dict | None = None,
    donors: TokenBatch | None = None,
    donor_positions: Int[Tensor, "sentence pos"] | None = None,
    positions: Bool[Tensor, "sentence pos"] | None = None,
    site: str = "z",
    sentence_batch: int = 64,
    max_rows: int = 64,
    progress: bool = True,
) -> AblationScores:
    """Score every sentence with each component ablated, batched (see the module docstring).

    Args:
        batch: the sentences.
        directions: ``[sentence, d_embed]`` per-sentence target; S = normalize(embedding) . direction.
        components: what to ablate, one at a time.
        method: ``zero``, ``mean`` (needs ``means`` from :func:`reference_means`) or ``resample``
            (needs ``donors``, row i = sentence i's donor, and ``donor_positions`` ``[sentence, pos]``,
            the donor position that replaces each position: both from :func:`resample_donors`,
            ``index, pos = resample_donors(...)``, ``donors=reference[index]``).
        positions: ``[sentence, pos]`` where to ablate (default every real token); always
            intersected with the real tokens.
        site: a head's ``z`` (default) or ``result``.
        sentence_batch: sentences per clean pass; max_rows: rows per packed ablated pass.
    """
    check_method(method, site=site)
    check_components(model, components)
    components = list(components)
    if directions.shape[0] != len(batch):
        raise AblationError(f"directions has {directions.shape[0]} rows for {len(batch)} sentences: pass one per sentence")
    if method == "resample" and (donors is None or donor_positions is None or len(donors) != len(batch)):
        raise AblationError("method 'resample' needs donors (a TokenBatch, one donor sentence per sentence) and "
                            "donor_positions: get both from resample_donors")
    mask_all = ablated_positions(batch, positions, method, means, components)
    if method == "resample":
        width_all = batch.tokens.shape[1]
        donor_positions = donor_positions.long()[:, :width_all]
        if donor_positions.shape[1] < width_all:
            donor_positions = F.pad(donor_positions, (0, width_all - donor_positions.shape[1]))
        reach = torch.where(mask_all, donor_positions, 0).amax(1) if width_all else None
        if bool((reach >= donors.lengths).any()):
            raise AblationError("donor_positions point past the end of their donor sentence: draw them with resample_donors")

    by_layer: dict[int, list[Component]] = {}
    for comp in components:
        by_layer.setdefault(comp.layer, []).append(comp)
    clean = torch.zeros(len(batch))
    ablated = torch.zeros(len(components), len(batch))
    row_of = {c: i for i, c in enumerate(components)}
    order = torch.argsort(batch.lengths, stable=True)  # similar lengths share a chunk: less padding
    chunks = [order[s:s + sentence_batch] for s in range(0, len(batch), sentence_batch)]
    resid_names = [model.resid_hook_name(l) for l in by_layer]
    with _AttnResult(model, site == "result"):
        bar = tqdm(total=len(chunks) * len(components), desc=f"{method} ablation", disable=not progress)
        for idx in chunks:
            sub = _trim(model, batch, idx).to(model.device)
            width, b = sub.tokens.shape[1], len(idx)
            dirs = directions[idx].to(model.device)
            mask = mask_all[idx][:, :width].to(model.device)
            emb, cache = model.run_with_cache(sub, names_filter=resid_names)
            clean[idx] = _score(emb, dirs).cpu()
            donor_cache = None
            if method == "resample":
                donor_sub = _trim(model, donors, idx).to(model.device)
                _, donor_acts = model.run_with_cache(donor_sub, names_filter=_hook_names(components, site))
                donor_cache = (donor_acts, donor_positions[idx].to(model.device))
            for layer, comps in by_layer.items():
                resid = cache[model.resid_hook_name(layer)]
                k_max = max(1, max_rows // b)
                for start in range(0, len(comps), k_max):
                    pack = comps[start:start + k_max]
                    scores = _run_pack(model, sub, resid, dirs, mask, pack, method, means, donor_cache, site, layer)
                    for j, comp in enumerate(pack):
                        ablated[row_of[comp], idx] = scores[j].cpu()
                    bar.update(len(pack))
        bar.close()
    _check_finite_scores(clean, ablated, components)
    return AblationScores(clean=clean, ablated=ablated, components=components)


def _check_finite_scores(clean: Tensor, ablated: Tensor, components: Sequence[Component]) -> None:
    """NaN in a score is an error naming its source, never a value a NaN-skipping mean hides."""
    bad = (~torch.isfinite(clean)).nonzero().flatten().tolist()
    if bad:
        raise NonFiniteError(f"the clean score of sentence {bad[0]} (and {len(bad) - 1} more) is NaN or infinite: "
                             "the model's weights or the target directions hold NaN; check the checkpoint")
    rows = (~torch.isfinite(ablated)).any(1).nonzero().flatten().tolist()
    if rows:
        raise NonFiniteError(f"ablating {components[rows[0]].label} gives NaN or infinite scores: its replacement "
                             "values hold NaN (e.g. a per-position mean with no reference sentence at a position)")


def _run_pack(model, sub, resid, dirs, mask, pack, method, means, donor_cache, site, layer) -> Tensor:
    """One restarted forward for ``k`` components x ``b`` sentences; returns scores ``[k, b]``."""
    k, b, width = len(pack), len(sub), sub.tokens.shape[1]
    rows = torch.arange(b).repeat(k)
    packed = TokenBatch(sub.tokens[rows], sub.attention_mask[rows], sub.pool_index[rows],
                        sub.token_type_ids[rows], [sub.texts[i] for i in rows.tolist()])
    hooks = []
    for name in sorted({c.hook_name(site) for c in pack}):
        members = [j for j, c in enumerate(pack) if c.hook_name(site) == name]
        hooks.append((name, _make_hook(pack, members, k, b, method, means, donor_cache, site, mask, width)))
    residual = resid.repeat(k, 1, 1)
    with model.hooks(fwd_hooks=hooks):
        emb = model(packed, start_at_layer=layer, residual=residual)
    return _score(emb, dirs.repeat(k, 1)).view(k, b)


def _make_hook(pack, members, k, b, method, means, donor_cache, site, mask, width):
    comps = [pack[j] for j in members]
    members_t = torch.tensor(members)

    def hook(act: Tensor, hook=None) -> Tensor:
        act = act.clone()
        view = act.view(k, b, *act.shape[1:])
        d = act.shape[-1]
        values = _values(comps, method, width, (b, width, d), means, donor_cache, site, act.dtype, act.device)
        where = mask[None, :, :, None]
        if comps[0].kind == "head":
            heads = torch.tensor([c.head for c in comps])
            current = view[members_t, :, :, heads]  # [m, b, pos, d]
            view[members_t, :, :, heads] = torch.where(where, values, current)
        else:
            view[members_t] = torch.where(where, values, view[members_t])
        return act

    return hook


@torch.no_grad()
def ablation_scores_reference(
    model,
    sentences: Sequence[Sequence[int]],
    directions: Float[Tensor, "sentence d_embed"],
    components: Sequence[Component],
    method: str,
    *,
    reference: Sequence[Sequence[int]] = (),
    donors: Sequence[Sequence[int]] = (),
    donor_positions: Sequence[Sequence[int]] = (),
    positions: Sequence[Sequence[int]] | None = None,
    mean_over: str = "items",
    site: str = "z",
) -> Float[Tensor, "component sentence"]:
    """Plain oracle: one full forward per (component, sentence), unpadded, with the replacement
    values computed by looping over single sentences. ``sentences``/``reference``/``donors`` are
    token id lists (``donors[i]`` is sentence i's donor, ``donor_positions[i][p]`` the donor
    position replacing position p); ``positions[i]`` lists the positions
    ablated in sentence i (default all)."""
    prev = model.cfg.use_attn_result
    model.set_use_attn_result(site == "result")

    def acts(ids, comp) -> Tensor:  # [pos, d]
        _, cache = model.run_with_cache(torch.tensor([list(ids)], device=model.device))
        return comp.select(cache[comp.hook_name(site)][0]).double().cpu()

    def value(comp, s, ids, ref) -> Tensor:  # [len(ids), d]
        n = len(ids)
        if method == "zero":
            return torch.zeros_like(acts(ids, comp))
        if method == "resample":
            return acts(donors[s], comp)[[int(donor_positions[s][p]) for p in range(n)]]
        if mean_over == "positions":
            return torch.cat(ref).mean(0).expand(n, -1)
        return torch.stack([torch.stack([r[p] for r in ref if r.shape[0] > p]).mean(0) for p in range(n)])

    try:
        out = torch.zeros(len(components), len(sentences))
        for c, comp in enumerate(components):
            ref = [acts(ids, comp) for ids in reference] if method == "mean" else []
            for s, ids in enumerate(sentences):
                new = value(comp, s, ids, ref)
                where = range(len(ids)) if positions is None else positions[s]

                def hook(act, hook=None, new=new, where=where, comp=comp):
                    act = act.clone()
                    for p in where:
                        if comp.kind == "head":
                            act[0, p, comp.head] = new[p].to(act.dtype)
                        else:
                            act[0, p] = new[p].to(act.dtype)
                    return act

                emb = model.run_with_hooks(torch.tensor([list(ids)], device=model.device),
                                           fwd_hooks=[(comp.hook_name(site), hook)])
                out[c, s] = _score(emb, directions[s:s + 1].to(model.device))[0].cpu()
        return out
    finally:
        model.set_use_attn_result(prev)
