"""Tokenizers for the hooked encoders, returning batches trimmed to the longest real sequence.

A :class:`TokenBatch` carries what every forward needs besides the ids: which positions are real
(``attention_mask``) and where the sentence is pooled (``pool_index``: EOT for CLIP). Trimming to the
longest real length instead of CLIP's 77-token context changes nothing for a causal encoder pooled
at EOT (no position after EOT can reach it) and is 4-5x faster on short sentences.

Over-long texts and empty strings are errors (never silent truncation) unless ``truncate=True``.
"""

from __future__ import annotations

import functools
import logging
import warnings
from dataclasses import dataclass
from typing import Protocol, Sequence, runtime_checkable

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from interp.errors import ClipInterpError

log = logging.getLogger(__name__)


class TokenizationError(ClipInterpError, ValueError):
    """A text cannot be tokenized as asked (empty, or longer than the model's context)."""


@dataclass
class TokenBatch:
    """Token ids of a batch of texts, right-padded to the longest one.

    Attributes:
        tokens: ``[batch, pos]`` token ids (padding uses the tokenizer's ``pad_id``).
        attention_mask: ``[batch, pos]`` True at real tokens (special tokens included).
        pool_index: ``[batch]`` position the encoder pools at (EOT for CLIP; the last real token
            for other tokenizers, informational only when pooling is a mean).
        token_type_ids: ``[batch, pos]`` segment ids (all zero; BERT-family models use them).
        texts: the input texts, in order.
    """

    tokens: Int[Tensor, "batch pos"]
    attention_mask: Bool[Tensor, "batch pos"]
    pool_index: Int[Tensor, " batch"]
    token_type_ids: Int[Tensor, "batch pos"]
    texts: list[str]

    @property
    def lengths(self) -> Int[Tensor, " batch"]:
        """Number of real tokens per text, special tokens included."""
        return self.attention_mask.sum(-1)

    def to(self, device: torch.device | str) -> "TokenBatch":
        return TokenBatch(
            tokens=self.tokens.to(device),
            attention_mask=self.attention_mask.to(device),
            pool_index=self.pool_index.to(device),
            token_type_ids=self.token_type_ids.to(device),
            texts=self.texts,
        )

    def __getitem__(self, index: slice | Sequence[int] | Tensor) -> "TokenBatch":
        """Select rows (keeps the padded width)."""
        if isinstance(index, slice):
            texts = self.texts[index]
        else:
            texts = [self.texts[int(i)] for i in index]
        return TokenBatch(
            tokens=self.tokens[index],
            attention_mask=self.attention_mask[index],
            pool_index=self.pool_index[index],
            token_type_ids=self.token_type_ids[index],
            texts=texts,
        )

    def __len__(self) -> int:
        return self.tokens.shape[0]


@runtime_checkable  # lets runtime type checkers (beartype in the tests) check it
class TextTokenizer(Protocol):
    """What the hooked encoders need from a tokenizer."""

    name: str
    context_length: int
    pad_id: int

    def encode(self, text: str, truncate: bool = False) -> list[int]:
        """Ids of one text with its special tokens."""
        ...

    def str_tokens(self, text: str) -> list[str]:
        """Readable token strings of one text, special tokens included."""
        ...

    def id_strings(self, ids: Sequence[int]) -> list[str]:
        """Readable token strings of given ids, one per id."""
        ...

    def decode(self, ids: Sequence[int]) -> str:
        """The text of given ids, special and padding tokens dropped."""
        ...

    def __call__(self, texts: str | Sequence[str], *, pad_to: str | int = "longest",
                 truncate: bool = False) -> TokenBatch:
        ...


def _check_texts(texts: str | Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        texts = [texts]
    texts = list(texts)
    if not texts:
        raise TokenizationError("no texts given: pass at least one string")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TokenizationError(f"text {i} is a {type(text).__name__}, not a string: {text!r}")
        if not text.strip():
            raise TokenizationError(
                f"text {i} is empty ({text!r}): an empty string has no tokens to analyse; drop it"
            )
    return texts


def _pad_width(lengths: list[int], pad_to: str | int, context_length: int) -> int:
    if pad_to == "longest":
        return max(lengths)
    if pad_to == "context":
        return context_length
    if isinstance(pad_to, int) and max(lengths) <= pad_to <= context_length:
        return pad_to
    raise TokenizationError(
        f"pad_to={pad_to!r} is not 'longest', 'context' or an int between the longest text "
        f"({max(lengths)} tokens) and the context length ({context_length})"
    )


def pool_positions(tokens: Int[Tensor, "batch pos"], lengths: Int[Tensor, " batch"], pool: str,
                   eos_token_id: int | None = None) -> Int[Tensor, " batch"]:
    """Where each row is pooled: ``argmax`` = the largest id (open_clip: EOT has the largest id; the
    first maximum wins), ``eos`` = the first ``eos_token_id``, anything else = the last real token."""
    if pool == "argmax":
        return tokens.argmax(dim=-1)
    if pool == "eos":
        return (tokens == eos_token_id).int().argmax(dim=-1)
    return lengths - 1


def batch_from_ids(ids: Sequence[Sequence[int]], *, pad_id: int = 0, width: int | None = None, pool: str = "last",
                   eos_token_id: int | None = None, texts: Sequence[str] | None = None) -> TokenBatch:
    """A right-padded :class:`TokenBatch` from token id lists (with special tokens): the one builder.

    ``width`` pads further than the longest list; ``pool`` chooses the pooled position
    (:func:`pool_positions`, ``model.cfg.pool``).

    >>> b = batch_from_ids([[49406, 320, 49407], [49406, 49407]], pool="argmax")
    >>> b.tokens.tolist(), b.attention_mask.sum(-1).tolist(), b.pool_index.tolist()
    ([[49406, 320, 49407], [49406, 49407, 0]], [3, 2], [2, 1])
    """
    ids = [list(seq) for seq in ids]
    width = max(len(seq) for seq in ids) if width is None else width
    tokens = torch.full((len(ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.bool)
    for row, seq in enumerate(ids):
        tokens[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[row, : len(seq)] = True
    return TokenBatch(
        tokens=tokens,
        attention_mask=mask,
        pool_index=pool_positions(tokens, mask.sum(-1), pool, eos_token_id),
        token_type_ids=torch.zeros_like(tokens),
        texts=list(texts) if texts is not None else [""] * len(ids),
    )


@functools.lru_cache(maxsize=4)
def _simple_tokenizer(context_length: int):
    """open_clip's BPE tokenizer; building it reads ~50k merges, so one per process is enough."""
    from interp.models.compat import import_open_clip

    return import_open_clip().tokenizer.SimpleTokenizer(context_length=context_length)


class CLIPTokenizer:
    """CLIP's byte-pair tokenizer (the vocabulary ships inside the open_clip wheel: works offline).

    Ids equal ``open_clip.tokenize`` on every text that fits the context; padding is 0 as in
    open_clip. The pooled position is EOT (the largest id, 49407).
    """

    def __init__(self, context_length: int = 77):
        self._bpe = _simple_tokenizer(context_length)
        self.name = "clip-bpe"
        self.context_length = context_length
        self.sot_id: int = self._bpe.sot_token_id
        self.eot_id: int = self._bpe.eot_token_id
        self.pad_id = 0
        self.vocab_size = len(self._bpe.encoder)

    def encode(self, text: str, truncate: bool = False) -> list[int]:
        ids = [self.sot_id, *self._bpe.encode(text), self.eot_id]
        if len(ids) > self.context_length:
            if not truncate:
                raise TokenizationError(
                    f"text {text[:60]!r} is {len(ids)} tokens long, over the model's context of "
                    f"{self.context_length}: shorten it, or pass truncate=True to cut it (as "
                    "open_clip.tokenize does silently)"
                )
            warnings.warn(
                f"text {text[:60]!r} ({len(ids)} tokens) truncated to {self.context_length}",
                stacklevel=2,
            )
            ids = ids[: self.context_length - 1] + [self.eot_id]
        return ids

    def str_tokens(self, text: str) -> list[str]:
        return self.id_strings(self.encode(text))

    def id_strings(self, ids: Sequence[int]) -> list[str]:
        return [self._bpe.decoder[int(i)] for i in ids]

    def decode(self, ids: Sequence[int]) -> str:
        ids = [int(i) for i in ids]
        if self.eot_id in ids:  # padding (id 0 is a real token, "!") follows EOT
            ids = ids[: ids.index(self.eot_id)]
        return self._bpe.decode([i for i in ids if i != self.sot_id]).strip()

    def __call__(self, texts: str | Sequence[str], *, pad_to: str | int = "longest",
                 truncate: bool = False) -> TokenBatch:
        texts = _check_texts(texts)
        ids = [self.encode(t, truncate=truncate) for t in texts]
        width = _pad_width([len(s) for s in ids], pad_to, self.context_length)
        return batch_from_ids(ids, pad_id=self.pad_id, width=width, texts=texts)  # pooled at EOT, the last token
