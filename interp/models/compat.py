"""Import open_clip on CPU-only torch whose torchvision wheel is a CUDA build.

Every torchvision wheel pip can resolve against ``torch==2.13.0`` here is a CUDA build; on the CPU
torch, ``import torchvision`` fails with ``RuntimeError: operator torchvision::nms does not exist``
(its meta registrations look up C++ operators that were never loaded), and so does
``import open_clip``. CLIP needs none of torchvision's C++ operators, so the fix is to define the
two missing operator *schemas* (no kernels), forget the half-imported modules and import again.

This is the only place in the project that imports open_clip; everything else calls
:func:`import_open_clip`. The patch is applied only when the plain import fails.
"""

from __future__ import annotations

import importlib
import logging
import sys
from types import ModuleType

import torch

log = logging.getLogger(__name__)

# The operators torchvision's meta registrations look up at import time.
_MISSING_OPERATOR_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
# Modules left half-imported by the failed attempt; they must be dropped before retrying.
_HALF_IMPORTED_PREFIXES = ("torchvision", "open_clip", "timm")

# Kept alive for the process lifetime: dropping the Library object would unregister the schemas.
_schema_library: torch.library.Library | None = None
patch_applied = False


def _is_missing_operator_error(err: BaseException) -> bool:
    return isinstance(err, RuntimeError) and "torchvision::" in str(err) and "does not exist" in str(err)


def _define_missing_torchvision_schemas() -> None:
    global _schema_library, patch_applied
    if _schema_library is not None:
        return
    library = torch.library.Library("torchvision", "DEF")  # noqa: TOR901 (kept in a global on purpose)
    for name, schema in _MISSING_OPERATOR_SCHEMAS.items():
        try:
            library.define(schema)
        except RuntimeError as err:  # already defined (a working torchvision build loaded it)
            log.debug("torchvision::%s already defined: %s", name, err)
    _schema_library = library
    patch_applied = True


def _forget_half_imported_modules() -> None:
    for module_name in list(sys.modules):
        if module_name.split(".")[0] in _HALF_IMPORTED_PREFIXES:
            del sys.modules[module_name]


def ensure_torchvision_importable() -> None:
    """Make ``import torchvision`` work (applying the schema fix only if the plain import fails).

    transformers imports torchvision lazily (e.g. for ``CLIPModel``); without this step a fresh
    process that imports transformers before open_clip gets ``ModuleNotFoundError: CLIPModel``.
    A missing torchvision is fine (transformers then does without it).
    """
    try:
        importlib.import_module("torchvision")
        return
    except ImportError:
        return
    except RuntimeError as err:
        if not _is_missing_operator_error(err):
            raise
        log.info("torchvision is a CUDA build on CPU torch (%s); defining its operator schemas", err)
    _forget_half_imported_modules()
    _define_missing_torchvision_schemas()
    importlib.import_module("torchvision")


def import_transformers() -> ModuleType:
    """Return ``transformers`` after :func:`ensure_torchvision_importable` (see there why)."""
    ensure_torchvision_importable()
    return importlib.import_module("transformers")


def import_open_clip() -> ModuleType:
    """Return the ``open_clip`` module, patching torchvision's missing operators only if needed.

    Raises:
        ImportError: open_clip is not installed, or still fails after the patch (the message says
            what to install).
    """
    try:
        return importlib.import_module("open_clip")
    except RuntimeError as err:
        if not _is_missing_operator_error(err):
            raise
        log.info("torchvision is a CUDA build on CPU torch (%s); defining its operator schemas", err)
    _forget_half_imported_modules()
    _define_missing_torchvision_schemas()
    try:
        return importlib.import_module("open_clip")
    except RuntimeError as err:  # pragma: no cover - depends on the installed wheels
        raise ImportError(
            f"open_clip still fails to import after the torchvision compatibility step: {err}. "
            "Install the project with `make setup` (pins torch through constraints.txt)."
        ) from err
