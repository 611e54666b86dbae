"""Representation-space comparisons: how alike are two paired embedding sets?

Pure numpy/scipy/torch maths over any two paired embedding matrices (row i of X pairs with row i of Y):

- :mod:`analyses.similarity`: linear / RBF / debiased CKA, permutation baselines, layer-by-layer
  CKA matrices, streaming linear CKA (probes-spec section C).
- :mod:`analyses.matching`: training-free matching as seeded graph matching (QAP) and local CKA with
  Hungarian matching (section C).
- :mod:`analyses.alignment`: PCA + orthogonal Procrustes with cosine / CSLS retrieval, P@k and
  k-fold cross-validation (section D); ``python -m analyses.alignment`` is the report CLI.
- :mod:`analyses.sinkhorn` and :mod:`analyses.assignment_map`: a linear map trained by optimal-transport
  assignment prediction, compared with least-squares and Procrustes maps (section E).
- :mod:`analyses.extract`: paired per-layer embeddings from hooked image and text towers.
- :mod:`analyses.io`: the paired-embedding .npz format; :mod:`analyses.report`: the report writer
  (tables, figures, report.md); :mod:`analyses.synthetic`: planted pairs for demos and CI;
  :mod:`analyses.bench`: runtime figures.
"""

from analyses.alignment import (
    csls_scores,
    fit_procrustes,
    kfold_alignment,
    pca_reduce,
    precision_at_k,
)
from analyses.assignment_map import AssignmentMapConfig, compare_maps, fit_assignment_map
from analyses.matching import local_cka_scores, matching_protocol, seeded_qap
from analyses.similarity import (
    LinearCKAAccumulator,
    cka,
    cka_matrix,
    linear_cka,
    permutation_test,
    rbf_cka,
)
from analyses.sinkhorn import sinkhorn

__all__ = [
    "AssignmentMapConfig",
    "LinearCKAAccumulator",
    "cka",
    "cka_matrix",
    "compare_maps",
    "csls_scores",
    "fit_assignment_map",
    "fit_procrustes",
    "kfold_alignment",
    "linear_cka",
    "local_cka_scores",
    "matching_protocol",
    "pca_reduce",
    "permutation_test",
    "precision_at_k",
    "rbf_cka",
    "seeded_qap",
    "sinkhorn",
]
