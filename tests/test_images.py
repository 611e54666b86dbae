"""Image path without downloads: synthetic images, preprocessing parity with open_clip, the on-disk
embedding cache (tower not re-run, changed file re-embedded), precomputed files, bad input."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from interp import create_open_clip_model
from interp.models.compat import import_open_clip
from interp.data.image_cache import (
    embed_images,
    load_precomputed_embeddings,
    save_precomputed_embeddings,
)
from interp.data.images import (
    ImageDataError,
    PreprocessConfig,
    check_image_files,
    load_image_batch,
    open_image,
    preprocess_image,
)


def shapes_image(width: int, height: int, seed: int, mode: str = "RGB") -> Image.Image:
    """Coloured shapes on a gradient, with some pixel noise (so resampling has work to do)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([255 * x / max(width - 1, 1), 255 * y / max(height - 1, 1),
                     rng.integers(0, 256) * np.ones_like(x)], -1)
    base = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
    image = Image.fromarray(base, "RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(4):
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        x1, y1 = x0 + int(rng.integers(5, width)), y0 + int(rng.integers(5, height))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=colour)
    if mode == "RGBA":
        alpha = Image.fromarray(rng.integers(0, 256, (height, width), dtype=np.uint8), "L")
        image = image.convert("RGBA")
        image.putalpha(alpha)
        return image
    return image.convert(mode)


PARITY_CASES = {
    "greyscale": (300, 260, "L"),
    "rgb_square": (256, 256, "RGB"),
    "rgba": (333, 517, "RGBA"),
    "wide_non_square": (640, 240, "RGB"),
    "tall_non_square": (225, 1001, "RGB"),
    "palette": (400, 300, "P"),
    "smaller_than_224": (97, 31, "RGB"),
    "exactly_224": (224, 224, "RGB"),
}


@pytest.fixture(scope="module")
def open_clip_preprocess():
    """open_clip's own preprocess for the reference model (random init; only the transform is used)."""
    open_clip = import_open_clip()
    model, _, preprocess = open_clip.create_model_and_transforms("ViT-B-32-quickgelu", pretrained=None)
    return model, preprocess


@pytest.mark.parametrize("case", list(PARITY_CASES))
def test_preprocessing_equals_open_clip(case, open_clip_preprocess):
    width, height, mode = PARITY_CASES[case]
    image = shapes_image(width, height, seed=len(case), mode=mode)
    assert image.mode == mode and image.size == (width, height)
    model, reference_preprocess = open_clip_preprocess
    open_clip = import_open_clip()
    plain_transform = open_clip.image_transform(224, is_train=False)
    ours = preprocess_image(image, PreprocessConfig.from_model(model))
    for reference in (reference_preprocess, plain_transform):
        expected = reference(image).numpy()
        assert ours.shape == expected.shape == (3, 224, 224) and ours.dtype == np.float32
        max_abs_diff = float(np.abs(ours - expected).max())
        assert max_abs_diff == 0.0, f"{case}: max |diff| = {max_abs_diff}"


def test_preprocess_config_from_models(open_clip_preprocess):
    model, _ = open_clip_preprocess
    assert PreprocessConfig.from_model(model) == PreprocessConfig()
    tiny = create_open_clip_model("tiny", None)  # no preprocess_cfg: defaults at its image size
    assert PreprocessConfig.from_model(tiny) == PreprocessConfig(size=224)

    class Visual:
        preprocess_cfg = {"size": 224, "resize_mode": "squash"}

    class Model:
        visual = Visual()

    with pytest.raises(ImageDataError, match="resize_mode='squash'"):
        PreprocessConfig.from_model(Model())


# ----------------------------------------------------------------------------- embedding cache


@pytest.fixture(scope="module")
def tiny_model():
    return create_open_clip_model("tiny", None)


class CountingEncoder:
    """Wraps model.encode_image and counts the images it sees."""

    def __init__(self, model):
        self.model = model
        self.images = 0
        self.calls = 0

    def __call__(self, batch):
        self.images += batch.shape[0]
        self.calls += 1
        return self.model.encode_image(batch)


@pytest.fixture
def image_folder(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    names = []
    for i, (w, h, mode) in enumerate([(300, 200, "RGB"), (120, 260, "L"), (224, 224, "RGBA"), (500, 500, "RGB")]):
        name = f"v7w_{i}.png"
        shapes_image(w, h, seed=100 + i, mode=mode).save(folder / name)
        names.append(name)
    return folder, names


def test_cache_second_run_does_not_call_the_tower(tiny_model, image_folder, tmp_path):
    folder, names = image_folder
    files = names + [names[0]]  # a repeated image is embedded once
    cache = tmp_path / "cache"
    counter = CountingEncoder(tiny_model)
    first = embed_images(tiny_model, "tiny", None, folder, files, cache_dir=cache, batch_size=3,
                         encoder=counter, progress=False)
    assert counter.images == 4 and counter.calls == 2
    assert first.shape == (5, 32) and first.dtype == torch.float32
    # equals a plain reference: preprocess every file, one encode_image call
    with torch.no_grad():
        reference = tiny_model.encode_image(load_image_batch([folder / f for f in files]))
    torch.testing.assert_close(first, reference, atol=1e-5, rtol=1e-5)
    second = embed_images(tiny_model, "tiny", None, folder, files, cache_dir=cache, encoder=counter, progress=False)
    assert counter.images == 4 and counter.calls == 2  # tower not called again
    assert torch.equal(first, second)


def test_changed_file_invalidates_only_its_entry(tiny_model, image_folder, tmp_path):
    folder, names = image_folder
    cache = tmp_path / "cache"
    counter = CountingEncoder(tiny_model)
    before = embed_images(tiny_model, "tiny", None, folder, names, cache_dir=cache, encoder=counter, progress=False)
    shapes_image(300, 200, seed=999).save(folder / names[1])  # same name, new content
    after = embed_images(tiny_model, "tiny", None, folder, names, cache_dir=cache, encoder=counter, progress=False)
    assert counter.images == 4 + 1
    assert not torch.allclose(before[1], after[1])
    keep = [0, 2, 3]
    assert torch.equal(before[keep], after[keep])


def test_cache_key_separates_weights_and_checkpoints(image_folder, tmp_path):
    folder, names = image_folder
    cache = tmp_path / "cache"
    model_a = create_open_clip_model("tiny", None, seed=0)
    model_b = create_open_clip_model("tiny", None, seed=1)
    counter_a, counter_b = CountingEncoder(model_a), CountingEncoder(model_b)
    emb_a = embed_images(model_a, "tiny", None, folder, names, cache_dir=cache, encoder=counter_a, progress=False)
    emb_b = embed_images(model_b, "tiny", None, folder, names, cache_dir=cache, encoder=counter_b, progress=False)
    assert counter_b.images == 4  # other random weights: other fingerprint, no stale hit
    assert not torch.allclose(emb_a, emb_b)
    embed_images(model_a, "tiny", "ckpt-v2", folder, names, cache_dir=cache, encoder=counter_a, progress=False)
    assert counter_a.images == 8  # a named checkpoint is its own key
    model_a64 = copy.deepcopy(model_a).double()
    counter_64 = CountingEncoder(model_a64)
    emb_64 = embed_images(model_a64, "tiny", "ckpt-v2", folder, names, cache_dir=cache, encoder=counter_64,
                          progress=False)
    assert counter_64.images == 4  # another dtype is another key; batches take the model's dtype
    torch.testing.assert_close(emb_64, emb_a, atol=1e-4, rtol=1e-4)


def test_corrupt_cache_entry_is_recomputed(tiny_model, image_folder, tmp_path):
    folder, names = image_folder
    cache = tmp_path / "cache"
    counter = CountingEncoder(tiny_model)
    first = embed_images(tiny_model, "tiny", None, folder, names, cache_dir=cache, encoder=counter, progress=False)
    entry = sorted(cache.rglob("*.npy"))[0]
    entry.write_bytes(b"not an array")
    again = embed_images(tiny_model, "tiny", None, folder, names, cache_dir=cache, encoder=counter, progress=False)
    assert counter.images == 5
    torch.testing.assert_close(first, again, atol=1e-6, rtol=1e-6)


def test_missing_images_listed_before_any_work(tiny_model, image_folder, tmp_path):
    folder, names = image_folder
    wanted = names + [f"v7w_missing_{i}.jpg" for i in range(7)]
    counter = CountingEncoder(tiny_model)
    with pytest.raises(ImageDataError) as info:
        embed_images(tiny_model, "tiny", None, folder, wanted, cache_dir=tmp_path / "cache", encoder=counter)
    message = str(info.value)
    assert "7 of 11 image files are missing" in message
    assert "v7w_missing_0.jpg" in message and "v7w_missing_6.jpg" not in message  # first few only
    assert "--target text" in message
    assert counter.images == 0 and not (tmp_path / "cache").exists()
    with pytest.raises(ImageDataError, match="does not exist.*--target text"):
        check_image_files(tmp_path / "nowhere", names)


def test_corrupt_image_is_named(tiny_model, image_folder, tmp_path):
    folder, names = image_folder
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    with pytest.raises(ImageDataError, match="broken.jpg cannot be read"):
        open_image(folder / "broken.jpg")
    with pytest.raises(ImageDataError, match="broken.jpg"):
        embed_images(tiny_model, "tiny", None, folder, ["broken.jpg"], cache_dir=tmp_path / "c", progress=False)
    assert not list(tmp_path.rglob("*.npy"))  # nothing cached for a batch that failed


# ----------------------------------------------------------------------------- precomputed files


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
def test_precomputed_round_trip(tmp_path, suffix):
    names = ["v7w_1.jpg", "v7w_2.jpg", "v7w_3.jpg"]
    emb = torch.randn(3, 8)
    path = save_precomputed_embeddings(tmp_path / f"emb{suffix}", names, emb)
    loaded = load_precomputed_embeddings(path, ["v7w_3.jpg", "v7w_1.jpg", "v7w_3.jpg"])
    assert torch.equal(loaded, emb[[2, 0, 2]])
    assert [p.name for p in tmp_path.iterdir()] == [f"emb{suffix}"]  # no temp file left


def test_precomputed_npz_two_array_form_and_npy_with_names(tmp_path):
    names = np.array(["a.jpg", "b.jpg"])
    emb = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.savez(tmp_path / "two.npz", image_files=names, embeddings=emb)
    assert load_precomputed_embeddings(tmp_path / "two.npz", ["b.jpg"]).tolist() == [[3.0, 4.0, 5.0]]
    np.save(tmp_path / "plain.npy", emb)
    with pytest.raises(ImageDataError, match="plain.json"):
        load_precomputed_embeddings(tmp_path / "plain.npy", ["a.jpg"])
    (tmp_path / "plain.json").write_text(json.dumps(["a.jpg", "b.jpg"]))
    assert load_precomputed_embeddings(tmp_path / "plain.npy", ["a.jpg"]).tolist() == [[0.0, 1.0, 2.0]]


def test_precomputed_bad_input(tmp_path):
    save_precomputed_embeddings(tmp_path / "e.npz", ["a.jpg", "b.jpg"], np.ones((2, 4)))
    with pytest.raises(ImageDataError) as info:
        load_precomputed_embeddings(tmp_path / "e.npz", ["a.jpg", "c.jpg", "d.jpg"])
    assert "lacks 2 of the 3 image files" in str(info.value) and "c.jpg" in str(info.value)
    (tmp_path / "bad.npz").write_bytes(b"garbage")
    with pytest.raises(ImageDataError, match="bad.npz cannot be read"):
        load_precomputed_embeddings(tmp_path / "bad.npz", ["a.jpg"])
    with pytest.raises(ImageDataError, match=r"\.npy, \.npz or \.safetensors"):
        (tmp_path / "e.pt").write_bytes(b"")
        load_precomputed_embeddings(tmp_path / "e.pt", ["a.jpg"])
    np.savez(tmp_path / "nan.npz", **{"a.jpg": np.array([np.nan, 1.0])})
    with pytest.raises(ImageDataError, match="NaN"):
        load_precomputed_embeddings(tmp_path / "nan.npz", ["a.jpg"])
    np.savez(tmp_path / "ragged.npz", **{"a.jpg": np.ones(3), "b.jpg": np.ones(4)})
    with pytest.raises(ImageDataError, match="one size"):
        load_precomputed_embeddings(tmp_path / "ragged.npz", ["a.jpg", "b.jpg"])
    with pytest.raises(ValueError, match="distinct"):
        save_precomputed_embeddings(tmp_path / "dup.npz", ["a.jpg", "a.jpg"], np.ones((2, 4)))


def test_image_embeddings_dispatches_to_one_source(tiny_model, image_folder, tmp_path):
    from interp.data.image_cache import image_embeddings

    folder, names = image_folder
    from_images = image_embeddings(tiny_model, "tiny", None, names, images_dir=folder,
                                   cache_dir=tmp_path / "cache", progress=False)
    save_precomputed_embeddings(tmp_path / "e.safetensors", names, from_images)
    from_file = image_embeddings(None, "tiny", None, names[::-1], embeddings_file=tmp_path / "e.safetensors")
    assert torch.equal(from_file, from_images.flip(0))
    with pytest.raises(ValueError, match="exactly one.*--target text"):
        image_embeddings(tiny_model, "tiny", None, names)
    with pytest.raises(ValueError, match="exactly one"):
        image_embeddings(tiny_model, "tiny", None, names, images_dir=folder, embeddings_file=tmp_path / "e.safetensors")
