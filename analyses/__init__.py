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
- :mod:`analyses.report`: the report writer (tables, figures, report.md).
"""

