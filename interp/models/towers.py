"""Which open_clip text towers the hooked encoder reproduces exactly, and a clear refusal for the rest.

The hooked encoder tokenizes with CLIP's BPE (vocabulary 49408, ``<start_of_text>`` ...
``<end_of_text>``), masks padding, and pools at one position. An open_clip model whose text config
names another tokenizer (SigLIP and SigLIP2 use a SentencePiece/Gemma vocabulary of 32k-256k tokens;
``hf_model_name`` towers such as ``xlm-roberta-base-ViT-B-32`` are whole Hugging Face models) would
get CLIP ids for another vocabulary: a wrong embedding without an error, or an IndexError. Their
tokenizers also need the Hugging Face Hub, which is not reachable offline. Towers with
``no_causal_mask`` (MobileCLIP) attend to the padding tokens after ``<end_of_text>``, so their
output depends on the padded context length, which a padding-masked encoder cannot reproduce.
All of these are refused, before any weights load, with one error naming the supported families.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from interp.errors import UnknownModelError

CLIP_BPE_VOCAB = 49408
SUPPORTED_FAMILIES = (
    "open_clip models with CLIP's BPE tokenizer and a causal text mask (e.g. ViT-B-32, ViT-B-32-quickgelu, "
    "ViT-B-16, ViT-L-14, RN50, convnext_*), 'tiny', all-MiniLM-L6-v2, Hugging Face CLIP directories and "
    "BERT/sentence-transformers directories"
)


class UnsupportedTowerError(UnknownModelError):
    """An open_clip text tower the hooked encoder cannot reproduce (other tokenizer, bidirectional mask)."""


def check_open_clip_text_config(name: str, text_cfg: dict[str, Any]) -> None:
    """Refuse open_clip model ``name`` from its config's ``text_cfg`` (no weights needed)."""
    hf_model = text_cfg.get("hf_model_name")
    hf_tokenizer = text_cfg.get("hf_tokenizer_name")
    if hf_model:
        raise UnsupportedTowerError(
            f"{name!r} has a Hugging Face text tower ({hf_model}, tokenizer {hf_tokenizer or hf_model}), which the "
            f"hooked encoder does not reproduce: supported are {SUPPORTED_FAMILIES}"
        )
    if hf_tokenizer:
        raise UnsupportedTowerError(
            f"{name!r} uses its own tokenizer ({hf_tokenizer}, not CLIP's BPE), so CLIP token ids would index "
            f"another vocabulary: supported are {SUPPORTED_FAMILIES}"
        )
    vocab = text_cfg.get("vocab_size", CLIP_BPE_VOCAB)
    if vocab != CLIP_BPE_VOCAB:
        raise UnsupportedTowerError(
            f"{name!r} has a text vocabulary of {vocab} tokens, not CLIP BPE's {CLIP_BPE_VOCAB}: "
            f"supported are {SUPPORTED_FAMILIES}"
        )
    if text_cfg.get("no_causal_mask"):
        raise UnsupportedTowerError(
            f"{name!r} has a bidirectional text tower (no_causal_mask, e.g. MobileCLIP) that attends to padding, "
            f"which the hooked encoder masks: supported are {SUPPORTED_FAMILIES}"
        )


def check_open_clip_tower(tower: nn.Module, name: str) -> None:
    """The same refusal for an already-built tower (a model object passed to the loader)."""
    vocab = tower.token_embedding.num_embeddings
    if vocab != CLIP_BPE_VOCAB:
        raise UnsupportedTowerError(
            f"{name}: the text tower's vocabulary has {vocab} tokens, not CLIP BPE's {CLIP_BPE_VOCAB}, so its "
            f"tokenizer is not CLIP's: supported are {SUPPORTED_FAMILIES}"
        )
    if getattr(tower, "attn_mask", None) is None:
        raise UnsupportedTowerError(
            f"{name}: the text tower has no causal mask (bidirectional, e.g. MobileCLIP) and attends to padding, "
            f"which the hooked encoder masks: supported are {SUPPORTED_FAMILIES}"
        )
