"""Checks on what a loader reads: device names, weight files, config files, finite weights.

Each turns a low-level failure (torch's RuntimeError on a bad device, safetensors' SafetensorError,
json's JSONDecodeError) into one of the project's errors naming the input and the fix, and refuses
NaN/inf weights, which would otherwise give NaN scores that a NaN-skipping sum shows as 0.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import Tensor

from interp.errors import CheckpointMismatchError, DeviceError, NonFiniteError


def check_device(device: str | torch.device) -> torch.device:
    """``device`` as a ``torch.device``, refused with a clear error if unknown or unavailable here."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise DeviceError(f"device {str(device)!r} is not a torch device: use cpu (or cuda, cuda:0 on a GPU machine)") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device {str(device)!r} asked for, but torch sees no CUDA device here: use cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise DeviceError(f"device {str(device)!r}: only {torch.cuda.device_count()} CUDA devices here")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise DeviceError(f"device {str(device)!r} is not supported: use cpu or cuda")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceError(f"device {str(device)!r} asked for, but MPS is not available here: use cpu")
    return dev


def read_safetensors(path: str | Path) -> dict[str, Tensor]:
    """The tensors of a ``.safetensors`` file; a truncated or non-safetensors file is a clear error."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointMismatchError(
            f"cannot read {path} as safetensors ({str(err)[:120]}): the file is truncated or not a "
            "safetensors file; download or export it again"
        ) from err


def read_config_json(path: str | Path) -> dict[str, Any]:
    """A model directory's ``config.json`` as a dict; invalid JSON or a non-object is a clear error."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointMismatchError(f"{path} is not valid JSON ({err}): re-export or reinstall the model") from err
    if not isinstance(data, dict):
        raise CheckpointMismatchError(f"{path} holds a JSON {type(data).__name__}, not an object: re-export the model")
    return data


def check_finite_tensors(tensors: Iterable[tuple[str, Tensor]], source: str) -> None:
    """Refuse NaN or infinite values in any floating tensor, naming the first bad tensor."""
    for name, tensor in tensors:
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise NonFiniteError(
                f"{source}: tensor {name} holds {bad} NaN/inf values; the weights are corrupt: "
                "re-download or re-export the checkpoint"
            )
