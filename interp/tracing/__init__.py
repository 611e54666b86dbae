"""Causal tracing of where a text encoder carries negation (Quantmeyer et al. 2024; docs/tracing.md).

- :mod:`~interp.tracing.spec`: what a cell patches (kind, window, hook names).
- :mod:`~interp.tracing.options`: choices and defaults of the commands (no torch).
- :mod:`~interp.tracing.engine`: the batched engine (exact shortcuts, causal fast path, generic path).
- :mod:`~interp.tracing.reference`: the plain per-cell loop, the engine's test oracle.
- :mod:`~interp.tracing.inputs`: minimal pairs -> runs (patch or ROME noise mode) and effects.
- :mod:`~interp.tracing.noise`: seeded Gaussian corruption of token embeddings.
- :mod:`~interp.tracing.pairs`: trace_pair / trace_pairs on any user sentences, any metric.
- :mod:`~interp.tracing.metric`: what a sweep measures (cosine to a direction, or any metric).
- :mod:`~interp.tracing.atp`: attribution patching, first-order estimates of every cell.
- :mod:`~interp.tracing.aggregate`: the 8 role rows, sides, segments, per-layer statistics.
"""

from interp._lazy import lazy_exports

# Names resolve on first use (PEP 562): the commands import light submodules (spec, options)
# without pulling torch through this package.
_EXPORTS = {
    "KINDS": "interp.tracing.spec",
    "NoiseConfig": "interp.tracing.inputs",
    "PatchedScores": "interp.tracing.engine",
    "RowMetric": "interp.tracing.metric",
    "TraceRuns": "interp.tracing.engine",
    "TraceSpec": "interp.tracing.spec",
    "atp_patched_scores": "interp.tracing.atp",
    "build_runs": "interp.tracing.inputs",
    "effects": "interp.tracing.inputs",
    "patched_scores": "interp.tracing.engine",
    "reference_patched_scores": "interp.tracing.reference",
    "trace_pair": "interp.tracing.pairs",
    "trace_pairs": "interp.tracing.pairs",
    "uses_fast_path": "interp.tracing.engine",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
