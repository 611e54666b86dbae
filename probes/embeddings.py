"""Sentence features from any hooked text encoder: the final embedding and the residual stream at every
layer, read where the encoder pools (one batched forward per chunk of texts).

Per-layer features follow the encoder's own pooling (``model.cfg.pool``): the residual at the pooled
position for argmax/eos-pooled CLIP (EOT), position 0 / the last position for "first" / "last", and the
mean over real tokens for mean-pooled sentence encoders (MiniLM). Layer ``l`` is the state
``model.resid_hook_name(l)``: 0 = embedding output, ``n_layers`` = after the last block (before
ln_final).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor
from tqdm.auto import tqdm

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 64


@dataclass
class TextFeatures:
    """Features of a list of texts.

    Attributes:
        final: ``[n, d_embed]`` the encoder's sentence embedding (as returned, not normalised here).
        layers: ``[n_layers + 1, n, d_model]`` the residual stream pooled as the encoder pools, or
            ``None`` when not asked for.
        texts: the texts, in order.
    """

    final: Float[Tensor, "n d_embed"]
    layers: Float[Tensor, "layer n d_model"] | None
    texts: list[str]


def pooling_mask(model: Any, batch: Any) -> Float[Tensor, "batch pos"]:
    """Weights ``[batch, pos]`` that pool a residual the way ``model`` pools (rows sum to 1).

    A one-hot row at the pooled position (argmax/eos/first/last), or a uniform row over real tokens
    ("mean"). ``(weights[..., None] * resid).sum(1)`` is the pooled residual.
    """
    pool = model.cfg.pool
    tokens = batch.tokens
    n, n_pos = tokens.shape
    if pool == "mean":
        keep = batch.attention_mask.to(torch.float64)
        return keep / keep.sum(1, keepdim=True).clamp(min=1)
    if pool == "argmax":
        idx = tokens.argmax(dim=-1)
    elif pool == "eos":
        idx = (tokens == model.cfg.eos_token_id).int().argmax(dim=-1)
    elif pool == "first":
        idx = torch.zeros(n, dtype=torch.long, device=tokens.device)
    elif pool == "last":
        idx = torch.full((n,), n_pos - 1, dtype=torch.long, device=tokens.device)
    else:
        raise ValueError(
            f"model.cfg.pool={pool!r} is not a pooling this module knows (argmax, eos, first, last, mean)"
        )
    return F.one_hot(idx, n_pos).to(torch.float64)


def pool_residual(resid: Float[Tensor, "batch pos d_model"],
                  weights: Float[Tensor, "batch pos"]) -> Float[Tensor, "batch d_model"]:
    """Pool a residual state with :func:`pooling_mask` weights."""
    return torch.einsum("bp,bpd->bd", weights.to(resid.dtype), resid)


def _layer_names(model: Any, layers: Sequence[int]) -> list[str]:
    return [model.resid_hook_name(layer) for layer in layers]


@torch.no_grad()
def encode_texts(model: Any, texts: Sequence[str], *, layers: bool | Sequence[int] = False,
                 batch_size: int = DEFAULT_BATCH_SIZE, progress: bool = False) -> TextFeatures:
    """Final embeddings (and optionally pooled residuals at ``layers``) of ``texts``.

    Args:
        model: a hooked text encoder (``interp.HookedTextEncoder`` or anything with the same API).
        texts: the texts.
        layers: ``False`` (final embedding only), ``True`` (every state 0..n_layers) or a list.
        batch_size: texts per forward pass.
        progress: show a tqdm bar.

    Returns:
        :class:`TextFeatures` in float32 (or the model's dtype), on the CPU.
    """
    texts = list(texts)
    if not texts:
        raise ValueError("encode_texts got no texts: pass at least one")
    if layers is True:
        layer_ids = list(range(model.cfg.n_layers + 1))
    elif layers is False:
        layer_ids = []
    else:
        layer_ids = [int(x) for x in layers]
    names = _layer_names(model, layer_ids)
    finals, pooled = [], []
    for start in tqdm(range(0, len(texts), batch_size), desc="encode", disable=not progress, leave=False):
        batch = model.to_token_batch(texts[start:start + batch_size]).to(model.device)
        weights = pooling_mask(model, batch)
        store: dict[str, Tensor] = {}

        def grab(resid: Tensor, hook: Any) -> Tensor:
            store[hook.name] = pool_residual(resid, weights).detach().cpu()
            return resid

        if names:
            out = model.run_with_hooks(batch, fwd_hooks=[(n, grab) for n in names])
            # one hook point may serve two layer indices (never here, but keep the order explicit)
            pooled.append(torch.stack([store[n] for n in names]))
        else:
            out = model(batch)
        finals.append(out.detach().cpu())
    return TextFeatures(
        final=torch.cat(finals),
        layers=torch.cat(pooled, dim=1) if names else None,
        texts=texts,
    )


def unit(x: Float[Tensor, "... d"]) -> Float[Tensor, "... d"]:
    """L2-normalise the last axis (zero vectors stay zero)."""
    return F.normalize(x, dim=-1)


def token_positions_mask(batch_shape: tuple[int, int], positions: Int[Tensor, " batch"]) -> Bool[Tensor, "batch pos"]:
    """A ``[batch, pos]`` mask that is True at one position per row."""
    n, n_pos = batch_shape
    mask = torch.zeros(n, n_pos, dtype=torch.bool)
    mask[torch.arange(n), positions.cpu()] = True
    return mask


@torch.no_grad()
def embed_image_files(model_name: str, pretrained: Any, folder: str, files: Sequence[str], *,
                      device: str = "cpu", batch_size: int = DEFAULT_BATCH_SIZE,
                      progress: bool = False) -> Float[Tensor, "n d_embed"]:
    """Image embeddings ``[n, d_embed]`` (float64, not normalised) of ``files`` under ``folder`` from the
    image tower of the open_clip model ``model_name`` with ``pretrained`` weights ("default", a tag, a
    file, or "none"), preprocessed exactly as open_clip does (:mod:`interp.data.images`); ``progress``
    shows a tqdm bar."""
    from interp.data.images import PreprocessConfig, check_image_files, load_image_batch
    from interp.models.loading import create_open_clip_model

    paths = check_image_files(folder, list(files))
    clip = create_open_clip_model(model_name, pretrained, device=device)
    config = PreprocessConfig.from_model(clip)
    chunks = []
    for start in tqdm(range(0, len(paths), batch_size), desc="images", disable=not progress, leave=False):
        pixels = load_image_batch(paths[start:start + batch_size], config).to(device)
        chunks.append(clip.encode_image(pixels).detach().cpu())
    return torch.cat(chunks).to(torch.float64)
