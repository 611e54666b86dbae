"""Clean runs of the base and source inputs: every state a patching sweep reads, in one forward.

A "run" is one (base, source) pair to trace: (A, N) for activation patching, (N + noise, N) for
ROME-style noise tracing. Both start from a layer-0 residual ``x0`` (the embedding output, possibly
with noise added to some token embeddings) and a :class:`TokenBatch` that gives masks and pooling.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from interp.models.tokenization import TokenBatch
from interp.tracing.spec import TraceSpec


@dataclass
class CleanRun:
    """States of one clean forward over a batch of runs (all on the model's device).

    Attributes:
        states: ``[axis, batch, pos, d_model]``: the patchable state at every layer of the axis
            (residual states 0..L, or attention / MLP outputs of blocks 0..L-1). The causal fast
            path's clean runs fill state L at the pooled position only, the one the output reads.
        resid: ``[L + 1, batch, pos, d_model]`` residual states (the inputs of a resumed run).
        keys: ``[L, batch, head, d_head, pos]`` per block, transposed as the causal fast path's
            score product reads them; values: ``[L, batch, head, pos, d_head]``; or None when not
            asked for.
        embedding: ``[batch, d_embed]`` the clean output.
        queries: ``[L, batch, head, pos, d_head]`` per block, scaled by ``1/sqrt(d_head)`` (the fast
            path reuses them for the rows a cell leaves unchanged at its first block; blocks 0..L-2
            are filled), or None when not asked for.
        scores: ``[batch]`` score of the clean output against the run's direction (set by the
            engine once the directions are known: the text target's come from these embeddings).
    """

    states: Float[Tensor, "axis batch pos d_model"]
    resid: Float[Tensor, "layer batch pos d_model"]
    keys: Float[Tensor, "block batch head d_head pos"] | None
    values: Float[Tensor, "block batch head pos d_head"] | None
    embedding: Float[Tensor, "batch d_embed"]
    scores: Float[Tensor, " batch"] | None = None
    queries: Float[Tensor, "block batch head pos d_head"] | None = None


@torch.no_grad()
def clean_run(
    model,
    batch: TokenBatch,
    x0: Float[Tensor, "batch pos d_model"],
    spec: TraceSpec,
    with_kv: bool = False,
) -> CleanRun:
    """Run the model from ``x0`` once, caching what the sweep needs (public hook API only)."""
    n_layers = model.cfg.n_layers
    resid_names = [model.resid_hook_name(layer) for layer in range(n_layers + 1)]
    state_names = spec.hook_names(model)
    kv_names = [f"blocks.{b}.attn.hook_{w}" for b in range(n_layers) for w in ("q", "k", "v")] if with_kv else []
    wanted = set(resid_names) | set(state_names) | set(kv_names)
    embedding, cache = model.run_with_cache(
        batch, start_at_layer=0, residual=x0, names_filter=lambda name: name in wanted
    )
    keys = values = queries = None
    if with_kv:
        scale = 1 / math.sqrt(model.cfg.d_head)  # the fast path scales queries, not scores
        queries = torch.stack([cache[f"blocks.{b}.attn.hook_q"].transpose(1, 2) * scale for b in range(n_layers)])
        # head-major, as the fast path's attention reads them: keys [block, batch, head, d_head, pos]
        keys = torch.stack([cache[f"blocks.{b}.attn.hook_k"].permute(0, 2, 3, 1) for b in range(n_layers)])
        values = torch.stack([cache[f"blocks.{b}.attn.hook_v"].transpose(1, 2) for b in range(n_layers)])
    return CleanRun(
        states=torch.stack([cache[name] for name in state_names]),
        resid=torch.stack([cache[name] for name in resid_names]),
        keys=keys,
        values=values,
        embedding=embedding,
        queries=queries,
    )


@torch.no_grad()
def embedding_output(model, batch: TokenBatch) -> Float[Tensor, "batch pos d_model"]:
    """The layer-0 residual (embedding output) of a batch."""
    return model(batch, stop_at_layer=0)
