"""VALSE existence as token-aligned negation minimal pairs, with token roles per tokenizer.

The rule (Quantmeyer et al. 2024; docs/data.md, "Existence minimal pairs"): keep valid items whose caption starts with "There are" or
"There is". The negated sentence N is the VALSE sentence with "no" (the caption when
``provenance_of_foils == "zero_to_something"``, else the foil). For "There are" items the word
``some`` is inserted right after "are" in the non-negated sentence ("There are people." ->
"There are some people."), which gives the affirmative sentence A; "There is a X" stays as it is.
N and A then differ in one word, the negator slot ("no" versus "some"/"a").

:func:`align_pairs` checks per tokenizer that N and A tokenize to the same length and differ only
at the negator slot, and assigns each position one of :data:`ROLES` from the actual tokens. Items
that fail any check are returned with the reason, never dropped silently.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass
from typing import Protocol, Sequence, runtime_checkable

from interp.data.valse import ValseDataError, ValseItem, load_piece

log = logging.getLogger(__name__)

ROLES = ("SOT", "there", "is/are", "negator", "first_subject", "further", "period", "EOT")
NEGATION_SIDES = ("caption", "foil")
# provenance_of_foils -> which VALSE sentence holds the negation.
_NEGATION_SIDE_OF_PROVENANCE = {"zero_to_something": "caption", "something_to_zero": "foil"}
_PREFIXES = ("There are", "There is")
NEGATOR_WORD = "no"
INSERTED_WORD = "some"
# Words that may fill the negator slot in the affirmative sentence.
AFFIRMATIVE_SLOT_WORDS = ("some", "a", "an")
_NEGATOR_SLOT = 2  # word index of the slot ("There", "is/are", slot)


@runtime_checkable  # lets runtime type checkers (beartype in the tests) check it
class TokenizerLike(Protocol):
    def encode(self, text: str) -> list[int]: ...

    def str_tokens(self, text: str) -> list[str]: ...


@dataclass(frozen=True)
class NegationPair:
    """One VALSE existence item as a negation minimal pair.

    Attributes:
        item_id: the VALSE key.
        image_file: the image's file name.
        negated: N, the sentence with "no".
        affirmative: A, the other sentence after the "some" insertion rule.
        negation_side: which VALSE sentence is negated, ``"caption"`` or ``"foil"``.
        caption: the caption as scored (N or A).
        foil: the foil as scored (the other one).
        original_caption, original_foil: VALSE's texts, unchanged.
        valid: in VALSE's valid set (``mturk.caption >= 2``).
    """

    item_id: str
    image_file: str
    negated: str
    affirmative: str
    negation_side: str
    caption: str
    foil: str
    original_caption: str
    original_foil: str
    valid: bool = True


@dataclass(frozen=True)
class Exclusion:
    """An item left out of the minimal-pair set, and why."""

    item_id: str
    reason: str


@dataclass
class ExistencePairs:
    """Result of :func:`load_existence_pairs`.

    Attributes:
        pairs: the minimal pairs, in file order.
        exclusions: every other item of the file with its reason (pairs + exclusions = all items).
        counts: ``raw``, ``valid`` and ``minimal_pairs``, each also split per negation side
            (``raw_caption``, ``raw_foil``, ``valid_caption``, ...).
    """

    pairs: list[NegationPair]
    exclusions: list[Exclusion]
    counts: dict[str, int]


@dataclass(frozen=True)
class AlignedPair:
    """A minimal pair tokenized by one tokenizer, with one role per position.

    Attributes:
        pair: the pair.
        tokens_negated, tokens_affirmative: ids with special tokens, equal length, differing only
            at ``negator_pos``.
        str_tokens_negated, str_tokens_affirmative: the tokenizer's token strings.
        roles: one :data:`ROLES` entry per position.
        negator_pos: position of the negator slot.
    """

    pair: NegationPair
    tokens_negated: tuple[int, ...]
    tokens_affirmative: tuple[int, ...]
    str_tokens_negated: tuple[str, ...]
    str_tokens_affirmative: tuple[str, ...]
    roles: tuple[str, ...]
    negator_pos: int

    @property
    def length(self) -> int:
        return len(self.tokens_negated)

    @property
    def tokens_caption(self) -> tuple[int, ...]:
        return self.tokens_negated if self.pair.negation_side == "caption" else self.tokens_affirmative

    @property
    def tokens_foil(self) -> tuple[int, ...]:
        return self.tokens_affirmative if self.pair.negation_side == "caption" else self.tokens_negated

    def positions(self, role: str) -> tuple[int, ...]:
        """Positions holding ``role`` (empty for "further" in the shortest sentences)."""
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}: choose one of {', '.join(ROLES)}")
        return tuple(p for p, r in enumerate(self.roles) if r == role)


@dataclass(frozen=True)
class Rejection:
    """A pair that could not be token-aligned or given roles, and why."""

    pair: NegationPair
    reason: str


def negation_side(item: ValseItem) -> str:
    """``"caption"`` or ``"foil"``: which sentence of an existence item holds the negation."""
    side = _NEGATION_SIDE_OF_PROVENANCE.get(item.provenance_of_foils or "")
    if side is None:
        raise ValseDataError(
            f"existence item {item.item_id!r} has provenance_of_foils={item.provenance_of_foils!r}; "
            f"expected one of {', '.join(_NEGATION_SIDE_OF_PROVENANCE)}"
        )
    return side


def _insert_some(sentence: str) -> str:
    """'There are people.' -> 'There are some people.'; other sentences unchanged."""
    prefix = "There are "
    if sentence.startswith(prefix):
        return prefix + INSERTED_WORD + " " + sentence[len(prefix):]
    return sentence


def _word_check(negated: str, affirmative: str) -> str | None:
    """Reason the two texts are not a one-word minimal pair at the slot, or None."""
    n_words, a_words = negated.split(), affirmative.split()
    if len(n_words) != len(a_words):
        return f"negated and affirmative texts have {len(n_words)} and {len(a_words)} words"
    diff = [i for i, (x, y) in enumerate(zip(n_words, a_words)) if x != y]
    if diff != [_NEGATOR_SLOT]:
        return f"negated and affirmative texts differ at words {diff}, not only at word {_NEGATOR_SLOT}"
    if n_words[_NEGATOR_SLOT].lower() != NEGATOR_WORD:
        return f"negated text has {n_words[_NEGATOR_SLOT]!r} in the negator slot, not 'no'"
    if a_words[_NEGATOR_SLOT].lower() not in AFFIRMATIVE_SLOT_WORDS:
        return f"affirmative text has {a_words[_NEGATOR_SLOT]!r} in the negator slot"
    return None


def make_pair(item: ValseItem) -> tuple[NegationPair | None, str | None]:
    """The minimal pair for one existence item, or (None, reason it is excluded)."""
    side = negation_side(item)
    if not item.caption.startswith(_PREFIXES):
        return None, "caption does not start with There are/There is"
    if side == "caption":
        negated, caption, foil = item.caption, item.caption, _insert_some(item.foil)
        affirmative = foil
    else:
        negated, foil, caption = item.foil, item.foil, _insert_some(item.caption)
        affirmative = caption
    reason = _word_check(negated, affirmative)
    if reason is not None:
        return None, reason
    pair = NegationPair(
        item_id=item.item_id,
        image_file=item.image_file,
        negated=negated,
        affirmative=affirmative,
        negation_side=side,
        caption=caption,
        foil=foil,
        original_caption=item.caption,
        original_foil=item.foil,
        valid=item.valid,
    )
    return pair, None


def load_existence_pairs(
    valid_only: bool = True, data_dir: str | os.PathLike | None = None
) -> ExistencePairs:
    """The VALSE existence minimal pairs (490 on the valid set: 250 caption + 240 foil negation)."""
    items = load_piece("existence", valid_only=False, data_dir=data_dir)
    sides = [negation_side(item) for item in items]  # validates provenance_of_foils on every item
    pairs, exclusions = [], []
    for item in items:
        if valid_only and not item.valid:
            exclusions.append(Exclusion(
                item.item_id, f"not in VALSE's valid set (mturk.caption = {item.mturk.caption} < 2)"
            ))
            continue
        pair, reason = make_pair(item)
        if pair is None:
            exclusions.append(Exclusion(item.item_id, reason))
        else:
            pairs.append(pair)
    counts: dict[str, int] = {}
    for stage, stage_sides in (
        ("raw", sides),
        ("valid", [s for s, item in zip(sides, items) if item.valid]),
        ("minimal_pairs", [p.negation_side for p in pairs]),
    ):
        per_side = Counter(stage_sides)
        counts[stage] = len(stage_sides)
        for side in NEGATION_SIDES:
            counts[f"{stage}_{side}"] = per_side[side]
    log.info("VALSE existence: %s; %d excluded", counts, len(exclusions))
    return ExistencePairs(pairs=pairs, exclusions=exclusions, counts=counts)


def _norm(token: str) -> str:
    """A token string without BPE/WordPiece markers, lower-cased ('there</w>' -> 'there')."""
    for marker in ("</w>", "Ġ", "▁"):
        token = token.replace(marker, "")
    if token.startswith("##"):
        token = token[2:]
    return token.strip().lower()


def _is_special(token: str) -> bool:
    """CLIP's <start_of_text>/<end_of_text>, BERT's [CLS]/[SEP], <s>, </s> and the like."""
    token = token.strip()
    return len(token) > 2 and (
        (token[0] == "<" and token[-1] == ">") or (token[0] == "[" and token[-1] == "]")
    )


def _roles(strs_n: Sequence[str], strs_a: Sequence[str], slot: int) -> tuple[tuple[str, ...] | None, str | None]:
    n = len(strs_n)
    found = " ".join(strs_n)
    if not (_is_special(strs_n[0]) and _is_special(strs_n[-1])):
        return None, f"tokenization does not start and end with special tokens: {found}"
    if slot != 3 or _norm(strs_n[1]) != "there" or _norm(strs_n[2]) not in ("is", "are"):
        return None, (
            f"negator slot at position {slot} is not preceded by exactly [start, 'there', 'is'/'are']: "
            f"{found}"
        )
    if _norm(strs_n[slot]) != NEGATOR_WORD or _norm(strs_a[slot]) not in AFFIRMATIVE_SLOT_WORDS:
        return None, f"negator slot holds {strs_n[slot]!r} / {strs_a[slot]!r}, not 'no' / 'some'|'a'"
    if _norm(strs_n[-2]) != ".":
        return None, f"second-to-last token is {strs_n[-2]!r}, not the period: {found}"
    if n - 2 <= slot + 1:
        return None, f"no subject token between the negator and the period: {found}"
    roles = ["SOT", "there", "is/are", "negator", "first_subject"]
    roles += ["further"] * (n - 2 - (slot + 2))
    roles += ["period", "EOT"]
    return tuple(roles), None


def align_pair(pair: NegationPair, tokenizer: TokenizerLike) -> AlignedPair | Rejection:
    """Tokenize N and A, check they differ only at the negator slot, assign roles."""
    ids_n, ids_a = list(tokenizer.encode(pair.negated)), list(tokenizer.encode(pair.affirmative))
    if len(ids_n) != len(ids_a):
        return Rejection(pair, (
            f"negated and affirmative sentences tokenize to different lengths "
            f"({len(ids_n)} vs {len(ids_a)} tokens)"
        ))
    diff = [p for p, (x, y) in enumerate(zip(ids_n, ids_a)) if x != y]
    if len(diff) != 1:
        return Rejection(pair, (
            f"negated and affirmative tokens differ at positions {diff}, not at exactly one "
            "(the negator slot)"
        ))
    strs_n, strs_a = list(tokenizer.str_tokens(pair.negated)), list(tokenizer.str_tokens(pair.affirmative))
    if len(strs_n) != len(ids_n) or len(strs_a) != len(ids_a):
        return Rejection(pair, "tokenizer's str_tokens and encode disagree in length")
    roles, reason = _roles(strs_n, strs_a, diff[0])
    if roles is None:
        return Rejection(pair, reason)
    return AlignedPair(
        pair=pair,
        tokens_negated=tuple(ids_n),
        tokens_affirmative=tuple(ids_a),
        str_tokens_negated=tuple(strs_n),
        str_tokens_affirmative=tuple(strs_a),
        roles=roles,
        negator_pos=diff[0],
    )


def align_pairs(
    pairs: Sequence[NegationPair], tokenizer: TokenizerLike
) -> tuple[list[AlignedPair], list[Rejection]]:
    """Token-align every pair; returns (aligned pairs, rejected pairs with reasons), in input order."""
    aligned, rejected = [], []
    for pair in pairs:
        result = align_pair(pair, tokenizer)
        (aligned if isinstance(result, AlignedPair) else rejected).append(result)
    if rejected:
        log.warning(
            "%d of %d pairs could not be token-aligned; first: %s: %s",
            len(rejected), len(pairs), rejected[0].pair.item_id, rejected[0].reason,
        )
    return aligned, rejected


def role_table(aligned: Sequence[AlignedPair]):
    """One row per (item, position): item_id, negation_side, position, role, both token strings.

    Returns a pandas DataFrame (for reports and for checking roles by eye).
    """
    import pandas as pd

    rows = [
        {
            "item_id": a.pair.item_id,
            "negation_side": a.pair.negation_side,
            "position": pos,
            "role": role,
            "token_negated": a.str_tokens_negated[pos],
            "token_affirmative": a.str_tokens_affirmative[pos],
        }
        for a in aligned
        for pos, role in enumerate(a.roles)
    ]
    return pd.DataFrame(rows, columns=[
        "item_id", "negation_side", "position", "role", "token_negated", "token_affirmative",
    ])
