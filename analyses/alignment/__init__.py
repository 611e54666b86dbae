"""Cross-modal alignment: PCA + orthogonal Procrustes, cosine / CSLS retrieval, P@k and k-fold
evaluation (:mod:`.procrustes`); ``python -m analyses.alignment`` runs :mod:`analyses.cli.alignment`."""

from interp._lazy import lazy_exports

_EXPORTS = {name: "analyses.alignment.procrustes" for name in (
    "csls_scores", "fit_least_squares", "fit_procrustes", "gold_ranks", "kfold_alignment", "match_dimensions",
    "pca_reduce", "precision_at_k")}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
