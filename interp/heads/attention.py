"""Negator-selective attention heads (Quantmeyer et al. 2024; docs/heads.md).

For an item with negated sentence N and affirmative sentence A (token-aligned, differing only at
the negator slot ``k``), layer ``l`` and head ``h``: ``a_N[q]`` is the attention weight from query
``q`` to key ``k`` in N, ``a_A[q]`` the same in A (key = "some"/"a"). The head's score on the item
is ``max over real query positions q > k of (a_N[q] - a_A[q])``; :meth:`NegatorAttention.mean_scores`
averages it over items.

:meth:`NegatorAttention.role_table` averages ``a_N[q] - a_A[q]`` per query role. A role such as
"further" holds several positions per item: the negation study's script takes their **max** per
item (``FURTHER_POOLS[0]``, the default), then averages over items; ``"mean"`` instead pools every
(item, position) into one mean (the toolkit's earlier rule).

Layers and heads are 0-indexed everywhere in data (tables, tensors). :func:`head_label` gives the
1-indexed ``L4H2``-style labels the reference paper uses, for figures that mirror it; every
figure says which convention it uses.

One batched ``run_with_cache`` per chunk of sentences reads every layer's attention pattern at
once; :func:`negator_attention_reference` is the plain per-item loop the tests compare against.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from interp.data.negation import ROLES, AlignedPair
from interp.errors import ClipInterpError
from interp.models.tokenization import TokenBatch
from interp.models.tokenization import batch_from_ids as build_batch

log = logging.getLogger(__name__)

PATTERN_SUFFIX = "attn.hook_pattern"
from interp.heads.options import FURTHER_POOLS  # noqa: E402,F401 - re-exported (light home: the CLI's choices)


class AttentionInputError(ClipInterpError, ValueError):
    """Inputs to the attention analysis that cannot be used (no items, bad layer, bad d)."""


def head_label(layer: int, head: int, one_indexed: bool = False) -> str:
    """``"L{layer}H{head}"``; ``one_indexed=True`` adds 1 to both (the reference paper's labels)."""
    offset = 1 if one_indexed else 0
    return f"L{layer + offset}H{head + offset}"


def batch_from_ids(model, ids: Sequence[Sequence[int]], texts: Sequence[str] | None = None) -> TokenBatch:
    """A right-padded :class:`TokenBatch` for ``model`` from token id lists (with special tokens),
    pooled as ``model.cfg.pool`` says (:func:`interp.models.tokenization.batch_from_ids`)."""
    if not ids:
        raise AttentionInputError("no sentences given: pass at least one token id list")
    pad_id = model.tokenizer.pad_id if model.tokenizer is not None else 0
    return build_batch(ids, pad_id=pad_id, pool=model.cfg.pool, eos_token_id=model.cfg.eos_token_id, texts=texts)


def pair_batches(model, aligned: Sequence[AlignedPair]) -> tuple[TokenBatch, TokenBatch]:
    """(N batch, A batch) of the aligned pairs, padded to the longest sentence of the set."""
    if not aligned:
        raise AttentionInputError("no aligned pairs given: load them with interp.data.negation.align_pairs")
    batch_n = batch_from_ids(model, [a.tokens_negated for a in aligned], [a.pair.negated for a in aligned])
    batch_a = batch_from_ids(model, [a.tokens_affirmative for a in aligned], [a.pair.affirmative for a in aligned])
    return batch_n, batch_a


@torch.no_grad()
def attention_to_key(
    model, batch: TokenBatch, key_pos: Int[Tensor, " batch"]
) -> Float[Tensor, "batch layer head q_pos"]:
    """Attention weight from every query position to the key ``key_pos[i]`` of each sentence, at
    every layer and head, from one cached forward pass."""
    batch = batch.to(model.device)
    _, cache = model.run_with_cache(batch, names_filter=lambda name: name.endswith(PATTERN_SUFFIX))
    rows = torch.arange(len(batch), device=model.device)
    key_pos = key_pos.to(model.device)
    per_layer = []
    for layer in range(model.cfg.n_layers):
        pattern = cache[f"blocks.{layer}.{PATTERN_SUFFIX}"]  # [batch, head, q, k]
        per_layer.append(pattern[rows, :, :, key_pos].float())  # [batch, head, q]
    return torch.stack(per_layer, dim=1).cpu()


@dataclass
class NegatorAttention:
    """Attention differences to the negator key, per item, layer, head and query position.

    Attributes:
        diff: ``[item, layer, head, q_pos]`` a_N[q] - a_A[q] with the key at the negator slot;
            NaN at padding positions (q beyond the item's length).
        negator_pos: ``[item]`` the negator slot.
        lengths: ``[item]`` sentence lengths (special tokens included).
        item_ids, negation_sides: per item.
        roles: per item, one :data:`ROLES` entry per position.
    """

    diff: Float[Tensor, "item layer head q_pos"]
    negator_pos: Int[Tensor, " item"]
    lengths: Int[Tensor, " item"]
    item_ids: list[str]
    negation_sides: list[str]
    roles: list[tuple[str, ...]]

    @property
    def n_layers(self) -> int:
        return self.diff.shape[1]

    @property
    def n_heads(self) -> int:
        return self.diff.shape[2]

    def after_negator_mask(self) -> torch.Tensor:
        """``[item, q_pos]`` True at real query positions after the negator slot."""
        q = torch.arange(self.diff.shape[-1])
        return (q[None] > self.negator_pos[:, None]) & (q[None] < self.lengths[:, None])

    def scores(self) -> Float[Tensor, "item layer head"]:
        """Per item: max over real queries after the negator of a_N[q] - a_A[q]."""
        keep = self.after_negator_mask()[:, None, None, :]
        return self.diff.masked_fill(~keep, float("-inf")).amax(dim=-1)

    def argmax_query(self) -> Int[Tensor, "item layer head"]:
        """Per item: the query position where the score's maximum is reached."""
        keep = self.after_negator_mask()[:, None, None, :]
        return self.diff.masked_fill(~keep, float("-inf")).argmax(dim=-1)

    def mean_scores(self, items: Sequence[int] | None = None) -> Float[Tensor, "layer head"]:
        """Scores averaged over items (all items, or the given item indices)."""
        scores = self.scores()
        if items is not None:
            scores = scores[list(items)]
        if scores.shape[0] == 0:
            raise AttentionInputError("no items selected: the mean attention score is undefined")
        return scores.mean(0)

    def items_of_side(self, side: str) -> list[int]:
        return [i for i, s in enumerate(self.negation_sides) if s == side]

    def table(self):
        """Long table, one row per (item, layer, head): score, argmax query and its role."""
        import pandas as pd

        scores, where = self.scores().numpy(), self.argmax_query().numpy()
        n_items, n_layers, n_heads = scores.shape
        item, layer, head = np.meshgrid(np.arange(n_items), np.arange(n_layers), np.arange(n_heads), indexing="ij")
        item, layer, head = item.ravel(), layer.ravel(), head.ravel()
        where_flat = where.ravel()
        return pd.DataFrame({
            "item_id": np.asarray(self.item_ids, dtype=object)[item],
            "negation_side": np.asarray(self.negation_sides, dtype=object)[item],
            "layer": layer,
            "head": head,
            "score": scores.ravel(),
            "argmax_query": where_flat,
            "argmax_role": [self.roles[i][q] for i, q in zip(item, where_flat)],
        })

    def mean_table(self):
        """One row per (layer, head): mean score over all items and per negation side, n."""
        import pandas as pd

        rows = {"all": list(range(len(self.item_ids)))}
        rows.update({side: self.items_of_side(side) for side in sorted(set(self.negation_sides))})
        out = []
        scores = self.scores()
        for group, items in rows.items():
            if not items:
                continue
            mean = scores[items].mean(0)
            for layer in range(self.n_layers):
                for head in range(self.n_heads):
                    out.append({"group": group, "layer": layer, "head": head,
                                "mean_score": float(mean[layer, head]), "n": len(items)})
        return pd.DataFrame(out)

    def role_table(self, layer: int, items: Sequence[int] | None = None, further_pool: str = "max"):
        """Mean a_N[q] - a_A[q] per query role (rows, :data:`ROLES` order) and head (columns) at
        ``layer``. With ``further_pool="max"`` (the negation study's rule) a role with several
        positions in an item (e.g. "further") contributes its max over them, once per item; with
        ``"mean"`` every (item, position) holding the role is pooled, so items with more further
        tokens weigh more. Items without the role contribute nothing. ``n_positions`` counts the
        positions, ``n_values`` the values averaged (items under max pooling)."""
        import pandas as pd

        if further_pool not in FURTHER_POOLS:
            raise AttentionInputError(f"further_pool {further_pool!r} is not known: use one of {', '.join(FURTHER_POOLS)}")
        if not 0 <= layer < self.n_layers:
            raise AttentionInputError(f"layer {layer} is outside 0..{self.n_layers - 1} (layers are 0-indexed)")
        items = list(range(len(self.item_ids))) if items is None else list(items)
        sums = np.zeros((len(ROLES), self.n_heads))
        n_values = np.zeros(len(ROLES))
        n_positions = np.zeros(len(ROLES))
        diff = self.diff[:, layer].numpy()  # [item, head, q]
        for i in items:
            roles = np.asarray(self.roles[i], dtype=object)
            for r, role in enumerate(ROLES):
                where = np.flatnonzero(roles == role)
                if not len(where):
                    continue
                values = diff[i][:, where]  # [head, positions]
                n_positions[r] += len(where)
                if further_pool == "max":
                    sums[r] += values.max(axis=1)
                    n_values[r] += 1
                else:
                    sums[r] += values.sum(axis=1)
                    n_values[r] += len(where)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = sums / n_values[:, None]
        table = pd.DataFrame(mean, index=list(ROLES), columns=[f"head {h}" for h in range(self.n_heads)])
        table.insert(0, "n_positions", n_positions.astype(int))
        table.insert(1, "n_values", n_values.astype(int))
        table.insert(2, "pool", further_pool)
        table.index.name = "role"
        return table

    def correlation_with(self, d: Float[Tensor, " item"] | np.ndarray, items: Sequence[int] | None = None):
        """Pearson r (and two-sided p) of each head's per-item score with the per-item d."""
        import pandas as pd
        from scipy import stats

        d = np.asarray(d, dtype=np.float64)
        if d.shape != (len(self.item_ids),):
            raise AttentionInputError(f"d has shape {d.shape}, expected ({len(self.item_ids)},): one value per item")
        items = np.arange(len(d)) if items is None else np.asarray(list(items), dtype=int)
        scores = self.scores().numpy().astype(np.float64)[items]
        d = d[items]
        out = []
        for layer in range(self.n_layers):
            for head in range(self.n_heads):
                x = scores[:, layer, head]
                if len(d) < 3 or np.std(x) == 0 or np.std(d) == 0:
                    r, p = float("nan"), float("nan")
                else:
                    r, p = stats.pearsonr(x, d)
                out.append({"layer": layer, "head": head, "pearson_r": float(r), "p_value": float(p), "n": len(d)})
        return pd.DataFrame(out)


def _stack_padded(chunks: list[Tensor], width: int) -> Tensor:
    padded = [torch.nn.functional.pad(c, (0, width - c.shape[-1]), value=float("nan")) for c in chunks]
    return torch.cat(padded, dim=0)


def negator_attention(
    model, aligned: Sequence[AlignedPair], *, batch_size: int = 64, progress: bool = True
) -> NegatorAttention:
    """Attention from every query to the negator slot in N minus the same in A, for all items,
    layers and heads (one cached forward per chunk of N and of A sentences)."""
    if not aligned:
        raise AttentionInputError("no aligned pairs given: load them with interp.data.negation.align_pairs")
    if batch_size < 1:
        raise AttentionInputError(f"batch_size must be >= 1, got {batch_size}")
    chunks = []
    starts = range(0, len(aligned), batch_size)
    for start in tqdm(starts, desc="negator attention", disable=not progress):
        part = aligned[start:start + batch_size]
        batch_n, batch_a = pair_batches(model, part)
        neg = torch.tensor([a.negator_pos for a in part])
        lengths = batch_n.lengths
        diff = attention_to_key(model, batch_n, neg) - attention_to_key(model, batch_a, neg)
        q = torch.arange(diff.shape[-1])
        diff = diff.masked_fill((q[None] >= lengths[:, None])[:, None, None, :], float("nan"))
        chunks.append(diff)
    width = max(c.shape[-1] for c in chunks)
    return NegatorAttention(
        diff=_stack_padded(chunks, width),
        negator_pos=torch.tensor([a.negator_pos for a in aligned]),
        lengths=torch.tensor([a.length for a in aligned]),
        item_ids=[a.pair.item_id for a in aligned],
        negation_sides=[a.pair.negation_side for a in aligned],
        roles=[a.roles for a in aligned],
    )


@torch.no_grad()
def negator_attention_reference(model, aligned: Sequence[AlignedPair]) -> Float[Tensor, "item layer head"]:
    """Plain loop (test oracle): one unpadded sentence at a time, scores item by item."""
    out = torch.zeros(len(aligned), model.cfg.n_layers, model.cfg.n_heads)
    for i, a in enumerate(aligned):
        patterns = []
        for ids in (a.tokens_negated, a.tokens_affirmative):
            tokens = torch.tensor([list(ids)], device=model.device)
            _, cache = model.run_with_cache(tokens)
            patterns.append([cache[f"blocks.{l}.{PATTERN_SUFFIX}"][0].float().cpu() for l in range(model.cfg.n_layers)])
        for layer in range(model.cfg.n_layers):
            for head in range(model.cfg.n_heads):
                best = float("-inf")
                for q in range(a.negator_pos + 1, a.length):
                    value = float(patterns[0][layer][head, q, a.negator_pos] - patterns[1][layer][head, q, a.negator_pos])
                    best = max(best, value)
                out[i, layer, head] = best
    return out
