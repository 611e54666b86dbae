"""VALSE annotation files: where they live and typed items for any piece.

The files ship in the repository (``datasets/valse``) and, in an installed package, under
``<sys.prefix>/share/clip-interp/valse``. :func:`find_piece_file` looks in this order:

1. the ``data_dir`` argument,
2. the environment variable ``CLIP_INTERP_VALSE_DIR``,
3. ``<sys.prefix>/share/clip-interp/valse`` (installed by the package's data-files entry; for a
   ``pip install --user``, ``<site.USER_BASE>/share/clip-interp/valse`` next),
4. ``datasets/valse`` next to the ``interp`` package (a repository checkout).

An explicit ``data_dir`` or a set environment variable is the only place looked: a typo there must
not fall back silently to another copy of the data. The error lists every place looked.

VALSE's valid set is ``mturk.caption >= 2`` (at least two of three annotators judged the caption
to describe the image); :func:`load_piece` keeps only those by default.
"""

from __future__ import annotations

import json
import logging
import os
import site
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping
from interp.errors import ClipInterpError

log = logging.getLogger(__name__)

ENV_VAR = "CLIP_INTERP_VALSE_DIR"
# The annotation files ("instruments") shipped in datasets/valse, by file stem.
PIECES: tuple[str, ...] = (
    "actant-swap",
    "action-replacement",
    "coreference-hard",
    "coreference-standard",
    "counting-adversarial",
    "counting-hard",
    "counting-small-quant",
    "existence",
    "foil-it",
    "plurals",
    "relations",
)
# VALSE's valid set: at least this many of the three annotators accepted the caption.
VALID_MIN_CAPTION_VOTES = 2
REQUIRED_FIELDS = ("caption", "foil", "image_file", "mturk")
MTURK_FIELDS = ("caption", "foil", "other")
_MAX_LISTED_PROBLEMS = 5


class ValseDataError(ClipInterpError, ValueError):
    """A VALSE file is missing, malformed, or an item lacks a field the toolkit needs."""


@dataclass(frozen=True)
class MturkVotes:
    """Annotator votes for one item (three annotators in VALSE)."""

    caption: int
    foil: int
    other: int


@dataclass(frozen=True)
class ValseItem:
    """One VALSE item (an image with a caption and a foil).

    Attributes:
        piece: file stem the item came from (e.g. ``"existence"``).
        item_id: the item's key in the JSON file (e.g. ``"existence_visual7w_2371044"``).
        image_file: image file name, as in the original image dataset (e.g. ``"v7w_2371044.jpg"``).
        caption: the sentence that describes the image.
        foil: the minimally changed sentence that does not.
        dataset: the image source (e.g. ``"visual7w"``).
        mturk: annotator votes.
        provenance_of_foils: existence only (``"zero_to_something"`` = the caption is negated,
            ``"something_to_zero"`` = the foil is); None for other pieces.
        extra: every other field of the JSON record, unchanged.
    """

    piece: str
    item_id: str
    image_file: str
    caption: str
    foil: str
    dataset: str
    mturk: MturkVotes
    provenance_of_foils: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False, repr=False)

    @property
    def valid(self) -> bool:
        """In VALSE's valid set (``mturk.caption >= 2``)."""
        return self.mturk.caption >= VALID_MIN_CAPTION_VOTES


def _repo_data_dir() -> Path:
    return Path(__file__).resolve().parents[2] / "datasets" / "valse"


def _installed_data_dir() -> Path:
    return Path(sys.prefix) / "share" / "clip-interp" / "valse"


def candidate_dirs(data_dir: str | os.PathLike | None = None) -> list[tuple[str, Path]]:
    """The places :func:`find_piece_file` looks, in order, each with a label saying why."""
    if data_dir is not None:
        return [("data_dir argument", Path(data_dir))]
    env = os.environ.get(ENV_VAR)
    if env:
        return [(f"${ENV_VAR}", Path(env))]
    return [
        ("installed package data", _installed_data_dir()),
        ("user-installed package data", Path(site.getuserbase()) / "share" / "clip-interp" / "valse"),
        ("repository checkout", _repo_data_dir()),
    ]


def _check_piece(piece: str) -> str:
    name = piece[:-5] if piece.endswith(".json") else piece
    if name not in PIECES:
        raise ValseDataError(
            f"unknown VALSE piece {piece!r}: choose one of {', '.join(PIECES)}"
        )
    return name


def find_piece_file(piece: str, data_dir: str | os.PathLike | None = None) -> Path:
    """Path of ``<piece>.json``, from the first place in the lookup order that holds it.

    Raises:
        ValseDataError: unknown piece name, or no place holds the file (lists where it looked).
    """
    name = _check_piece(piece)
    looked = []
    for label, directory in candidate_dirs(data_dir):
        path = directory / f"{name}.json"
        if path.is_file():
            log.debug("VALSE piece %s from %s (%s)", name, path, label)
            return path
        looked.append(f"{path} ({label})")
    raise ValseDataError(
        f"VALSE piece {name!r} not found; looked in: {'; '.join(looked)}. Pass data_dir= (or set "
        f"${ENV_VAR}) to a folder holding {name}.json, e.g. the repository's datasets/valse"
    )


def _int_vote(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _parse_item(piece: str, item_id: str, record: Any) -> tuple[ValseItem | None, list[str]]:
    if not isinstance(record, dict):
        return None, [f"item {item_id!r} is a {type(record).__name__}, not an object"]
    problems = [f"item {item_id!r} has no field {name!r}" for name in REQUIRED_FIELDS if name not in record]
    if problems:
        return None, problems
    for name in ("caption", "foil", "image_file"):
        if not isinstance(record[name], str) or not record[name].strip():
            problems.append(f"item {item_id!r}: field {name!r} is {record[name]!r}, not a non-empty string")
    mturk = record["mturk"]
    votes = {}
    if not isinstance(mturk, dict):
        problems.append(f"item {item_id!r}: field 'mturk' is {mturk!r}, not an object of votes")
    else:
        for name in MTURK_FIELDS:
            vote = _int_vote(mturk.get(name))
            if vote is None:
                problems.append(f"item {item_id!r}: mturk.{name} is {mturk.get(name)!r}, not an integer")
            votes[name] = vote
    if problems:
        return None, problems
    extra = {k: v for k, v in record.items() if k not in (*REQUIRED_FIELDS, "dataset", "provenance_of_foils")}
    return (
        ValseItem(
            piece=piece,
            item_id=item_id,
            image_file=record["image_file"],
            caption=record["caption"],
            foil=record["foil"],
            dataset=str(record.get("dataset", "")),
            mturk=MturkVotes(**votes),
            provenance_of_foils=record.get("provenance_of_foils"),
            extra=extra,
        ),
        [],
    )


def read_piece_file(path: str | os.PathLike, piece: str | None = None) -> list[ValseItem]:
    """Parse one VALSE JSON file into items (all of them, in file order).

    Raises:
        ValseDataError: unreadable or malformed JSON, not an object of items, or items missing
            fields (the message lists the first few problems and how many there are).
    """
    path = Path(path)
    piece = piece or path.stem
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ValseDataError(f"cannot read VALSE file {path}: {err}") from err
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValseDataError(
            f"VALSE file {path} is not valid JSON (line {err.lineno}, column {err.colno}: {err.msg}); "
            "restore it from the repository's datasets/valse"
        ) from err
    if not isinstance(data, dict) or not data:
        raise ValseDataError(
            f"VALSE file {path} must hold a non-empty JSON object mapping item ids to items, "
            f"found {type(data).__name__}"
        )
    items, problems = [], []
    for item_id, record in data.items():
        item, item_problems = _parse_item(piece, item_id, record)
        problems.extend(item_problems)
        if item is not None:
            items.append(item)
    if problems:
        listed = "; ".join(problems[:_MAX_LISTED_PROBLEMS])
        raise ValseDataError(
            f"VALSE file {path}: {len(problems)} problem(s) in its items, first: {listed}. "
            f"Every item needs {', '.join(REQUIRED_FIELDS)} (mturk with integer "
            f"{', '.join(MTURK_FIELDS)})"
        )
    return items


def load_piece(
    piece: str, valid_only: bool = True, data_dir: str | os.PathLike | None = None
) -> list[ValseItem]:
    """Items of one VALSE piece, in file order; VALSE's valid set only unless ``valid_only=False``."""
    name = _check_piece(piece)
    items = read_piece_file(find_piece_file(name, data_dir), piece=name)
    if valid_only:
        items = [item for item in items if item.valid]
    log.info("VALSE %s: %d items (valid_only=%s)", name, len(items), valid_only)
    return items
