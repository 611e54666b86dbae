"""Representation-space comparisons: how alike are two paired embedding sets?

Pure numpy/scipy/torch maths over any two paired embedding matrices (row i of X pairs with row i of Y):

- :mod:`analyses.similarity`: linear / RBF / debiased CKA, permutation baselines, layer-by-layer
  CKA matrices, streaming linear CKA (Kornblith et al., ICML 2019).
- :mod:`analyses.matching`: training-free matching as seeded graph matching (QAP) and local CKA with
  Hungarian matching (Maniparambil et al., CVPR 2024).
- :mod:`analyses.alignment.procrustes`: PCA + orthogonal Procrustes with cosine / CSLS retrieval, P@k and
  k-fold cross-validation (CSLS: Conneau et al., ICLR 2018); ``python -m analyses.alignment`` is the report CLI.
- :mod:`analyses.sinkhorn` and :mod:`analyses.assignment_map`: a linear map trained by optimal-transport
  assignment prediction, compared with least-squares and Procrustes maps (VLAP: Park et al., ICLR 2024).
- :mod:`analyses.extract.pairs`: paired per-layer embeddings from hooked image and text towers.
- :mod:`analyses.io`: the paired-embedding .npz format; :mod:`analyses.cli.report`: the report writer
  (tables, figures, report.md); :mod:`analyses.synthetic`: planted pairs for demos and CI;
  :mod:`analyses.bench`: runtime figures.
"""

from interp._lazy import lazy_exports

# Names resolve lazily (PEP 562), so importing the package stays cheap. (The Sinkhorn solver is
# ``analyses.sinkhorn.sinkhorn``: a package attribute of that name would be shadowed by the submodule.)
_EXPORTS = {
    "AssignmentMapConfig": "analyses.assignment_map",
    "LinearCKAAccumulator": "analyses.similarity",
    "cka": "analyses.similarity",
    "cka_matrix": "analyses.similarity",
    "compare_maps": "analyses.assignment_map",
    "csls_scores": "analyses.alignment.procrustes",
    "fit_assignment_map": "analyses.assignment_map",
    "fit_procrustes": "analyses.alignment.procrustes",
    "kfold_alignment": "analyses.alignment.procrustes",
    "linear_cka": "analyses.similarity",
    "local_cka_scores": "analyses.matching",
    "matching_protocol": "analyses.matching",
    "pca_reduce": "analyses.alignment.procrustes",
    "permutation_test": "analyses.similarity",
    "precision_at_k": "analyses.alignment.procrustes",
    "rbf_cka": "analyses.similarity",
    "seeded_qap": "analyses.matching",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
