"""Lean loads: a text encoder is built from open_clip's text tower alone, never the image tower.

The hooked encoder built that way must equal open_clip's own text tower with the same weights, keep
open_clip's random-init distribution, and agree with the full model a random run builds for images.
"""

from __future__ import annotations

import torch

from interp.models import loading
from interp.models.loading import create_open_clip_model, hooked_from_open_clip, load_text_encoder, weights_fingerprint


def _no_vision_tower(monkeypatch, open_clip_module) -> None:
    """Make any attempt to build an image tower fail loudly."""

    def refuse(*args, **kwargs):
        raise AssertionError("the image tower was built")

    monkeypatch.setattr(open_clip_module.model, "_build_vision_tower", refuse)


def test_random_init_builds_no_image_tower(monkeypatch, open_clip_module):
    _no_vision_tower(monkeypatch, open_clip_module)
    for name in ("tiny", "ViT-B-32"):
        model = load_text_encoder(name, None, seed=0)
        assert model.cfg.pretrained == "random-init (seed 0)"


def test_random_text_tower_is_the_full_models_text_tower():
    """Seeded random init: the text-only build equals the text part of the full random model built
    with the same seed (so a random run's image and text towers belong together), and seeds differ."""
    for seed in (0, 5):
        lean = load_text_encoder("tiny", None, seed=seed)
        full = hooked_from_open_clip(create_open_clip_model("tiny", None, seed=seed), "tiny")
        assert weights_fingerprint(lean) == weights_fingerprint(full)
    assert weights_fingerprint(load_text_encoder("tiny", None, seed=0)) != weights_fingerprint(load_text_encoder("tiny", None, seed=5))


def test_text_only_encoder_equals_open_clip_encode_text(open_clip_module):
    """Parity with open_clip's own ``encode_text`` on the same weights (fp32, atol 1e-5: float32
    rounding of a 2-layer tower with values of order 1)."""
    lean = load_text_encoder("tiny", None, seed=2)
    full = create_open_clip_model("tiny", None, seed=2)
    texts = ["There is no dog on the table.", "A cat.", "there are some people in the picture"]
    with torch.no_grad():
        ours = lean(texts)
        reference = full.encode_text(open_clip_module.tokenize(texts))
    assert torch.allclose(ours, reference, atol=1e-5, rtol=0)
    assert float(lean.logit_scale) == float(full.logit_scale.detach())


def test_random_init_keeps_open_clips_distribution(open_clip_module):
    """Every weight matrix has the spread open_clip's own init gives it (checked against a full
    open_clip CLIP built independently: a different random stream, the same distribution)."""
    lean = dict(load_text_encoder("tiny", None, seed=0).named_parameters())
    torch.manual_seed(123)
    full = open_clip_module.model.CLIP(**loading._open_clip_config("tiny"))
    reference = dict(hooked_from_open_clip(full, "tiny").named_parameters())
    assert lean.keys() == reference.keys()
    compared = 0
    for key, value in lean.items():
        if float(reference[key].detach().std()) == 0:  # constants (LayerNorm weights, zero biases): equal
            assert torch.equal(value, reference[key]), key
        elif value.numel() >= 256:  # std estimates within a few % at this size; 0.8-1.25 is a wide margin
            ratio = float(value.std() / reference[key].std())
            assert 0.8 < ratio < 1.25, (key, ratio)
            assert not torch.equal(value, reference[key])
            compared += 1
    assert compared >= 10


def test_checkpoint_file_loads_text_tensors_only(monkeypatch, open_clip_module, tmp_path):
    """A full open_clip checkpoint file: the text tower's tensors (and logit scale) are loaded into a
    text tower built alone; the result equals converting the full model."""
    source = create_open_clip_model("tiny", None, seed=9)
    with torch.no_grad():
        source.logit_scale.fill_(3.25)
    path = tmp_path / "tiny.pt"
    torch.save(source.state_dict(), path)
    _no_vision_tower(monkeypatch, open_clip_module)
    lean = load_text_encoder("tiny", str(path))
    assert weights_fingerprint(lean) == weights_fingerprint(hooked_from_open_clip(source, "tiny"))
    assert float(lean.logit_scale) == 3.25


def test_loaded_parameters_are_contiguous_and_own_their_memory():
    """The encoder takes over the tower's tensors: each parameter is contiguous and no two share storage."""
    model = load_text_encoder("tiny", None, seed=0)
    params = list(model.parameters())
    assert all(p.is_contiguous() for p in params)
    storages = [p.untyped_storage().data_ptr() for p in params]
    assert len(set(storages)) == len(storages)


def test_models_open_clip_builds_only_whole_take_the_full_path(monkeypatch):
    """A config whose text tower open_clip builds only inside the full model (CoCa, HF text) is not
    built text-only."""
    assert loading.text_tower_only({"embed_dim": 1, "text_cfg": {}})
    assert not loading.text_tower_only({"embed_dim": 1, "text_cfg": {}, "multimodal_cfg": {}})
    assert not loading.text_tower_only({"embed_dim": 1, "text_cfg": {"hf_model_name": "x"}})
