"""Input checks shared by every analysis: one place for the error messages a person can act on."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch



from analyses.errors import AnalysisInputError  # noqa: E402,F401 - re-exported (defined where the CLIs can import it light)


def as_matrix(value: Any, name: str, *, min_rows: int = 1, dtype: Any = np.float64) -> np.ndarray:
    """Return ``value`` as a finite 2-D numpy array ``[n, d]`` with ``n >= min_rows`` and ``d >= 1``.

    ``name`` is how the error messages refer to the input (e.g. ``"X"`` or ``"--x embeddings.npz"``).
    Torch tensors are detached and moved to the CPU.
    """
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    arr = np.asarray(value)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise AnalysisInputError(f"{name} must hold numbers, got dtype {arr.dtype}: pass a float array [n, d].")
    if arr.ndim != 2:
        raise AnalysisInputError(
            f"{name} must be 2-D [n_items, n_features], got shape {arr.shape}: "
            "reshape it (one row per item) before calling."
        )
    n, d = arr.shape
    if d == 0:
        raise AnalysisInputError(f"{name} has dimension 0 (shape {arr.shape}): each item needs at least one feature.")
    if n < min_rows:
        raise AnalysisInputError(f"{name} has {n} rows but this analysis needs at least {min_rows}: pass more items.")
    arr = arr.astype(dtype, copy=False)
    if not np.isfinite(arr).all():
        bad_rows = np.flatnonzero(~np.isfinite(arr).all(axis=1))
        raise AnalysisInputError(
            f"{name} contains NaN or inf in {bad_rows.size} row(s) (first: {bad_rows[:5].tolist()}): "
            "drop or repair those rows (in both paired inputs) before calling."
        )
    return arr


def as_paired(x: Any, y: Any, names: tuple[str, str] = ("X", "Y"), *, min_rows: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Check two paired matrices (row i of ``x`` pairs with row i of ``y``) and return them as float64."""
    xa = as_matrix(x, names[0], min_rows=min_rows)
    ya = as_matrix(y, names[1], min_rows=min_rows)
    if xa.shape[0] != ya.shape[0]:
        raise AnalysisInputError(
            f"{names[0]} has {xa.shape[0]} rows but {names[1]} has {ya.shape[0]}: the two inputs must be paired "
            "row by row (row i of one describes the same item as row i of the other)."
        )
    return xa, ya


def check_positive_int(value: int, name: str, *, minimum: int = 1) -> int:
    """Return ``value`` if it is an int ``>= minimum``, else raise naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise AnalysisInputError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    return int(value)
