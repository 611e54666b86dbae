"""Errors a user can act on. The CLIs print these as one line (no traceback) and exit with 2."""

from __future__ import annotations


class ClipInterpError(Exception):
    """Base class of expected failures: bad input, missing weights or data. The message says what
    was wrong and what to do."""


class UnknownModelError(ClipInterpError, ValueError):
    """A model name or pretrained tag nobody knows."""


class WeightsUnavailableError(ClipInterpError, RuntimeError):
    """Pretrained weights could not be obtained (no network and no cache, or a missing file)."""


class CheckpointMismatchError(ClipInterpError, ValueError):
    """A checkpoint's tensors do not fit the model it was loaded into."""


class NonFiniteError(ClipInterpError, ValueError):
    """NaN or infinity where a number must be finite (weights, embeddings, scores, effects)."""


class DeviceError(ClipInterpError, ValueError):
    """A torch device that does not exist or is not available on this machine."""
