"""Causal tracing of where a text encoder carries negation (Quantmeyer et al. 2024; docs/tracing.md).

- :mod:`~interp.tracing.spec`: what a cell patches (kind, window, hook names).
- :mod:`~interp.tracing.engine`: the batched engine (exact shortcuts, causal fast path, generic path).
- :mod:`~interp.tracing.reference`: the plain per-cell loop, the engine's test oracle.
- :mod:`~interp.tracing.inputs`: minimal pairs -> runs (patch or ROME noise mode) and effects.
- :mod:`~interp.tracing.noise`: seeded Gaussian corruption of token embeddings.
- :mod:`~interp.tracing.aggregate`: the 8 role rows, sides, segments, per-layer statistics.
"""

from interp.tracing.engine import PatchedScores, TraceRuns, patched_scores, uses_fast_path
from interp.tracing.inputs import NoiseConfig, build_runs, effects
from interp.tracing.reference import reference_patched_scores
from interp.tracing.spec import KINDS, TraceSpec

__all__ = [
    "KINDS",
    "NoiseConfig",
    "PatchedScores",
    "TraceRuns",
    "TraceSpec",
    "build_runs",
    "effects",
    "patched_scores",
    "reference_patched_scores",
    "uses_fast_path",
]
