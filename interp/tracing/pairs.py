"""Trace your own sentences: the exact engine on any base/source pairs, with any metric.

``trace_pair(model, base, source)`` patches the source run's state at every (layer, position)
into the base run, as the VALSE study does with (A, N), and returns a tidy table, one row per
(pair, layer, position). What is measured on the output embedding is pluggable:

* ``metric=None, direction=None``: cosine to the pair's own text target, ``cos(x, e_source) -
  cos(x, e_base)`` (:func:`interp.data.scoring.text_target_directions`);
* ``direction=`` a ``[d_embed]`` or ``[pair, d_embed]`` tensor (e.g. an image embedding, scaled
  as the study scales it): ``normalize(x) . direction``;
* ``metric=`` any callable ``f(embedding [n, d_embed]) -> [n]`` acting row by row.

Patching position p of the source into position p of the base only means something when the
two texts have the same number of tokens, so pairs of unequal length are refused.
"""

from __future__ import annotations

from typing import Callable, Sequence

import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor

from interp.data.scoring import text_target_directions
from interp.errors import ClipInterpError
from interp.models.tokenization import TokenBatch
from interp.tracing.atp import atp_patched_scores
from interp.tracing.engine import DEFAULT_BUDGET_MB, PatchedScores, TraceRuns, patched_scores
from interp.tracing.metric import RowMetric
from interp.tracing.spec import TraceSpec

Texts = str | Sequence[str] | Int[Tensor, "pair pos"] | Sequence[Sequence[int]]
Metric = Callable[[Float[Tensor, "n d_embed"]], Float[Tensor, " n"]]

TABLE_COLUMNS = ("pair", "layer", "position", "token", "source_token", "patched", "base_score",
                 "source_score", "effect", "kind", "base", "source")


class PairLengthError(ClipInterpError, ValueError):
    """A base/source pair whose token sequences do not align position by position."""


def _as_list(texts: Texts) -> list:
    if isinstance(texts, str):
        return [texts]
    if isinstance(texts, Tensor):
        return list(texts.reshape(-1, texts.shape[-1]))
    items = list(texts)
    if items and isinstance(items[0], int):  # one sequence of ids
        return [torch.tensor(items)]
    return [torch.as_tensor(t) if not isinstance(t, str) else t for t in items]


def _token_batch(model, items: list) -> TokenBatch:
    """Texts -> one batch; id sequences -> rows padded with the tokenizer's pad id."""
    if all(isinstance(t, str) for t in items):
        return model.to_token_batch(items)
    if any(isinstance(t, str) for t in items):
        raise ClipInterpError("pass the bases and sources both as texts or both as token ids, not a mix")
    width = max(len(t) for t in items)
    pad = model.tokenizer.pad_id if model.tokenizer is not None else 0
    ids = torch.full((len(items), width), pad, dtype=torch.long)
    for row, seq in enumerate(items):
        ids[row, : len(seq)] = seq.long()
    return model.to_token_batch(ids)


def _check_aligned(batch: TokenBatch, n_pairs: int, labels: list[str]) -> None:
    lengths = batch.lengths.tolist()
    for i in range(n_pairs):
        base, source = lengths[i], lengths[n_pairs + i]
        if base != source:
            raise PairLengthError(
                f"pair {i}: base {labels[i]!r} has {base} tokens but source {labels[n_pairs + i]!r} has "
                f"{source}: tracing writes the source's state at position p into the base at position p, "
                "so both texts must tokenize to the same length (e.g. swap 'no' for 'a', not 'no' for "
                "'a single'); model.to_str_tokens(text) shows the tokens"
            )


def _metric(model, batch: TokenBatch, n_pairs: int, metric: Metric | None,
            direction: Tensor | None) -> Tensor | RowMetric:
    if metric is not None:
        if direction is not None:
            raise ClipInterpError("pass a metric or a direction, not both (a metric replaces the cosine score)")
        return RowMetric.over(lambda embedding, run: metric(embedding), n_pairs)
    if direction is None:  # the pair's own text target: cos(x, e_source) - cos(x, e_base)
        with torch.no_grad():
            embeddings = model(batch)
        return text_target_directions(embeddings[n_pairs:], embeddings[:n_pairs])
    direction = torch.as_tensor(direction, device=model.device, dtype=model.dtype)
    if direction.ndim == 1:
        direction = direction.expand(n_pairs, -1)
    if direction.shape != (n_pairs, model.cfg.d_embed):
        raise ClipInterpError(
            f"direction has shape {tuple(direction.shape)}; pass [d_embed] = [{model.cfg.d_embed}] or "
            f"[pair, d_embed] = [{n_pairs}, {model.cfg.d_embed}]"
        )
    return direction


def pair_runs(model, bases: Texts, sources: Texts, *, metric: Metric | None = None,
              direction: Tensor | None = None) -> tuple[TraceRuns, TokenBatch]:
    """Base/source pairs -> the engine's :class:`TraceRuns` (tokens checked to align) and the
    sources' tokens (for labels)."""
    base_items, source_items = _as_list(bases), _as_list(sources)
    if len(base_items) != len(source_items) or not base_items:
        raise ClipInterpError(
            f"got {len(base_items)} base(s) and {len(source_items)} source(s): pass one source per base"
        )
    n = len(base_items)
    batch = _token_batch(model, base_items + source_items)
    labels = [t if isinstance(t, str) else str(t.tolist()) for t in base_items + source_items]
    _check_aligned(batch, n, labels)
    with torch.no_grad():
        x0 = model(batch, stop_at_layer=0)
    target = _metric(model, batch, n, metric, direction)
    return TraceRuns(batch[list(range(n))], x0[:n], x0[n:], target), batch[list(range(n, 2 * n))]


def trace_pairs(
    model,
    bases: Texts,
    sources: Texts,
    *,
    metric: Metric | None = None,
    direction: Tensor | None = None,
    kind: str = "resid",
    window: int = 1,
    method: str = "exact",
    budget_mb: float = DEFAULT_BUDGET_MB,
) -> pd.DataFrame:
    """Patch each source's states into its base, every (layer, position), with the exact engine.

    Args:
        model: a hooked text encoder.
        bases, sources: texts or token ids ``[pair, pos]``, one source per base, equal token lengths.
        metric: ``f(embedding [n, d_embed]) -> [n]``, row by row; replaces the cosine score.
        direction: ``[d_embed]`` or ``[pair, d_embed]``; the score is ``normalize(x) . direction``.
            Default (no metric, no direction): ``cos(x, e_source) - cos(x, e_base)``.
        kind, window: what a cell patches (see :class:`~interp.tracing.spec.TraceSpec`).
        method: ``"exact"`` (the engine: every cell re-run) or ``"atp"`` (first-order estimates
            from one backward pass, :mod:`interp.tracing.atp`; base and source scores stay exact).

    Returns:
        A tidy table, one row per (pair, layer, position): the patched score, the base and source
        scores, ``effect = (patched - base) / (source - base)`` (NaN when source = base), the
        tokens, and the texts. :func:`pair_matrix` turns one pair into the heatmap layout.
    """
    runs, sources_batch = pair_runs(model, bases, sources, metric=metric, direction=direction)
    spec = TraceSpec(model.cfg.n_layers, kind=kind, window=window)
    if method == "exact":
        result = patched_scores(model, runs, spec, budget_mb=budget_mb)
    elif method == "atp":
        result = atp_patched_scores(model, runs, spec)
    else:
        raise ClipInterpError(f"method={method!r}: choose 'exact' or 'atp'")
    return scores_table(model, runs.batch, sources_batch, result, spec)


def trace_pair(model, base: str | Sequence[int] | Tensor, source: str | Sequence[int] | Tensor,
               **kwargs) -> pd.DataFrame:
    """:func:`trace_pairs` on one pair."""
    if isinstance(base, Tensor) and base.ndim == 1:
        base, source = base[None], torch.as_tensor(source)[None]
    return trace_pairs(model, base if not isinstance(base, str) else [base],
                       source if not isinstance(source, str) else [source], **kwargs)


def scores_table(model, bases: TokenBatch, sources: TokenBatch, result: PatchedScores,
                 spec: TraceSpec) -> pd.DataFrame:
    """Engine output -> one row per (pair, layer, real position)."""
    patched = result.patched.double().cpu()
    base = result.base.double().cpu()
    source = result.source.double().cpu()
    gap = source - base
    effect = (patched - base[:, None, None]) / torch.where(gap == 0, torch.nan, gap)[:, None, None]
    rows = []
    for i in range(patched.shape[0]):
        n_pos = int(bases.lengths[i])
        base_tokens = model.to_str_tokens(bases.tokens[i, :n_pos])
        source_tokens = model.to_str_tokens(sources.tokens[i, :n_pos])
        base_text = bases.texts[i] or " ".join(base_tokens)
        source_text = sources.texts[i] or " ".join(source_tokens)
        for layer in range(spec.n_axis):
            for pos in range(n_pos):
                rows.append((i, layer, pos, base_tokens[pos], source_tokens[pos], float(patched[i, layer, pos]),
                             float(base[i]), float(source[i]), float(effect[i, layer, pos]), spec.kind,
                             base_text, source_text))
    return pd.DataFrame(rows, columns=list(TABLE_COLUMNS))


def pair_matrix(table: pd.DataFrame, pair: int = 0, value: str = "effect") -> pd.DataFrame:
    """One pair as positions (rows, labelled ``"p: token"``) x layers (columns), the layout
    :func:`interp.runs.plots.roles_layers_heatmap` draws."""
    one = table[table["pair"] == pair]
    if one.empty:
        raise ClipInterpError(f"pair {pair} is not in the table (pairs {sorted(table['pair'].unique())})")
    matrix = one.pivot(index="position", columns="layer", values=value)
    labels = one.drop_duplicates("position").set_index("position")["token"]
    differs = one.drop_duplicates("position").set_index("position")
    matrix.index = [
        f"{p}: {labels[p]}" + (f" / {differs.loc[p, 'source_token']}" if differs.loc[p, "source_token"] != labels[p] else "")
        for p in matrix.index
    ]
    return matrix
