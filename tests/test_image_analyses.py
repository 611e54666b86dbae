"""Image-side analyses find the planted answer, sum exactly, and their fast engines equal plain loops.

The planted tower (interp.testing.build_planted_image_encoder) has one head that writes the
redness of the reddest patch into one embedding direction; every other head and MLP writes nothing.
Scores use a caption direction along that output ("there is a red square") minus a foil direction.
Tolerances: sums and engine-vs-loop comparisons in float32 at logit scale 0 (d in cosine units,
|d| <= 2): 1e-5; idle components: |effect| <= 1e-6 (they are exactly zero by construction).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from interp.data.images import PreprocessConfig, preprocess_image
from interp.models.clip import load_image_encoder
from interp.testing import CLS_DIM, OUT_DIM, build_planted_image_encoder
from interp.vision.ablation import ImageAblationError, ablation_effects, ablation_effects_reference
from interp.vision.decomposition import decompose_image
from interp.vision.scores import caption_minus_foil, score_gap
from interp.vision.synthetic import patch_box, square_scene
from interp.vision.tracing import Corruption, gaussian_noise, restore_cell_reference, trace_image

SQUARE_AT = (2, 1)  # (row, col) of the red patch on the planted 4 x 4 grid


@pytest.fixture(scope="module")
def planted():
    return build_planted_image_encoder()


def _pixels(image, size):
    return torch.from_numpy(preprocess_image(image, PreprocessConfig(size=size)))[None]


@pytest.fixture(scope="module")
def scene(planted):
    size, patch = planted.model.cfg.image_size[0], planted.model.cfg.patch_size[0]
    clean = _pixels(square_scene(size, patch_box(*SQUARE_AT, patch)), size)
    empty = _pixels(square_scene(size, None), size)
    caption = torch.zeros(1, planted.model.cfg.d_embed)
    caption[0, OUT_DIM], caption[0, CLS_DIM] = 1.0, 1.0
    foil = torch.zeros_like(caption)
    foil[0, CLS_DIM] = 1.0
    return clean, empty, caption_minus_foil(caption, foil)


def _square_position(planted) -> int:
    rows, cols = planted.model.cfg.grid
    return 1 + SQUARE_AT[0] * cols + SQUARE_AT[1]


def test_decomposition_sums_to_the_embedding_and_to_d(planted, scene):
    clean, _, u = scene
    parts = decompose_image(planted.model, clean)
    assert (parts.total() - parts.embedding).abs().max().item() <= 1e-5
    scores = parts.scores(u, 0.0)
    d = score_gap(parts.embedding, u, 0.0)
    assert abs(scores.total().item() - d.item()) <= 1e-5


def test_decomposition_ranks_the_planted_head_and_patch_first(planted, scene):
    clean, _, u = scene
    scores = decompose_image(planted.model, clean).scores(u, 0.0)
    per_head = scores.heads.sum(-1)[0]  # [layer, head]
    flat = per_head.abs().flatten().argsort(descending=True)
    assert divmod(int(flat[0]), planted.model.cfg.n_heads) == (planted.head_layer, planted.head)
    assert per_head[planted.head_layer, planted.head] > 0.05
    others = per_head.clone()
    others[planted.head_layer, planted.head] = 0
    assert others.abs().max().item() <= 1e-6
    positions = scores.heads[0, planted.head_layer, planted.head]
    assert int(positions.argmax()) == _square_position(planted)
    assert scores.mlps.abs().max().item() <= 1e-6


@pytest.mark.parametrize("overrides", [{}, {"pool_type": "avg"}, {"pool_type": "avg", "final_ln_after_pool": True},
                                       {"ls_init_value": 0.5}])
def test_decomposition_is_exact_on_random_towers(open_clip_module, overrides):
    cfg = open_clip_module.model.CLIPVisionCfg(layers=2, width=64, head_width=16, patch_size=16, image_size=64, **overrides)
    torch.manual_seed(0)
    visual = open_clip_module.model._build_vision_tower(32, cfg, False).eval()
    model = load_image_encoder(visual)
    with torch.no_grad():
        model.ln_post.w.normal_(1.0, 0.3)  # frozen-scale readout must carry ln_post's gain and bias
        model.ln_post.b.normal_(0.0, 0.3)
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    parts = decompose_image(model, images)
    reference = model(images)
    assert (parts.embedding - reference).abs().max().item() == 0.0
    assert (parts.total() - reference).abs().max().item() <= 1e-5


def test_ablation_ranks_the_planted_head_first_and_idle_heads_zero(planted, scene):
    clean, empty, u = scene
    effects = ablation_effects(planted.model, clean, u, 0.0, "zero")
    heads = effects.heads[0]
    top = int(heads.abs().flatten().argmax())
    assert divmod(top, planted.model.cfg.n_heads) == (planted.head_layer, planted.head)
    assert heads[planted.head_layer, planted.head] < -0.05  # removing it loses the caption's evidence
    others = heads.clone()
    others[planted.head_layer, planted.head] = 0
    assert others.abs().max().item() <= 1e-6
    assert effects.mlps.abs().max().item() <= 1e-6
    # resampling from the empty scene removes the square's evidence too
    resampled = ablation_effects(planted.model, clean, u, 0.0, "resample", donors=empty)
    assert resampled.heads[0, planted.head_layer, planted.head] < -0.05


@pytest.mark.parametrize("method, where", [("zero", "all"), ("mean", "all"), ("resample", "all"), ("mean", "cls")])
def test_ablation_engine_equals_the_plain_loop(method, where):
    model = load_image_encoder("tiny", None)
    images = torch.randn(3, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    u = torch.randn(3, model.cfg.d_embed, generator=torch.Generator().manual_seed(1))
    fast = ablation_effects(model, images, u, 0.0, method, where=where)
    slow = ablation_effects_reference(model, images, u, 0.0, method, where=where)
    assert (fast.heads - slow.heads).abs().max().item() <= 1e-5
    assert (fast.mlps - slow.mlps).abs().max().item() <= 1e-5
    assert fast.heads.abs().max().item() > 1e-3  # random heads do matter: the comparison is not 0 == 0


def test_ablation_rejects_unknown_methods(planted, scene):
    with pytest.raises(ImageAblationError, match="not one of zero, mean, resample"):
        ablation_effects(planted.model, scene[0], scene[2], 0.0, "mode")


def test_tracing_with_a_corrupted_image_finds_the_square_then_the_class_token(planted, scene):
    clean, empty, u = scene
    result = trace_image(planted.model, clean, u, 0.0, Corruption(images=empty))
    recovered = result.recovered[0]  # [layer, pos]
    assert result.d_clean.item() - result.d_corrupt.item() > 0.05
    square = _square_position(planted)
    for layer in range(planted.head_layer + 1):  # before the head reads it: only the square matters
        assert int(recovered[layer].argmax()) == square
        assert abs(recovered[layer, square].item() - 1.0) <= 1e-5
        others = torch.cat([recovered[layer, :square], recovered[layer, square + 1:]])
        assert others.abs().max().item() <= 1e-5
    for layer in range(planted.head_layer + 1, planted.model.cfg.n_layers + 1):  # after: the class token
        assert int(recovered[layer].argmax()) == 0
        assert abs(recovered[layer, 0].item() - 1.0) <= 1e-5


def test_tracing_engine_equals_the_per_cell_oracle():
    model = load_image_encoder("tiny", None)
    images = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    u = torch.randn(2, model.cfg.d_embed, generator=torch.Generator().manual_seed(1))
    noise = gaussian_noise(model, images, 3.0, seed=0)
    result = trace_image(model, images, u, 0.0, noise, max_rows=37)  # rows split across chunks
    rng = np.random.default_rng(0)
    cells = [(i, layer, int(rng.integers(model.cfg.n_pos))) for i in range(2) for layer in range(model.cfg.n_layers + 1)]
    cells += [(0, 0, 0), (1, model.cfg.n_layers, 0)]
    for i, layer, pos in cells:
        one = Corruption(noise=noise.noise[i:i + 1])
        oracle = restore_cell_reference(model, images[i:i + 1], u[i:i + 1], 0.0, one, layer, pos)
        assert abs(result.d_restored[i, layer, pos].item() - oracle) <= 1e-5, (i, layer, pos)
    # Restoring every position at layer 0 is the clean run; the corrupted run differs.
    assert (result.d_clean - result.d_corrupt).abs().min().item() > 1e-4


def test_noise_box_touches_only_its_patches(planted, scene):
    noise = gaussian_noise(planted.model, scene[0], 3.0, seed=0, box=(1, 2, 3, 4)).noise[0]  # rows 1-2, cols 2-3
    touched = noise.abs().sum(-1).view(4, 4) > 0
    expected = torch.zeros(4, 4, dtype=torch.bool)
    expected[1:3, 2:4] = True
    assert torch.equal(touched, expected)
    with pytest.raises(Exception, match="patch grid"):
        gaussian_noise(planted.model, scene[0], 3.0, box=(0, 0, 5, 1))


def test_noise_is_seeded(planted, scene):
    a = gaussian_noise(planted.model, scene[0], 3.0, seed=5).noise
    b = gaussian_noise(planted.model, scene[0], 3.0, seed=5).noise
    c = gaussian_noise(planted.model, scene[0], 3.0, seed=6).noise
    assert torch.equal(a, b) and not torch.equal(a, c)
