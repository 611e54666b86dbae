"""CLIP image preprocessing with PIL + numpy only, and loading a folder of images with clear errors.

Two pipelines, chosen by ``PreprocessConfig.pipeline``:

- ``"open_clip"``: open_clip's evaluation transform.
- ``"hf"``: Hugging Face ``CLIPImageProcessor`` (the pipeline of the negation study, which scored
  VALSE through ``CLIPProcessor``): convert to RGB first (transparency composited onto white),
  resize the shortest side (PIL bicubic, same sizes), centre crop with the offset *floored*
  (``(h - size) // 2``), scale and normalise. It differs from open_clip's on odd crop margins (the
  crop moves by one pixel) and on palette / transparent images (open_clip resamples them in their
  own mode, so palette images get NEAREST). ``tests/test_images.py`` checks it against
  ``transformers``' processors.

:func:`preprocess_image` with ``"open_clip"`` reproduces open_clip's transform step by step
(torchvision is not needed): resize the shortest side to ``size`` (PIL bicubic, the long side ``int(size * long /
short)``, as ``torchvision.transforms.Resize``), centre crop (offsets ``int(round((h - size) / 2))``,
as ``CenterCrop``), convert to RGB (after the crop, as open_clip's ``MaybeConvertMode``, so RGBA and
greyscale images are resampled in their own mode exactly like open_clip does), scale to [0, 1] and
normalise with CLIP's mean/std in float32. ``tests/test_images.py`` checks it equals open_clip's
transform on greyscale, RGB, RGBA, palette and non-square images.

About 60% of VALSE existence items sit within |d| < 1 (Quantmeyer et al. 2024; docs/data.md, "Scores"): a different resize or
crop flips many of them, which is why exact parity matters.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from jaxtyping import Float
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from interp.errors import ClipInterpError
from interp.presets import PREPROCESS_PIPELINES

log = logging.getLogger(__name__)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}
PIPELINES = PREPROCESS_PIPELINES
_LISTED_MISSING = 5


class ImageDataError(ClipInterpError, ValueError):
    """Images cannot be used as asked: missing files, unreadable or corrupt images, bad config."""


@dataclass(frozen=True)
class PreprocessConfig:
    """CLIP's evaluation preprocessing (open_clip ``PreprocessCfg`` with resize_mode "shortest")."""

    size: int = 224
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD
    interpolation: str = "bicubic"
    pipeline: str = "open_clip"  # "open_clip" or "hf" (see the module docstring)

    def __post_init__(self):
        if self.pipeline not in PIPELINES:
            raise ImageDataError(
                f"preprocessing pipeline {self.pipeline!r} is not known: use one of {', '.join(PIPELINES)}"
            )
        if self.interpolation not in _RESAMPLE:
            raise ImageDataError(
                f"interpolation {self.interpolation!r} is not supported: use one of {', '.join(_RESAMPLE)}"
            )
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ImageDataError(f"mean and std need 3 values (RGB), got {self.mean} and {self.std}")

    @classmethod
    def from_model(cls, model: Any, pipeline: str = "open_clip") -> "PreprocessConfig":
        """Read the preprocessing of an open_clip model (``model.visual.preprocess_cfg`` if set by
        ``create_model*``, else CLIP's defaults at ``model.visual.image_size``), run by ``pipeline``."""
        visual = getattr(model, "visual", model)
        cfg = dict(getattr(visual, "preprocess_cfg", None) or {})
        size = cfg.get("size", getattr(visual, "image_size", 224))
        if isinstance(size, (tuple, list)):
            if len(set(size)) != 1:
                raise ImageDataError(f"non-square model input size {tuple(size)} is not supported")
            size = size[0]
        resize_mode = cfg.get("resize_mode", "shortest")
        if resize_mode != "shortest":
            raise ImageDataError(
                f"the model's preprocessing uses resize_mode={resize_mode!r}; only CLIP's 'shortest' "
                "(resize shortest side, centre crop) is implemented"
            )
        mean, std = cfg.get("mean", CLIP_MEAN), cfg.get("std", CLIP_STD)
        if not isinstance(mean, (tuple, list)):
            mean = (mean,) * 3
        if not isinstance(std, (tuple, list)):
            std = (std,) * 3
        return cls(
            size=int(size),
            mean=tuple(float(m) for m in mean),
            std=tuple(float(s) for s in std),
            interpolation=cfg.get("interpolation", "bicubic"),
            pipeline=pipeline,
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def resized_size(width: int, height: int, size: int) -> tuple[int, int]:
    """(width, height) after resizing the shortest side to ``size`` (torchvision's rounding)."""
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = size, int(size * long / short)
    return (new_short, new_long) if width <= height else (new_long, new_short)


def default_pipeline(checkpoint: Any) -> str:
    """The pipeline that follows the weights' source: ``"hf"`` for a Hugging Face CLIP checkpoint
    (a directory with ``config.json``, or an ``hf-hub:`` name), else ``"open_clip"``."""
    text = str(checkpoint) if checkpoint is not None else ""
    if text.startswith("hf-hub:") or (text and (Path(text) / "config.json").is_file()):
        return "hf"
    return "open_clip"


def to_rgb_over_white(image: Image.Image) -> Image.Image:
    """RGB as Hugging Face converts it: any transparency (alpha band, or a palette's transparent
    index) is composited onto white; other modes are converted directly."""
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def _crop_offset(margin: int, pipeline: str) -> int:
    # torchvision's CenterCrop rounds half the margin (half to even); HF floors it
    return margin // 2 if pipeline == "hf" else int(round(margin / 2.0))


def preprocess_image(
    image: Image.Image, config: PreprocessConfig = PreprocessConfig()
) -> Float[np.ndarray, "3 size size"]:
    """One PIL image -> normalised float32 array ``[3, size, size]``, equal to open_clip's
    transform (``config.pipeline == "open_clip"``) or to ``CLIPImageProcessor`` (``"hf"``)."""
    size = config.size
    width, height = image.size
    if width < 1 or height < 1:
        raise ImageDataError(f"image has size {image.size}: nothing to preprocess")
    if config.pipeline == "hf":
        image = to_rgb_over_white(image)  # HF converts before resizing: palettes get bicubic too
    new_w, new_h = resized_size(width, height, size)
    if (new_w, new_h) != (width, height):
        image = image.resize((new_w, new_h), _RESAMPLE[config.interpolation])
    top = _crop_offset(new_h - size, config.pipeline)
    left = _crop_offset(new_w - size, config.pipeline)
    image = image.crop((left, top, left + size, top + size))
    image = image.convert("RGB")  # open_clip converts after the crop; a no-op for "hf"
    array = np.asarray(image, dtype=np.uint8).astype(np.float32) / np.float32(255.0)
    mean = np.asarray(config.mean, dtype=np.float32)
    std = np.asarray(config.std, dtype=np.float32)
    array = (array - mean) / std
    return np.ascontiguousarray(array.transpose(2, 0, 1))


def check_image_files(folder: str | os.PathLike, image_files: Sequence[str]) -> list[Path]:
    """Paths of ``image_files`` under ``folder``; an error listing what is missing if any are.

    Raises:
        ImageDataError: the folder does not exist, or some files are missing (the message gives how
            many, the first few names, and suggests ``--target text``).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ImageDataError(
            f"images folder {folder} does not exist: pass --images DIR holding the image files "
            "(Visual7W for VALSE existence), or use --target text to score without images"
        )
    paths = [folder / name for name in image_files]
    missing = sorted({p.name for p in paths if not p.is_file()})
    if missing:
        raise ImageDataError(
            f"{len(missing)} of {len(set(image_files))} image files are missing under {folder}, e.g. "
            f"{', '.join(missing[:_LISTED_MISSING])}: pass --images DIR holding all of them "
            "(Visual7W for VALSE existence), or use --target text to score without images"
        )
    return paths


def open_image(path: str | os.PathLike) -> Image.Image:
    """Open and fully decode one image; a corrupt or unreadable file is an error naming it."""
    path = Path(path)
    try:
        with Image.open(path) as image:
            image.load()
            return image.copy()
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError, SyntaxError) as err:
        raise ImageDataError(
            f"image {path} cannot be read ({type(err).__name__}: {err}): replace the file, or leave "
            "its item out"
        ) from err


def load_image_batch(
    paths: Sequence[str | os.PathLike], config: PreprocessConfig = PreprocessConfig()
) -> Float[Tensor, "batch 3 size size"]:
    """Open and preprocess images into one float32 batch."""
    arrays = [preprocess_image(open_image(p), config) for p in paths]
    return torch.from_numpy(np.stack(arrays)) if arrays else torch.empty(0, 3, config.size, config.size)
