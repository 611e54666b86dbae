"""Ideal words: the decomposition and its metrics (:mod:`.decomposition`), tables per layer
(:mod:`.analysis`), zero-shot classification and debiasing (:mod:`.uses`)."""

from interp._lazy import lazy_exports

_EXPORTS = {name: "probes.ideal_words.decomposition" for name in (
    "Decomposition", "DecompositionError", "alphas_from_mapping", "compositionality_metrics", "decompose",
    "effective_rank",
    "mean_pairwise_sq_distance", "normalise_alphas", "numerical_rank", "parse_alpha_args",
    "real_word_distance", "residual_norms")}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
