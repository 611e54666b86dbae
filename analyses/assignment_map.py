"""One linear map fitted by optimal-transport assignment prediction (VLAP-style, Park et al., ICLR 2024; docs/analyses.md).

Only a linear layer x -> x W + c trains; both embedding spaces stay frozen. With prototypes P (rows of
the target space: a word-embedding table, or by default target training rows), each side gets codes
z = normalise(v) normalise(P)^T. Targets are Sinkhorn assignments of a batch to the prototypes
(computed without gradient; uniform or word-frequency column marginal). The swapped-prediction loss
predicts the target side's assignment from the mapped source's codes and vice versa, with
softmax(z / temperature). The target side is frozen, so only the first half of the swapped loss
moves W; the logged loss holds both halves.

Two presets (:data:`MAP_PRESETS`, recorded in every output as ``preset``):

- ``"toolkit"`` (the default, tuned here): temperature 0.05, 20 balanced Sinkhorn iterations (eps
  0.05), uniform marginal. It is labelled "toolkit (tuned)" wherever it is reported.
- ``"vlap"``: VLAP's released settings: temperature 0.01, 3 Sinkhorn iterations weighted by the
  prototype prior (the word-frequency column marginal when frequencies are given; uniform otherwise,
  listed as a deviation).

:func:`compare_maps` fits this map, a least-squares map and a Procrustes map on one split and reports
cross-modal retrieval accuracy of each on the held-out pairs.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from analyses.alignment.procrustes import fit_least_squares, fit_procrustes
from analyses.options import MAP_PRESETS, PRESET_LABELS, AssignmentMapConfig  # noqa: F401 - re-exported (its home is light: the CLIs' defaults)
from analyses.sinkhorn import assignments
from analyses.validation import AnalysisInputError, as_matrix, as_paired, check_positive_int
from interp.runs.threads import single_blas_thread

log = logging.getLogger(__name__)


@dataclass
class LinearMap:
    """x -> x @ weight + bias (numpy, float64), with its training-loss history if trained."""

    weight: Float[np.ndarray, "p q"]
    bias: Float[np.ndarray, "q"]
    losses: list[float]

    def __call__(self, x: Float[np.ndarray, "n p"]) -> Float[np.ndarray, "n q"]:
        return np.asarray(x, dtype=np.float64) @ self.weight + self.bias


@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """Temporarily set torch's intra-op thread count (restored afterwards); 0 leaves it alone."""
    if n <= 0:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _codes(v: Tensor, protos_n: Tensor) -> Tensor:
    return F.normalize(v, dim=1) @ protos_n.T


def fit_assignment_map(
    x: Float[np.ndarray, "n p"],
    y: Float[np.ndarray, "n q"],
    *,
    prototypes: Float[np.ndarray, "k q"] | None = None,
    frequencies: Float[np.ndarray, "k"] | None = None,
    config: AssignmentMapConfig = AssignmentMapConfig(),
    progress: bool = True,
) -> LinearMap:
    """Train the linear map from ``x`` (source) to ``y``'s space by swapped assignment prediction.

    ``prototypes`` default to a seeded sample of ``max_prototypes`` target training rows (by default
    max(256, 2 x target dim): the prototypes must span the target space to pin the map down);
    ``frequencies`` [k] set the Sinkhorn column marginal when ``config.marginal == "frequency"``.
    """
    x, y = as_paired(x, y, ("X (train sources)", "Y (train targets)"), min_rows=2)
    for name in ("epochs", "batch_size", "sinkhorn_iters"):
        check_positive_int(getattr(config, name), f"config.{name}")
    gen = torch.Generator().manual_seed(config.seed)
    if prototypes is None:
        k = config.max_prototypes or max(256, 2 * y.shape[1])
        idx = torch.randperm(y.shape[0], generator=gen)[: check_positive_int(k, "config.max_prototypes")].numpy()
        prototypes = y[idx]
    prototypes = as_matrix(prototypes, "prototypes")
    if prototypes.shape[1] != y.shape[1]:
        raise AnalysisInputError(f"prototypes must live in Y's space ({y.shape[1]} dims), got {prototypes.shape[1]}.")
    col_marginal = None
    if config.marginal == "frequency":
        if frequencies is None or np.shape(frequencies) != (prototypes.shape[0],):
            raise AnalysisInputError(
                f"marginal='frequency' needs frequencies with one entry per prototype ({prototypes.shape[0]})."
            )
        col_marginal = torch.as_tensor(np.asarray(frequencies, dtype=np.float64))
    elif config.marginal != "uniform":
        raise AnalysisInputError(f"config.marginal must be 'uniform' or 'frequency', got {config.marginal!r}.")
    # float64: at temperature 0.01 the logits span ~200 nats, far into float32's subnormal range.
    xt = torch.as_tensor(x, dtype=torch.float64)
    yt = torch.as_tensor(y, dtype=torch.float64)
    protos_n = F.normalize(torch.as_tensor(prototypes, dtype=torch.float64), dim=1)
    torch.manual_seed(config.seed)
    layer = torch.nn.Linear(x.shape[1], y.shape[1], dtype=torch.float64)
    with _torch_threads(config.threads):
        losses = _train(layer, xt, yt, protos_n, col_marginal, config, gen, progress)
    w = layer.weight.detach().double().numpy().T
    b = layer.bias.detach().double().numpy()
    return LinearMap(w, b, losses)


def _train(
    layer: torch.nn.Linear, xt: Tensor, yt: Tensor, protos_n: Tensor, col_marginal: Tensor | None,
    config: AssignmentMapConfig, gen: torch.Generator, progress: bool = True,
) -> list[float]:
    """The training loop: swapped prediction of Sinkhorn assignments, Adam on the linear layer only."""
    opt = torch.optim.Adam(layer.parameters(), lr=config.lr)
    losses: list[float] = []
    n = xt.shape[0]
    batches = -(-n // config.batch_size)
    epochs = max(config.epochs, -(-config.min_steps // batches))
    for _ in tqdm(range(epochs), desc="assignment map", leave=False, disable=not progress):
        order = torch.randperm(n, generator=gen)
        total = 0.0
        for start in range(0, n, config.batch_size):
            batch = order[start : start + config.batch_size]
            zx = _codes(layer(xt[batch]), protos_n)
            zy = _codes(yt[batch], protos_n)
            qx = assignments(zx.detach(), eps=config.sinkhorn_eps, n_iters=config.sinkhorn_iters, col_marginal=col_marginal)
            qy = assignments(zy, eps=config.sinkhorn_eps, n_iters=config.sinkhorn_iters, col_marginal=col_marginal)
            loss = -(qy * F.log_softmax(zx / config.temperature, dim=1)).sum(1).mean() - (
                qx * F.log_softmax(zy / config.temperature, dim=1)
            ).sum(1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(batch)
        losses.append(total / n)
    return losses


def retrieval_accuracy(
    mapped: Float[np.ndarray, "n q"], targets: Float[np.ndarray, "n q"], ks: Sequence[int] = (1, 5, 10)
) -> dict[str, float]:
    """Cosine retrieval of each mapped source among all ``targets``; gold = the same row (ties favour gold)."""
    a = mapped / np.maximum(np.linalg.norm(mapped, axis=1, keepdims=True), 1e-12)
    b = targets / np.maximum(np.linalg.norm(targets, axis=1, keepdims=True), 1e-12)
    scores = a @ b.T
    rank = np.sum(scores > np.diag(scores)[:, None], axis=1)
    return {f"top{k}": float(np.mean(rank < k)) for k in ks}


def _pca_basis(y: np.ndarray, d: int) -> np.ndarray:
    _, _, vt = np.linalg.svd(y - y.mean(axis=0), full_matrices=False)
    return vt[:d].T


# Small matrices: extra BLAS threads only spin at barriers (interp.runs.threads); results are the same.
@single_blas_thread()
def compare_maps(
    x: Float[np.ndarray, "n p"],
    y: Float[np.ndarray, "n q"],
    *,
    test_fraction: float = 0.2,
    seed: int = 0,
    config: AssignmentMapConfig | None = None,
    prototypes: np.ndarray | None = None,
    frequencies: np.ndarray | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Least-squares, Procrustes and assignment-prediction maps fitted on one seeded train split of the
    pairs, each scored by held-out retrieval (test sources vs all test targets, cosine). Both spaces are
    centred with the training means; Procrustes first PCA-reduces the larger space (fitted on training
    rows) to the smaller dimension and retrieves in that space."""
    x, y = as_paired(x, y, min_rows=4)
    if not 0 < test_fraction < 1:
        raise AnalysisInputError(f"test_fraction must lie in (0, 1), got {test_fraction!r}.")
    config = config or AssignmentMapConfig(seed=seed)
    order = np.random.default_rng(seed).permutation(x.shape[0])
    n_test = max(2, int(round(test_fraction * x.shape[0])))
    test, train = order[:n_test], order[n_test:]
    if train.size < 2:
        raise AnalysisInputError(f"only {train.size} training pairs left after holding out {n_test}: pass more pairs.")
    mx, my = x[train].mean(axis=0), y[train].mean(axis=0)
    xtr, ytr, xte, yte = x[train] - mx, y[train] - my, x[test] - mx, y[test] - my
    rows = []
    ls = fit_least_squares(xtr, ytr)
    rows.append({"map": "least_squares", **retrieval_accuracy(xte @ ls, yte)})
    d = min(x.shape[1], y.shape[1], train.size)
    px = _pca_basis(xtr, d) if x.shape[1] > d else np.eye(x.shape[1])
    py = _pca_basis(ytr, d) if y.shape[1] > d else np.eye(y.shape[1])
    w = fit_procrustes(xtr @ px, ytr @ py)
    rows.append({"map": "procrustes", **retrieval_accuracy(xte @ px @ w, yte @ py)})
    if prototypes is not None:
        prototypes = as_matrix(prototypes, "prototypes") - my
    amap = fit_assignment_map(xtr, ytr, prototypes=prototypes, frequencies=frequencies, config=config, progress=progress)
    rows.append({"map": "assignment_prediction", **retrieval_accuracy(amap(xte), yte),
                 "final_loss": amap.losses[-1] if amap.losses else np.nan,
                 "preset": PRESET_LABELS.get(config.preset, config.preset)})
    table = pd.DataFrame(rows)
    table.insert(1, "n_train", train.size)
    table.insert(2, "n_test", n_test)
    return table
