"""Per-layer pooled features equal a plain forward per layer, for EOT-pooled and mean-pooled encoders;
ideal-word uses (zero-shot, debiasing) on planted image embeddings; label checks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from interp.models.config import TextEncoderConfig
from interp.models.text_encoder import HookedTextEncoder
from interp.models.tokenization import CLIPTokenizer
from probes.concepts import concept_set_from_dict
from probes.embeddings import encode_texts
from probes.ideal_words.decomposition import decompose
from probes.ideal_words.analysis import embed_concept_set, is_random_init, metric_rows
from probes.ideal_words.uses import LabelError, debias_tables, load_image_embeddings, read_labels, zero_shot_tables

TEXTS = ["a photo of a red car", "a cat", "there is no dog on the old table ."]


@pytest.fixture(scope="module")
def tiny():
    import interp

    return interp.load_text_encoder("tiny", None)


@pytest.fixture(scope="module")
def mean_pooled():
    tok = CLIPTokenizer()
    cfg = TextEncoderConfig(n_layers=2, d_model=32, n_heads=4, d_mlp=64, n_ctx=77, d_vocab=tok.vocab_size,
                            d_embed=32, causal=False, norm="post", pool="mean", has_final_ln=False,
                            has_projection=False, model_name="mean-pooled-test")
    model = HookedTextEncoder(cfg, tok)
    model.init_weights(seed=1, std=0.5)
    return model.eval()


def _plain_layers(model, text):
    batch = model.to_token_batch([text])
    states = [model(batch, stop_at_layer=layer)[0] for layer in range(model.cfg.n_layers + 1)]
    return batch, states


def test_eot_pooled_layers_equal_plain_forward(tiny):
    feats = encode_texts(tiny, TEXTS, layers=True, batch_size=2)
    assert feats.layers.shape == (3, 3, 64)
    for i, text in enumerate(TEXTS):
        batch, states = _plain_layers(tiny, text)
        eot = int(batch.tokens[0].argmax())
        for layer, s in enumerate(states):
            torch.testing.assert_close(feats.layers[layer, i], s[eot], atol=1e-5, rtol=0)
        # the last state, through ln_final and the projection, is the sentence embedding
        final = tiny.ln_final(feats.layers[-1, i][None, None])[0, 0] @ tiny.W_proj
        torch.testing.assert_close(final, feats.final[i], atol=1e-5, rtol=0)
        torch.testing.assert_close(feats.final[i], tiny(batch)[0], atol=1e-5, rtol=0)


def test_mean_pooled_layers_equal_plain_forward(mean_pooled):
    feats = encode_texts(mean_pooled, TEXTS, layers=True, batch_size=3)  # padded batch
    for i, text in enumerate(TEXTS):
        _, states = _plain_layers(mean_pooled, text)
        for layer, s in enumerate(states):
            torch.testing.assert_close(feats.layers[layer, i], s.mean(0), atol=1e-5, rtol=0)
    torch.testing.assert_close(feats.layers[-1], feats.final, atol=1e-5, rtol=0)


SET = {"name": "mini", "template": "a photo of a {colour} {object}",
       "factors": [{"name": "colour", "values": ["red", "blue", "green"]},
                   {"name": "object", "values": ["car", "cup"]}],
       "single_templates": {"colour": "a photo of a {colour} object", "object": "a photo of a {object}"}}


def test_concept_embeddings_and_rows(tiny):
    cs = concept_set_from_dict(SET)
    emb = embed_concept_set(tiny, cs)
    assert emb.final.shape == (3, 2, 32) and emb.layers.shape == (3, 3, 2, 64)
    torch.testing.assert_close(emb.final.norm(dim=-1), torch.ones(3, 2, dtype=torch.float64))
    # grid cell (i, j) is the prompt of combination (i, j)
    direct = encode_texts(tiny, ["a photo of a green cup"]).final[0].double()
    torch.testing.assert_close(emb.final[2, 1], direct / direct.norm(), atol=1e-5, rtol=0)
    rows = metric_rows(emb, model_kind="model")
    assert [r["layer"] for r in rows] == ["final", "0", "1", "2"]
    assert np.isfinite(rows[0]["RW"]) and np.isnan(rows[1]["RW"])
    assert is_random_init(tiny)


def _planted_images(emb, labels_idx, noise=0.01, seed=0):
    """Images built from the ideal words of their labels (u_a + u_o + noise): ideal-word scoring must
    recover every label."""
    dec = decompose(emb.final)
    g = torch.Generator().manual_seed(seed)
    x = torch.stack([dec.ideal_words[0][a] + dec.ideal_words[1][o] for a, o in labels_idx])
    return x + noise * torch.randn(x.shape, generator=g, dtype=torch.float64)


def test_zero_shot_recovers_planted_labels(tiny, tmp_path):
    cs = concept_set_from_dict(SET)
    emb = embed_concept_set(tiny, cs, layers=False)
    idx = [(a, o) for a in range(3) for o in range(2)] * 2
    images = _planted_images(emb, idx)
    labels = pd.DataFrame({"image": [f"im{i}.jpg" for i in range(len(idx))],
                           "colour": [cs.factors[0].values[a] for a, _ in idx],
                           "object": [cs.factors[1].values[o] for _, o in idx]})
    acc, pred = zero_shot_tables(images, labels, emb, model_kind="model")
    iw = acc[acc["method"] == "ideal_words"].set_index("target")["accuracy"]
    assert iw.to_dict() == {"pair": 1.0, "colour": 1.0, "object": 1.0}
    assert set(acc["method"]) == {"ideal_words", "pair_prompts", "real_words"}
    assert (pred["ideal_words:colour"] == labels["colour"]).all()
    # debiasing: debiased class vectors are the plain mean over the other factor's prompts
    deb = debias_tables(emb, "object", images, labels)
    assert {"cos_plain_vs_debiased", "accuracy_debiased", "worst_group_debiased"} <= set(deb["kind"])
    # file round trip with ids, reordered labels
    np.savez(tmp_path / "img.npz", embeddings=images.numpy(), ids=np.array(labels["image"], dtype=str))
    labels.iloc[::-1].to_csv(tmp_path / "labels.csv", index=False)
    emb_file, ids = load_image_embeddings(tmp_path / "img.npz")
    df = read_labels(tmp_path / "labels.csv", cs, image_ids=ids)
    assert df["image"].tolist() == labels["image"].tolist()


def test_label_errors(tmp_path):
    cs = concept_set_from_dict(SET)
    p = tmp_path / "l.csv"
    pd.DataFrame({"image": ["a", "b"], "colour": ["red", "pink"], "object": ["car", "cup"]}).to_csv(p, index=False)
    with pytest.raises(LabelError, match=r"'pink'.*not in concept set"):
        read_labels(p, cs)
    pd.DataFrame({"image": ["a", "b"], "colour": ["red", "blue"], "object": ["car", "cup"]}).to_csv(p, index=False)
    with pytest.raises(LabelError, match="has 2 rows but there are 3 image embeddings"):
        read_labels(p, cs, n_images=3)
    with pytest.raises(LabelError, match="1 image\\(s\\) without a label.*1 label\\(s\\) without an image"):
        read_labels(p, cs, image_ids=["a", "c"])
    pd.DataFrame({"image": ["a"], "colour": ["red"]}).to_csv(p, index=False)
    with pytest.raises(LabelError, match=r"lacks column\(s\) \['object'\]"):
        read_labels(p, cs)
    with pytest.raises(LabelError, match="not found"):
        load_image_embeddings(tmp_path / "none.npy")
    np.save(tmp_path / "bad.npy", np.zeros(3))
    with pytest.raises(LabelError, match=r"\[n_images, d\]"):
        load_image_embeddings(tmp_path / "bad.npy")


def test_zero_shot_predictions_equal_plain_loop(tiny):
    from probes.ideal_words.uses import zero_shot_predictions

    cs = concept_set_from_dict(SET)
    emb = embed_concept_set(tiny, cs, layers=False)
    images = torch.randn(9, 32, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    preds = zero_shot_predictions(images, emb)
    dec = decompose(emb.final)
    x = images / images.norm(dim=-1, keepdim=True)
    for n in range(9):
        best_iw = max(((a, o) for a in range(3) for o in range(2)),
                      key=lambda z: float(x[n] @ dec.approx[z]))  # <x, u~_z>: u_0 does not change the ranking
        best_pair = max(((a, o) for a in range(3) for o in range(2)), key=lambda z: float(x[n] @ emb.final[z]))
        best_rw = max(((a, o) for a in range(3) for o in range(2)),
                      key=lambda z: float(x[n] @ (emb.single_words[0][z[0]] + emb.single_words[1][z[1]])))
        assert tuple(preds["ideal_words"][n]) == best_iw
        assert tuple(preds["pair_prompts"][n]) == best_pair
        assert tuple(preds["real_words"][n]) == best_rw
