"""Data for the analyses: VALSE annotation files and the existence negation minimal pairs.

- :mod:`interp.data.valse`: where the VALSE files live and typed items for any piece.
- :mod:`interp.data.negation`: the existence minimal pairs (N, A), token alignment and roles.
"""

from interp.data.negation import (
    ROLES,
    AlignedPair,
    ExistencePairs,
    Exclusion,
    NegationPair,
    Rejection,
    align_pairs,
    load_existence_pairs,
    role_table,
)
from interp.data.valse import PIECES, ValseDataError, ValseItem, find_piece_file, load_piece

__all__ = [
    "PIECES",
    "ROLES",
    "AlignedPair",
    "ExistencePairs",
    "Exclusion",
    "NegationPair",
    "Rejection",
    "ValseDataError",
    "ValseItem",
    "align_pairs",
    "find_piece_file",
    "load_existence_pairs",
    "load_piece",
    "role_table",
]
