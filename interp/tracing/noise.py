"""ROME-style corruption (Meng et al. 2022): Gaussian noise on chosen token embeddings.

The noise is ``noise_scale x`` an empirical standard deviation of token embeddings, added to the token-embedding output (``hook_embed``) at the positions of the
chosen roles, before position embeddings (and, for BERT-like encoders, the embedding LayerNorm).
Which embeddings calibrate the std (``NOISE_CALIBRATIONS``):

- ``"corrupted"`` (default, ROME's rule: the std of the subject tokens' embeddings): the tokens at
  the corrupted roles' positions of the sentences that receive the noise (:func:`corrupted_token_ids`);
- ``"all_tokens"`` (the toolkit's earlier rule): every token of both sentences of every item.
Every draw is seeded by (seed, item id, sample), so a run's noise does not depend on chunking,
``--limit`` or resuming.
"""

from __future__ import annotations

import hashlib
from typing import Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from interp.models.tokenization import TokenBatch

from interp.tracing.options import (  # noqa: F401 - re-exported
    DEFAULT_NOISE_CALIBRATION, DEFAULT_NOISE_ROLES, DEFAULT_NOISE_SCALE, DEFAULT_SAMPLES, NOISE_CALIBRATIONS,
)


@torch.no_grad()
def embedding_std(model, token_ids: Sequence[Sequence[int]]) -> float:
    """Standard deviation of the token embeddings (``hook_embed`` values) of all given tokens."""
    ids = torch.tensor([t for seq in token_ids for t in seq], dtype=torch.long, device=model.device)
    if ids.numel() == 0:
        raise ValueError("no tokens to measure the embedding std on")
    return float(model.embed.W_E[ids].double().std())


def corrupted_token_ids(items: Sequence, roles: Sequence[str]) -> list[list[int]]:
    """Per item, the ids of the negated sentence's tokens at ``roles`` (the tokens the noise hits;
    the negated sentence is the clean run of noise mode)."""
    wanted = set(roles)
    return [[t for t, role in zip(item.tokens_negated, item.roles) if role in wanted] for item in items]


def calibration_token_ids(items: Sequence, roles: Sequence[str], calibration: str) -> list[list[int]]:
    """The token ids whose embedding std calibrates the noise under ``calibration``."""
    if calibration == "corrupted":
        return corrupted_token_ids(items, roles)
    if calibration == "all_tokens":
        return [list(t) for item in items for t in (item.tokens_negated, item.tokens_affirmative)]
    raise ValueError(f"noise calibration {calibration!r} is not known: use one of {', '.join(NOISE_CALIBRATIONS)}")


def draw_seed(seed: int, item_id: str, sample: int) -> int:
    digest = hashlib.sha256(f"{seed}:{item_id}:{sample}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def draw_noise(seed: int, item_id: str, sample: int, n_positions: int, d_model: int, std: float) -> Tensor:
    """``[n_positions, d_model]`` float32 Gaussian noise of the given std, seeded per draw (CPU)."""
    generator = torch.Generator().manual_seed(draw_seed(seed, item_id, sample))
    return torch.randn(n_positions, d_model, generator=generator) * std


@torch.no_grad()
def noised_embedding_output(
    model, batch: TokenBatch, positions: Sequence[Sequence[int]], noise: Sequence[Tensor]
) -> Float[Tensor, "batch pos d_model"]:
    """The layer-0 residual with ``noise[i]`` (``[len(positions[i]), d_model]``) added to the token
    embeddings of row i at ``positions[i]``."""
    rows = torch.tensor([i for i, ps in enumerate(positions) for _ in ps], dtype=torch.long)
    cols = torch.tensor([p for ps in positions for p in ps], dtype=torch.long)
    values = torch.cat([n.reshape(-1, model.cfg.d_model) for n in noise]) if len(rows) else None

    def add_noise(embed: Tensor, hook=None) -> Tensor:
        if values is None:
            return embed
        embed = embed.clone()
        embed[rows.to(embed.device), cols.to(embed.device)] += values.to(embed.device, embed.dtype)
        return embed

    return model.run_with_hooks(batch, stop_at_layer=0, fwd_hooks=[("hook_embed", add_noise)])
