"""The analyses' input error, free of numpy and torch so the commands can raise it before any heavy import."""

from __future__ import annotations

from interp.errors import ClipInterpError


class AnalysisInputError(ClipInterpError, ValueError):
    """Raised when embeddings handed to an analysis cannot be used (shape, NaN, too few rows).

    A :class:`interp.errors.ClipInterpError`, so the CLIs print it as one line and exit with code 2.
    """
