"""Image embeddings computed once per image and cached on disk, or read from a precomputed file.

A tracing or ablation sweep re-runs the text tower thousands of times but needs each image
embedding once: :func:`embed_images` runs the image tower only for images whose embedding is not
in the cache yet. A cache entry is keyed by

- the model name and checkpoint id (for ``checkpoint=None``, i.e. random-init weights, a sha256
  fingerprint of the image tower's weights instead; for a local checkpoint file, its path, size
  and modification time),
- the preprocessing config,
- the sha256 of the image file's bytes (a changed file gets a new entry).

Entries are one float32 ``.npy`` per image, written to a temporary name and renamed, so an
interrupted run never leaves a half-written entry.

Precomputed embeddings (:func:`load_precomputed_embeddings`): ``.npz`` / ``.safetensors`` with one
``[d]`` array per ``image_file`` key (or, for ``.npz``, the two arrays ``image_files`` and
``embeddings``), or a ``[n, d]`` ``.npy`` with a JSON list of ``image_file`` names beside it
(same name, ``.json`` suffix). :func:`save_precomputed_embeddings` writes the ``.npz`` /
``.safetensors`` forms.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from interp.data.images import ImageDataError, PreprocessConfig, check_image_files, load_image_batch
from interp.models.loading import weights_fingerprint
from interp.files import atomic_path, atomic_write_text, file_sha256

log = logging.getLogger(__name__)

CACHE_ENV_VAR = "CLIP_INTERP_CACHE_DIR"
_LISTED_MISSING = 5


def default_cache_dir() -> Path:
    """``$CLIP_INTERP_CACHE_DIR/image-embeddings``, else ``~/.cache/clip-interp/image-embeddings``."""
    root = os.environ.get(CACHE_ENV_VAR)
    base = Path(root) if root else Path.home() / ".cache" / "clip-interp"
    return base / "image-embeddings"


def checkpoint_id(model: torch.nn.Module, checkpoint: str | os.PathLike | None) -> str:
    """What identifies the weights in the cache key (see the module docstring)."""
    if checkpoint is None or str(checkpoint).lower() in ("none", "random"):
        return "weights-sha256:" + weights_fingerprint(getattr(model, "visual", model))
    path = Path(checkpoint)
    if path.is_file():
        stat = path.stat()
        return f"file:{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    return str(checkpoint)


def _atomic_save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.save(handle, array)


class ImageEmbeddingCache:
    """On-disk cache of image embeddings for one (model, weights, preprocessing)."""

    def __init__(self, root: str | os.PathLike, model_name: str, weights_id: str,
                 preprocess: PreprocessConfig, dtype: str = "float32"):
        key = {"model": model_name, "weights": weights_id, "preprocess": preprocess.as_dict(), "dtype": dtype}
        key_hash = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        safe_name = re.sub(r"[^A-Za-z0-9_.-]+", "_", model_name)[:48]
        self.directory = Path(root) / f"{safe_name}-{key_hash}"
        self.key = key

    def _path(self, file_hash: str) -> Path:
        return self.directory / f"{file_hash}.npy"

    def get(self, file_hash: str) -> np.ndarray | None:
        path = self._path(file_hash)
        if not path.is_file():
            return None
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as err:
            log.warning("unreadable cache entry %s (%s): recomputing it", path, err)
            return None
        if array.ndim != 1 or not np.isfinite(array).all():
            log.warning("bad cache entry %s (shape %s): recomputing it", path, array.shape)
            return None
        return array

    def put(self, file_hash: str, embedding: np.ndarray) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        key_file = self.directory / "key.json"
        if not key_file.exists():
            atomic_write_text(key_file, json.dumps(self.key, indent=2, sort_keys=True))
        _atomic_save_npy(self._path(file_hash), np.asarray(embedding, dtype=np.float32))


def embed_images(
    model: torch.nn.Module,
    model_name: str,
    checkpoint: str | os.PathLike | None,
    folder: str | os.PathLike,
    image_files: Sequence[str],
    *,
    cache_dir: str | os.PathLike | None = None,
    batch_size: int = 32,
    encoder: Callable[[Tensor], Tensor] | None = None,
    preprocess: PreprocessConfig | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> Float[Tensor, "n d_embed"]:
    """Image embeddings (``model.encode_image`` output, not normalised) for ``image_files``.

    Args:
        model: an open_clip model (only its image tower runs).
        model_name, checkpoint: identify the weights for the cache (``checkpoint=None``: random
            init, identified by a fingerprint of the image tower's weights).
        folder: folder holding the files.
        image_files: file names, e.g. ``[pair.image_file for pair in pairs]``; repeats allowed.
        cache_dir: cache root (default :func:`default_cache_dir`).
        encoder: maps a ``[b, 3, size, size]`` batch to ``[b, d]``; default ``model.encode_image``
            (tests inject a counting wrapper).
        preprocess: default :meth:`PreprocessConfig.from_model`.
        device: where batches go (default: the model's device). Batches take the model's dtype,
            and the dtype is part of the cache key (fp16 and fp32 embeddings differ).

    Returns:
        float32 ``[len(image_files), d]`` in the order of ``image_files``.

    Raises:
        ImageDataError: missing files (all listed up front, before any work), corrupt images.
    """
    if batch_size < 1:
        raise ImageDataError(f"batch_size must be >= 1, got {batch_size}")
    paths = check_image_files(folder, image_files)
    preprocess = preprocess or PreprocessConfig.from_model(model)
    param = next(model.parameters())
    device = param.device if device is None else torch.device(device)
    cache = ImageEmbeddingCache(default_cache_dir() if cache_dir is None else cache_dir, model_name,
                                checkpoint_id(model, checkpoint), preprocess, str(param.dtype).replace("torch.", ""))
    unique = list(dict.fromkeys(paths))
    hashes = {p: file_sha256(p) for p in unique}
    found: dict[str, np.ndarray] = {}
    todo: list[Path] = []
    todo_hashes: set[str] = set()
    for path in unique:
        file_hash = hashes[path]
        if file_hash in found or file_hash in todo_hashes:
            continue  # same bytes under another name
        cached = cache.get(file_hash)
        if cached is None:
            todo.append(path)
            todo_hashes.add(file_hash)
        else:
            found[file_hash] = cached
    log.info("image embeddings: %d unique images, %d cached, %d to compute (cache %s)",
             len(unique), len(found), len(todo), cache.directory)
    if todo:
        encode = encoder or model.encode_image
        was_training = model.training
        model.eval()
        try:
            with torch.inference_mode():
                starts = range(0, len(todo), batch_size)
                for start in tqdm(starts, desc="image tower", disable=not progress):
                    chunk = todo[start:start + batch_size]
                    batch = load_image_batch(chunk, preprocess).to(device=device, dtype=param.dtype)
                    out = encode(batch).float().cpu().numpy()
                    if out.shape[0] != len(chunk) or out.ndim != 2:
                        raise ImageDataError(f"image encoder returned shape {out.shape} for {len(chunk)} images")
                    for path, row in zip(chunk, out):
                        cache.put(hashes[path], row)
                        found[hashes[path]] = row
        finally:
            model.train(was_training)
    dims = {v.shape[0] for v in found.values()}
    if len(dims) > 1:
        raise ImageDataError(f"cache {cache.directory} holds embeddings of different sizes {sorted(dims)}: delete it")
    return torch.from_numpy(np.stack([found[hashes[p]] for p in paths]).astype(np.float32))


# ----------------------------------------------------------------------------- precomputed files


def _read_precomputed(path: Path) -> dict[str, np.ndarray]:
    suffix = path.suffix.lower()
    if suffix == ".npz":
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
        if "image_files" in arrays and "embeddings" in arrays:
            names, emb = arrays["image_files"], arrays["embeddings"]
            if emb.ndim != 2 or len(names) != len(emb):
                raise ImageDataError(
                    f"{path}: 'embeddings' must be [n, d] with one row per entry of 'image_files', "
                    f"got {emb.shape} for {len(names)} names"
                )
            return {str(n): row for n, row in zip(names, emb)}
        return arrays
    if suffix == ".safetensors":
        from safetensors.numpy import load_file

        return dict(load_file(str(path)))
    if suffix == ".npy":
        names_path = path.with_suffix(".json")
        if not names_path.is_file():
            raise ImageDataError(
                f"{path} is a plain array: put the JSON list of its rows' image_file names in {names_path}"
            )
        names = json.loads(names_path.read_text())
        emb = np.load(path, allow_pickle=False)
        if not isinstance(names, list) or emb.ndim != 2 or len(names) != len(emb):
            raise ImageDataError(
                f"{path} must be [n, d] with {names_path} listing n image_file names; got array "
                f"{emb.shape} and {len(names) if isinstance(names, list) else type(names).__name__} names"
            )
        return {str(n): row for n, row in zip(names, emb)}
    raise ImageDataError(f"embedding file {path} must end in .npy, .npz or .safetensors")


def load_precomputed_embeddings(
    path: str | os.PathLike, image_files: Sequence[str]
) -> Float[Tensor, "n d_embed"]:
    """Rows of a precomputed embedding file for ``image_files`` (float32 ``[n, d]``, in order).

    Raises:
        ImageDataError: unreadable file, missing keys (how many and the first few), rows of
            different sizes or non-finite values.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageDataError(f"embedding file {path} does not exist")
    try:
        table = _read_precomputed(path)
    except ImageDataError:
        raise
    except Exception as err:  # numpy/safetensors raise many types for a damaged file
        raise ImageDataError(f"embedding file {path} cannot be read ({type(err).__name__}: {err})") from err
    missing = sorted({name for name in image_files if name not in table})
    if missing:
        raise ImageDataError(
            f"embedding file {path} lacks {len(missing)} of the {len(set(image_files))} image files "
            f"needed, e.g. {', '.join(missing[:_LISTED_MISSING])}: recompute it for these images, or "
            "use --target text"
        )
    rows = [np.asarray(table[name]) for name in image_files]
    shapes = {r.shape for r in rows}
    if len(shapes) != 1 or rows[0].ndim != 1:
        raise ImageDataError(f"embedding file {path}: rows must all be 1-D of one size, found shapes {sorted(shapes)}")
    out = np.stack(rows).astype(np.float32)
    if not np.isfinite(out).all():
        raise ImageDataError(f"embedding file {path} holds NaN or infinite values")
    zero = [name for name, row in zip(image_files, out) if not np.any(row)]
    if zero:  # a zero row has no direction: every score against it would be NaN (or a silent 0)
        raise ImageDataError(
            f"embedding file {path}: {len(zero)} rows are all zeros (e.g. {', '.join(zero[:_LISTED_MISSING])}); "
            "recompute the embeddings of these images"
        )
    return torch.from_numpy(out)


def save_precomputed_embeddings(
    path: str | os.PathLike, image_files: Sequence[str], embeddings: Float[Tensor, "n d"] | np.ndarray
) -> Path:
    """Write ``.npz`` or ``.safetensors`` keyed by image_file (temp name, then rename)."""
    path = Path(path)
    array = np.asarray(embeddings.detach().cpu() if isinstance(embeddings, Tensor) else embeddings,
                       dtype=np.float32)
    if array.ndim != 2 or len(array) != len(image_files) or len(set(image_files)) != len(image_files):
        raise ImageDataError(
            f"need one [d] row per distinct image file: got {array.shape} for {len(image_files)} names "
            f"({len(set(image_files))} distinct)"
        )
    table: dict[str, Any] = {name: np.ascontiguousarray(row) for name, row in zip(image_files, array)}
    if path.suffix.lower() not in (".npz", ".safetensors"):
        raise ImageDataError(f"{path}: save as .npz or .safetensors")
    with atomic_path(path) as tmp:
        if path.suffix.lower() == ".npz":
            with open(tmp, "wb") as handle:
                np.savez(handle, **table)
        else:
            from safetensors.numpy import save_file

            save_file(table, str(tmp))
    return path


def image_embeddings(
    model: torch.nn.Module | None,
    model_name: str,
    checkpoint: str | os.PathLike | None,
    image_files: Sequence[str],
    *,
    images_dir: str | os.PathLike | None = None,
    embeddings_file: str | os.PathLike | None = None,
    **embed_kwargs: Any,
) -> Float[Tensor, "n d_embed"]:
    """Image embeddings from exactly one source: a folder of images (through the cache) or a
    precomputed file. ``model`` may be None with a precomputed file.

    Raises:
        ValueError: neither or both sources given (use the text target when there are no images).
    """
    if (images_dir is None) == (embeddings_file is None):
        raise ImageDataError(
            "give exactly one of images_dir (--images DIR) or embeddings_file (--image-embeddings FILE); "
            "without images use the text target (--target text)"
        )
    if embeddings_file is not None:
        return load_precomputed_embeddings(embeddings_file, image_files)
    if model is None:
        raise ImageDataError("computing embeddings from images_dir needs the open_clip model (its image tower)")
    return embed_images(model, model_name, checkpoint, images_dir, image_files, **embed_kwargs)
