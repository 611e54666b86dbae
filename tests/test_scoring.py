"""Scores: hand-computed image-target and text-target values, d/accuracy/segments, text mode errors,
CTE invariants of docs/tracing.md on the tiny CLIP text tower, and an end-to-end image check
against a plain open_clip loop."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from interp import create_open_clip_model, load_text_encoder
from interp.models.compat import import_open_clip
from interp.data.negation import align_pairs, load_existence_pairs
from interp.models.loading import hooked_from_open_clip
from interp.data.scoring import (
    TEXT_MODE_NOTE,
    TextTargetError,
    accuracy,
    clip_score,
    cte,
    image_target_directions,
    pairwise_d,
    score,
    segments,
    summarize,
    text_target_directions,
)

REPO_VALSE = Path(__file__).resolve().parents[1] / "datasets" / "valse"


def test_image_score_hand_computed():
    text = torch.tensor([[3.0, 4.0], [0.0, 2.0]])
    image = torch.tensor([[2.0, 0.0], [1.0, 1.0]])
    directions = image_target_directions(image, math.log(100.0))
    # cos((3,4),(1,0)) = 0.6 ; cos((0,2),(1,1)) = 1/sqrt(2)
    expected = torch.tensor([60.0, 100.0 / math.sqrt(2.0)])
    torch.testing.assert_close(score(text, directions), expected, atol=1e-4, rtol=0)
    torch.testing.assert_close(clip_score(text, image, torch.tensor(math.log(100.0))), expected, atol=1e-4, rtol=0)
    # logit_scale as a 1-element parameter, as open_clip stores it
    torch.testing.assert_close(clip_score(text, image, torch.nn.Parameter(torch.tensor([math.log(100.0)]))),
                               expected, atol=1e-4, rtol=0)


def test_score_broadcasts_like_a_loop():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 5, 16, generator=gen, dtype=torch.float64)  # [item, layer, pos, d]
    direction = torch.randn(3, 16, generator=gen, dtype=torch.float64)
    fast = score(x, direction[:, None, None, :])
    loop = torch.empty(3, 4, 5, dtype=torch.float64)
    for i in range(3):
        for layer in range(4):
            for p in range(5):
                v = x[i, layer, p]
                loop[i, layer, p] = float(v @ direction[i]) / float(v.norm())
    torch.testing.assert_close(fast, loop, atol=1e-12, rtol=0)
    with pytest.raises(ValueError, match="same model"):
        score(x, torch.randn(3, 8))


def test_text_target_hand_computed_and_gap_positive():
    e_n = torch.tensor([[2.0, 0.0]])
    e_a = torch.tensor([[0.0, 5.0]])
    u = text_target_directions(e_n, e_a)
    torch.testing.assert_close(u, torch.tensor([[1.0, -1.0]]))
    assert float(score(e_n, u)) == pytest.approx(1.0) and float(score(e_a, u)) == pytest.approx(-1.0)
    x = torch.tensor([[1.0, 1.0]])  # cos with N = cos with A = 1/sqrt(2): halfway, score 0
    assert float(score(x, u)) == pytest.approx(0.0, abs=1e-7)
    gen = torch.Generator().manual_seed(1)
    e_n, e_a, x = (torch.randn(50, 12, generator=gen, dtype=torch.float64) for _ in range(3))
    u = text_target_directions(e_n, e_a)
    expected = F.cosine_similarity(x, e_n, dim=-1) - F.cosine_similarity(x, e_a, dim=-1)
    torch.testing.assert_close(score(x, u), expected, atol=1e-12, rtol=0)
    gap = score(e_n, u) - score(e_a, u)
    torch.testing.assert_close(gap, 2 * (1 - F.cosine_similarity(e_n, e_a, dim=-1)), atol=1e-12, rtol=0)
    assert bool((gap > 0).all())


def test_d_accuracy_segments_hand_computed():
    s_caption = torch.tensor([30.0, 25.0, 20.0, 22.0, 19.0, 18.5])
    s_foil = torch.tensor([28.0, 25.5, 20.0, 21.0, 20.0, 20.0])
    d = pairwise_d(s_caption, s_foil)
    assert d.tolist() == [2.0, -0.5, 0.0, 1.0, -1.0, -1.5]
    assert accuracy(d) == pytest.approx(2 / 6)  # only d > 0 is correct; d == 0 is not
    assert segments(d).tolist() == ["correct", "ambiguous", "ambiguous", "correct", "ambiguous", "incorrect"]
    assert segments(d, lower=-0.5, upper=0.0).tolist() == [
        "correct", "ambiguous", "correct", "correct", "incorrect", "incorrect"]
    summary = summarize(d, groups=["caption", "foil", "caption", "foil", "caption", "foil"])
    assert summary["accuracy"] == pytest.approx(2 / 6)
    assert summary["segments"] == {"incorrect": 1, "ambiguous": 3, "correct": 2}
    assert summary["by_group"]["caption"] == {
        "n": 3, "accuracy": pytest.approx(1 / 3), "segments": {"incorrect": 0, "ambiguous": 2, "correct": 1}}
    assert summary["by_group"]["foil"]["segments"] == {"incorrect": 1, "ambiguous": 1, "correct": 1}


def test_text_mode_has_no_accuracy_or_segments():
    d = [0.3, -0.1]
    with pytest.raises(TextTargetError, match="undefined for the text target"):
        accuracy(d, target="text")
    with pytest.raises(TextTargetError):
        segments(d, target="text")
    summary = summarize(d, target="text")
    assert summary["accuracy"] is None and summary["segments"] is None
    assert summary["note"] == TEXT_MODE_NOTE


def test_bad_inputs():
    with pytest.raises(ValueError, match="lower <= upper"):
        segments([0.0], lower=1.0, upper=-1.0)
    with pytest.raises(ValueError, match="non-empty 1-D"):
        accuracy([])
    with pytest.raises(ValueError, match="NaN"):
        accuracy([float("nan"), 1.0])
    with pytest.raises(ValueError, match="target must be one of"):
        accuracy([1.0], target="audio")


def test_cte_hand_computed():
    s_a, s_n = torch.tensor(2.0), torch.tensor(6.0)
    assert cte(torch.tensor([2.0, 6.0, 4.0, 8.0]), s_a, s_n).tolist() == [0.0, 1.0, 0.5, 1.5]  # not clipped


@pytest.fixture(scope="module")
def tiny_aligned():
    model = load_text_encoder("tiny")
    pairs = load_existence_pairs(data_dir=REPO_VALSE).pairs
    aligned, rejected = align_pairs(pairs, model.tokenizer)
    assert not rejected
    return model, aligned


def test_text_target_gap_matches_an_independent_score_on_stored_embeddings(tiny_aligned, tmp_path):
    """The gap S(N) - S(A) the tools compute (hooked encoder, text_target_directions, score) equals
    2 (1 - cos(e_N, e_A)) computed in float64 numpy from open_clip's own ``encode_text`` embeddings,
    stored to disk and read back. It fails if the hooked encoder, the normalisation or the sign of the
    direction is wrong; and it checks that the gap varies across items (a constant would mean the
    embeddings ignore the text)."""
    model, aligned = tiny_aligned
    aligned = aligned[:64]
    reference = create_open_clip_model("tiny", None, seed=0)  # the weights load_text_encoder("tiny") converts
    tokens_n = import_open_clip().tokenize([a.pair.negated for a in aligned])
    tokens_a = import_open_clip().tokenize([a.pair.affirmative for a in aligned])
    with torch.no_grad():
        np.savez(tmp_path / "stored.npz", negated=reference.encode_text(tokens_n).double().numpy(),
                 affirmative=reference.encode_text(tokens_a).double().numpy())
        e_n = model([a.pair.negated for a in aligned])
        e_a = model([a.pair.affirmative for a in aligned])
    u = text_target_directions(e_n, e_a)
    gap = (score(e_n, u) - score(e_a, u)).double().numpy()

    stored = np.load(tmp_path / "stored.npz")
    n = stored["negated"] / np.linalg.norm(stored["negated"], axis=1, keepdims=True)
    a = stored["affirmative"] / np.linalg.norm(stored["affirmative"], axis=1, keepdims=True)
    independent = 2.0 * (1.0 - np.einsum("id,id->i", n, a))
    # fp32 encoder vs fp64 reference: cosines agree to ~1e-6, relative to gaps of order 1e-2..1e-1.
    np.testing.assert_allclose(gap, independent, rtol=1e-3, atol=1e-6)
    assert independent.std() > 0.1 * independent.mean()


def test_cte_invariants_with_text_target(tiny_aligned):
    """docs/tracing.md: SOT/there/is-are rows 0; (negator, 0) = 1; (EOT, L) = 1; other
    positions at layer L = 0. Patching runs batched over all positions of one item per layer."""
    model, aligned = tiny_aligned
    n_layers = model.cfg.n_layers
    by_length = {}
    for a in aligned:
        by_length.setdefault(a.length, a)
    for a in [by_length[7], by_length[10], by_length[16]]:
        n = a.length
        batch_n = model.to_token_batch([a.pair.negated])
        batch_a = model.to_token_batch([a.pair.affirmative] * n)
        assert batch_n.tokens[0].tolist() == list(a.tokens_negated)
        with torch.no_grad():
            e_n, e_a = model(batch_n), model(batch_a[[0]])
            u = text_target_directions(e_n, e_a)
            s_n, s_a = score(e_n, u), score(e_a, u)
            table = torch.empty(n_layers + 1, n)
            for layer in range(n_layers + 1):
                r_n = model(batch_n, stop_at_layer=layer)
                r_a = model(batch_a, stop_at_layer=layer)
                idx = torch.arange(n)
                r_a[idx, idx] = r_n[0, idx]  # row p patches position p
                patched = model(batch_a, start_at_layer=layer, residual=r_a)
                table[layer] = cte(score(patched, u.expand(n, -1)), s_a, s_n)
        pos = {r: a.positions(r) for r in ("SOT", "there", "is/are", "EOT")}
        early = [*pos["SOT"], *pos["there"], *pos["is/are"]]
        assert early == [0, 1, 2]
        torch.testing.assert_close(table[:, early], torch.zeros(n_layers + 1, 3), atol=1e-5, rtol=0)
        assert float(table[0, a.negator_pos]) == pytest.approx(1.0, abs=1e-5)
        assert float(table[n_layers, pos["EOT"][0]]) == pytest.approx(1.0, abs=1e-5)
        others = [p for p in range(n) if p != pos["EOT"][0]]
        torch.testing.assert_close(table[n_layers, others], torch.zeros(n - 1), atol=1e-5, rtol=0)


def test_image_mode_d_matches_plain_open_clip_loop(tmp_path):
    """End to end on the tiny CLIP: cached image embeddings + hooked text tower + scoring give the
    same d as a per-item loop over open_clip's own encode_text/encode_image."""
    from PIL import Image

    from interp.data.image_cache import embed_images
    from interp.data.images import load_image_batch

    clip = create_open_clip_model("tiny", None)
    text_model = hooked_from_open_clip(clip, "tiny")
    pairs = load_existence_pairs(data_dir=REPO_VALSE).pairs[:6]
    rng = np.random.default_rng(0)
    for p in pairs:
        Image.fromarray(rng.integers(0, 256, (180, 240, 3), dtype=np.uint8)).save(tmp_path / p.image_file)
    images = embed_images(clip, "tiny", None, tmp_path, [p.image_file for p in pairs],
                          cache_dir=tmp_path / "cache", progress=False)
    with torch.no_grad():
        directions = image_target_directions(images, clip.logit_scale)
        d = pairwise_d(score(text_model([p.caption for p in pairs]), directions),
                       score(text_model([p.foil for p in pairs]), directions))
    open_clip = import_open_clip()
    loop = []
    with torch.no_grad():
        for p in pairs:
            img = clip.encode_image(load_image_batch([tmp_path / p.image_file]))
            txt = clip.encode_text(open_clip.tokenize([p.caption, p.foil]))
            s = clip.logit_scale.exp() * F.cosine_similarity(txt, img, dim=-1)
            loop.append(float(s[0] - s[1]))
    torch.testing.assert_close(d, torch.tensor(loop), atol=1e-4, rtol=0)
