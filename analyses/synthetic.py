"""Planted paired embeddings for demos and CI: two 'towers' that share a latent signal that grows
with depth, so the report has a known answer (late layers alike, early layers not)."""

from __future__ import annotations

import numpy as np
from scipy.stats import ortho_group

from analyses.io import EmbeddingSet
from analyses.validation import check_positive_int


def synthetic_pair(
    n: int = 600, *, dim_x: int = 48, dim_y: int = 32, latent: int = 16, n_layers: int = 4, noise: float = 0.5, seed: int = 0
) -> tuple[EmbeddingSet, EmbeddingSet]:
    """X and Y share a ``latent``-dim signal; layer l of each mixes in a fraction l / (n_layers - 1) of it
    (layer 0 is pure noise). Final embeddings = last layer; Y's is a rotated noisy copy of X's signal."""
    n = check_positive_int(n, "n", minimum=4)
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, latent))
    basis_x = ortho_group.rvs(dim_x, random_state=seed)[:latent]
    basis_y = ortho_group.rvs(dim_y, random_state=seed + 1)[:latent]
    xs, ys = [], []
    for layer in range(n_layers):
        share = layer / max(n_layers - 1, 1)
        xs.append(share * z @ basis_x + (1 - share + noise) * rng.normal(size=(n, dim_x)) / np.sqrt(dim_x / latent))
        ys.append(share * z @ basis_y + (1 - share + noise) * rng.normal(size=(n, dim_y)) / np.sqrt(dim_y / latent))
    names = [f"layer {i}" for i in range(n_layers)]
    keys = np.array([f"item{i:06d}" for i in range(n)])
    meta = {"synthetic": True, "seed": seed, "description": (
        f"planted latent ({latent} dims) shared by both spaces, signal share rising 0 -> 1 over {n_layers} layers, noise {noise}")}
    return (EmbeddingSet(xs[-1], xs, names, keys, None, {**meta, "tower": "synthetic X"}),
            EmbeddingSet(ys[-1], ys, names, keys, None, {**meta, "tower": "synthetic Y"}))
