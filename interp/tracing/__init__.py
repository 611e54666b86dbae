"""Causal tracing of where a text encoder carries negation (negation-spec.md §3).

- :mod:`~interp.tracing.spec`: what a cell patches (kind, window, hook names).
- :mod:`~interp.tracing.options`: choices and defaults of the commands (no torch).
- :mod:`~interp.tracing.engine`: the batched engine (exact shortcuts, causal fast path, generic path).
- :mod:`~interp.tracing.reference`: the plain per-cell loop, the engine's test oracle.
- :mod:`~interp.tracing.inputs`: minimal pairs -> runs (patch or ROME noise mode) and effects.
- :mod:`~interp.tracing.noise`: seeded Gaussian corruption of token embeddings.
- :mod:`~interp.tracing.aggregate`: the 8 role rows, sides, segments, per-layer statistics.
"""

from interp._lazy import lazy_exports

# Names resolve on first use (PEP 562): the commands import light submodules (spec, options)
# without pulling torch through this package.
_EXPORTS = {
    "KINDS": "interp.tracing.spec",
    "NoiseConfig": "interp.tracing.inputs",
    "PatchedScores": "interp.tracing.engine",
    "TraceRuns": "interp.tracing.engine",
    "TraceSpec": "interp.tracing.spec",
    "build_runs": "interp.tracing.inputs",
    "effects": "interp.tracing.inputs",
    "patched_scores": "interp.tracing.engine",
    "reference_patched_scores": "interp.tracing.reference",
    "uses_fast_path": "interp.tracing.engine",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
