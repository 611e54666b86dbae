"""The paired-embedding file format (.npz) shared by the extractor, the CLI and users' own data.

One file per space, rows paired across the two files:

- ``embeddings`` [n, d]: the final (e.g. projected) embedding of each item (required);
- ``layer_names`` [L] and ``layer_0`` .. ``layer_{L-1}`` [n, d_l]: optional per-layer representations;
- ``keys`` [n] (str): optional item ids; when both files have them they must agree row by row;
- ``groups`` [n]: optional alias groups (rows of one group are interchangeable gold targets, e.g. the
  captions of one image);
- ``meta`` (a JSON string): model, weights, tower, how it was made.

Writes go to a temporary name that is renamed into place, so a crash never leaves half a file.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from analyses.validation import AnalysisInputError, as_matrix


@dataclass
class EmbeddingSet:
    """Embeddings of one space: final embedding, per-layer representations, ids, groups, metadata."""

    embeddings: np.ndarray
    layers: list[np.ndarray] = field(default_factory=list)
    layer_names: list[str] = field(default_factory=list)
    keys: np.ndarray | None = None
    groups: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return self.embeddings.shape[0]


def save_embeddings(path: str | os.PathLike, data: EmbeddingSet) -> Path:
    """Write ``data`` to ``path`` (.npz) atomically."""
    path = Path(path)
    arrays: dict[str, Any] = {"embeddings": np.asarray(data.embeddings), "meta": np.array(json.dumps(data.meta))}
    if data.layers:
        arrays["layer_names"] = np.array(data.layer_names or [f"layer_{i}" for i in range(len(data.layers))])
        arrays.update({f"layer_{i}": np.asarray(a) for i, a in enumerate(data.layers)})
    if data.keys is not None:
        arrays["keys"] = np.asarray(data.keys).astype(str)
    if data.groups is not None:
        arrays["groups"] = np.asarray(data.groups)
    from interp.files import atomic_path

    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **arrays)
    return path


def load_embeddings(path: str | os.PathLike, name: str | None = None) -> EmbeddingSet:
    """Read and check one .npz written by :func:`save_embeddings` (or by hand in the same format)."""
    path = Path(path)
    label = name or str(path)
    if not path.is_file():
        raise AnalysisInputError(f"{label}: no such file {path}: pass an .npz with an 'embeddings' array [n, d].")
    try:
        npz = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise AnalysisInputError(f"{label}: {path} is not a readable .npz ({err}): write it with numpy.savez.") from err
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise AnalysisInputError(f"{label}: {path} is a plain .npy array, not an .npz: save it with "
                                 "numpy.savez(path, embeddings=array).")
    try:
        with npz:
            return _read_npz(npz, path, label)
    except AnalysisInputError:
        raise
    except (ValueError, OSError, EOFError) as err:  # object arrays (pickles), damaged members
        raise AnalysisInputError(f"{label}: {path} holds an array that cannot be read without pickle or is damaged "
                                 f"({str(err)[:100]}): save plain numeric/string arrays with numpy.savez.") from err


def _read_npz(npz: Any, path: Path, label: str) -> EmbeddingSet:
    if "embeddings" not in npz.files:
        raise AnalysisInputError(
            f"{label}: {path} has arrays {sorted(npz.files)} but no 'embeddings' [n, d]: save the final "
            "embeddings under that name."
        )
    emb = as_matrix(npz["embeddings"], f"{label} 'embeddings'")
    names = [str(s) for s in npz["layer_names"]] if "layer_names" in npz.files else []
    layers = []
    for i, layer_name in enumerate(names):
        if f"layer_{i}" not in npz.files:
            raise AnalysisInputError(f"{label}: layer_names lists {len(names)} layers but 'layer_{i}' is missing.")
        layer = as_matrix(npz[f"layer_{i}"], f"{label} layer {layer_name!r}")
        if layer.shape[0] != emb.shape[0]:
            raise AnalysisInputError(
                f"{label}: layer {layer_name!r} has {layer.shape[0]} rows but 'embeddings' has {emb.shape[0]}."
            )
        layers.append(layer)
    keys = npz["keys"].astype(str) if "keys" in npz.files else None
    groups = npz["groups"] if "groups" in npz.files else None
    try:
        meta = json.loads(str(npz["meta"])) if "meta" in npz.files else {}
    except json.JSONDecodeError as err:
        raise AnalysisInputError(f"{label}: {path} has a 'meta' that is not JSON ({err}): store "
                                 "json.dumps(dict) or drop it.") from err
    if not isinstance(meta, dict):
        raise AnalysisInputError(f"{label}: {path} has a 'meta' that is a JSON {type(meta).__name__}, not an object: "
                                 "store json.dumps(dict) or drop it.")
    for what, arr in (("keys", keys), ("groups", groups)):
        if arr is not None and arr.shape != (emb.shape[0],):
            raise AnalysisInputError(f"{label}: '{what}' must have one entry per row ({emb.shape[0]}), got {arr.shape}.")
    return EmbeddingSet(emb, layers, names, keys, groups, meta)


def check_pairing(x: EmbeddingSet, y: EmbeddingSet, names: tuple[str, str] = ("--x", "--y")) -> None:
    """Both files must describe the same items in the same order."""
    if x.n != y.n:
        raise AnalysisInputError(
            f"{names[0]} has {x.n} rows but {names[1]} has {y.n}: the two files must be paired row by row."
        )
    if x.keys is not None and y.keys is not None and not np.array_equal(x.keys, y.keys):
        first = int(np.flatnonzero(x.keys != y.keys)[0])
        raise AnalysisInputError(
            f"{names[0]} and {names[1]} list different items at row {first} ({x.keys[first]!r} vs "
            f"{y.keys[first]!r}): sort both files by the same keys."
        )
