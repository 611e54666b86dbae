"""The ``hf`` preprocessing pipeline against transformers' own CLIP image processors (the pipeline
of the negation study), on the cases where it differs from open_clip's: odd crop margins, palette,
transparent and greyscale images. Also: the pipeline is part of the image cache key."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from interp.data.image_cache import ImageEmbeddingCache
from interp.data.images import CLIP_STD, ImageDataError, PreprocessConfig, default_pipeline, preprocess_image
from interp.models.compat import import_open_clip

HF_CASES = {
    "odd_margin_1024x683": (1024, 683, "RGB"),  # resized to 335x224: margin 111, round 56 vs floor 55
    "odd_margin_tall": (500, 777, "RGB"),
    "palette": (400, 301, "P"),
    "palette_transparent": (301, 400, "P-transparent"),
    "rgba": (333, 517, "RGBA"),
    "greyscale": (300, 261, "L"),
}


def noisy_image(width: int, height: int, mode: str, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([255 * x / (width - 1), 255 * y / (height - 1), 128 + 0 * x], -1)
    base = np.clip(base + rng.normal(0, 40, base.shape), 0, 255).astype(np.uint8)
    image = Image.fromarray(base, "RGB")
    if mode == "RGBA":
        image = image.convert("RGBA")
        image.putalpha(Image.fromarray(rng.integers(0, 256, (height, width), dtype=np.uint8), "L"))
        return image
    if mode == "P-transparent":
        image = image.convert("P")
        image.info["transparency"] = int(np.asarray(image)[0, 0])
        return image
    return image.convert(mode)


@pytest.fixture(scope="module")
def hf_processors():
    """transformers' PIL-backend and torchvision-backend CLIP image processors (defaults: 224 px).
    transformers 5 names them CLIPImageProcessorPil / CLIPImageProcessor; 4.x named them
    CLIPImageProcessor (PIL, the one the negation study ran) / CLIPImageProcessorFast."""
    import_open_clip()  # defines torchvision's missing operators on CPU torch (transformers imports it)
    import transformers

    if hasattr(transformers, "CLIPImageProcessorPil"):
        return transformers.CLIPImageProcessorPil(), transformers.CLIPImageProcessor()
    return transformers.CLIPImageProcessor(), transformers.CLIPImageProcessorFast()


def grey_levels(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """|a - b| of two normalised [3, h, w] arrays in 0..255 grey levels of the input."""
    return np.abs(a - b) * np.asarray(CLIP_STD, dtype=np.float64)[:, None, None] * 255


@pytest.mark.parametrize("case", list(HF_CASES))
def test_hf_pipeline_equals_clip_image_processor(case, hf_processors):
    width, height, mode = HF_CASES[case]
    image = noisy_image(width, height, mode, seed=len(case))
    pil_processor, torchvision_processor = hf_processors
    ours = preprocess_image(image, PreprocessConfig(pipeline="hf"))
    pil_ref = pil_processor(images=image, return_tensors="np")["pixel_values"][0]
    tv_ref = torchvision_processor(images=image, return_tensors="np")["pixel_values"][0]
    assert ours.shape == pil_ref.shape == tv_ref.shape == (3, 224, 224)
    # the PIL backend runs the same PIL resize: equal up to float32 normalisation rounding
    assert grey_levels(ours, pil_ref).max() <= 1e-3
    # the torchvision backend resamples on float tensors and rounds once more: within one grey level,
    # except a few pixels at the hard white/colour edges a transparent palette index leaves, where
    # bicubic overshoot is clipped differently (2 levels there; 99.9% of pixels still within 1)
    tv_diff = grey_levels(ours, tv_ref)
    assert np.quantile(tv_diff, 0.999) <= 1 + 1e-3
    assert tv_diff.max() <= (2 if mode == "P-transparent" else 1) + 1e-3


@pytest.mark.parametrize("case", ["odd_margin_1024x683", "palette", "rgba"])
def test_open_clip_pipeline_differs_where_expected(case, hf_processors):
    """The two pipelines really differ on these inputs (so the parity above is not vacuous)."""
    width, height, mode = HF_CASES[case]
    image = noisy_image(width, height, mode, seed=len(case))
    hf = preprocess_image(image, PreprocessConfig(pipeline="hf"))
    oc = preprocess_image(image, PreprocessConfig(pipeline="open_clip"))
    assert grey_levels(hf, oc).mean() > 1.0


def test_odd_margin_crop_moves_one_pixel():
    """1024x683 -> 335x224: open_clip crops from x=56 (round(55.5) half-to-even), HF from x=55."""
    ramp = np.tile(np.arange(1024, dtype=np.float64) * 255 / 1023, (683, 1))
    image = Image.fromarray(np.stack([ramp] * 3, -1).round().astype(np.uint8), "RGB")
    hf = preprocess_image(image, PreprocessConfig(pipeline="hf"))
    oc = preprocess_image(image, PreprocessConfig(pipeline="open_clip"))
    np.testing.assert_allclose(hf[:, :, 1:-1], oc[:, :, :-2], atol=0)  # HF is one pixel to the left


def test_pipeline_is_in_the_cache_key(tmp_path):
    keys = {p: ImageEmbeddingCache(tmp_path, "m", "w", PreprocessConfig(pipeline=p)).directory
            for p in ("hf", "open_clip")}
    assert keys["hf"] != keys["open_clip"]


def test_default_pipeline_follows_the_weights_source(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    assert default_pipeline(tmp_path) == "hf"
    assert default_pipeline("hf-hub:openai/clip-vit-base-patch32") == "hf"
    assert default_pipeline("openai") == "open_clip"
    assert default_pipeline(None) == "open_clip"
    with pytest.raises(ImageDataError, match="pipeline"):
        PreprocessConfig(pipeline="torchvision")
