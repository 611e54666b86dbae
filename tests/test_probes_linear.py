"""Linear probes: grouped folds, control labels, parity with plain loops, and a planted encoder whose
negation label is written along a known direction at layer 2 (checked by probe and causal edit)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from interp.models.config import TextEncoderConfig
from interp.models.text_encoder import HookedTextEncoder
from interp.data.scoring import score, text_target_directions
from interp.models.tokenization import CLIPTokenizer
from probes.linear.probe import (
    ProbeError,
    causal_check,
    collect_role_features,
    control_labels,
    cv_accuracy,
    fit_direction,
    grouped_folds,
    probe_layers,
    role_weights,
    steer,
)

LABEL_DIM = 0  # +3 on "no", -3 on "a": the label's sign, at the slot position only
SLOT_DIM = 1  # +3 on both slot words: what the copy head's keys look for
CARRIED_DIM = 2  # the known direction the copy head writes the label into (state 2 onwards)
CONTENT = slice(4, None)


def _word_id(tok: CLIPTokenizer, word: str) -> int:
    ids = tok.encode(word)[1:-1]
    assert len(ids) == 1, word
    return ids[0]


@torch.no_grad()
def planted_encoder(d_model: int = 32, seed: int = 0) -> HookedTextEncoder:
    """3 blocks, all zero except one head in block 1 that attends (from every later query) to the
    slot token and copies its signed label (LABEL_DIM) into CARRIED_DIM. So the residual at EOT is the
    same for N and A at states 0 and 1, and differs by +-c along CARRIED_DIM at states 2 and 3.
    Content embeddings are random with zero mean per row, so LayerNorm keeps the label's sign."""
    tok = CLIPTokenizer()
    cfg = TextEncoderConfig(n_layers=3, d_model=d_model, n_heads=2, d_mlp=4 * d_model, n_ctx=77,
                            d_vocab=tok.vocab_size, d_embed=d_model, causal=True, norm="pre", pool="argmax",
                            model_name="planted-probe", pretrained="hand-built")
    model = HookedTextEncoder(cfg, tok)
    for p in model.parameters():
        p.zero_()
    g = torch.Generator().manual_seed(seed)
    n_content = d_model - 4
    content = torch.randn(cfg.d_vocab, n_content, generator=g)
    model.embed.W_E[:, CONTENT] = content - content.mean(1, keepdim=True)
    pos = 0.5 * torch.randn(cfg.n_ctx, n_content, generator=g)
    model.embed.W_pos[:, CONTENT] = pos - pos.mean(1, keepdim=True)
    for word, sign in (("no", 1.0), ("a", -1.0)):
        model.embed.W_E[_word_id(tok, word), LABEL_DIM] = 3.0 * sign
        model.embed.W_E[_word_id(tok, word), SLOT_DIM] = 3.0
    model.embed.W_E[:, 3] = -model.embed.W_E[:, :3].sum(1)  # keep every token row zero-mean
    for ln in [*(b.ln1 for b in model.blocks), *(b.ln2 for b in model.blocks), model.ln_final]:
        ln.w.fill_(1.0)
    attn = model.blocks[1].attn
    attn.b_Q[0, 0] = 40.0
    attn.W_K[0, SLOT_DIM, 0] = 1.0
    attn.W_V[0, LABEL_DIM, 0] = 1.0
    attn.W_O[0, 0, CARRIED_DIM] = 4.0
    model.W_proj.copy_(torch.eye(d_model))
    return model.eval()


NOUNS = ["dog", "cat", "car", "tree", "man", "woman", "boat", "bird", "horse", "chair", "cup", "lamp",
         "bus", "train", "kite", "clock", "bench", "truck", "sheep", "cow"]
TAILS = ["here", "in the picture", "on the old wooden table", "near the house", "in this photo of the street"]


def planted_pairs():
    texts, labels, groups = [], [], []
    for i, noun in enumerate(NOUNS):
        tail = TAILS[i % len(TAILS)]
        texts += [f"there is no {noun} {tail}.", f"there is a {noun} {tail}."]
        labels += [1, 0]
        groups += [i, i]
    return texts, np.array(labels), np.array(groups)


@pytest.fixture(scope="module")
def planted():
    model = planted_encoder()
    texts, labels, groups = planted_pairs()
    feats = collect_role_features(model, texts, {"pooled": None}, batch_size=16)["pooled"]
    return model, texts, labels, groups, feats


def test_grouped_folds_never_split_a_pair():
    groups = np.repeat(np.arange(23), 2)
    folds = grouped_folds(groups, 5, seed=3)
    assert sorted(np.concatenate(folds).tolist()) == list(range(46))
    for test in folds:
        inside = set(groups[test].tolist())
        outside = set(np.delete(groups, test).tolist())
        assert not inside & outside
    with pytest.raises(ProbeError, match="cannot make 5 folds"):
        grouped_folds(np.array([0, 0, 1, 1]), 5)


def test_control_labels_keep_balance():
    y = np.array([1, 0] * 50)
    c = control_labels(y, seed=1)
    assert c.sum() == 50 and not np.array_equal(c, y)
    types = np.repeat(np.arange(10), 10)
    ct = control_labels(y, seed=2, types=types)
    for t in range(10):  # one label per type
        assert len(set(ct[types == t].tolist())) == 1


def test_cv_accuracy_equals_sklearn_cross_val_score():
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import PredefinedSplit, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(0)
    X = rng.normal(size=(2, 60, 5))
    y = (X[0, :, 0] + rng.normal(size=60) > 0).astype(int)
    groups = np.repeat(np.arange(30), 2)
    folds = grouped_folds(groups, 4, seed=0)
    ours = cv_accuracy(torch.from_numpy(X), y, folds)
    test_fold = np.empty(60, dtype=int)
    for k, idx in enumerate(folds):
        test_fold[idx] = k
    for layer in range(2):
        ref = cross_val_score(make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)),
                              X[layer], y, cv=PredefinedSplit(test_fold))
        np.testing.assert_allclose(ours[layer], ref, atol=1e-12)


def test_role_features_equal_plain_loop(planted):
    model, texts, *_ = planted
    positions = [[2, 3] for _ in texts]
    feats = collect_role_features(model, texts, {"pooled": None, "slot+1": positions}, batch_size=7)
    for i in (0, 5, 11):
        batch = model.to_token_batch([texts[i]])
        eot = int(batch.tokens[0].argmax())
        for layer in range(model.cfg.n_layers + 1):
            resid = model(batch, stop_at_layer=layer)[0]
            torch.testing.assert_close(feats["pooled"][layer, i], resid[eot], atol=1e-5, rtol=0)
            torch.testing.assert_close(feats["slot+1"][layer, i], resid[[2, 3]].mean(0), atol=1e-5, rtol=0)
    w = role_weights([[1], [], [0, 2]], 4)
    assert w.tolist() == [[0, 1, 0, 0], [0, 0, 0, 0], [0.5, 0, 0.5, 0]]


def test_steer_equals_split_forward(planted):
    model, texts, *_ = planted
    d = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    shift = torch.linspace(-2, 2, 4, dtype=torch.float64)
    out = steer(model, texts[:4], 2, d, shift, None, batch_size=3)
    for i in range(4):
        batch = model.to_token_batch([texts[i]])
        resid = model(batch, stop_at_layer=2).clone()
        resid[0, int(batch.tokens[0].argmax())] += float(shift[i]) * d.float()
        ref = model(batch, start_at_layer=2, residual=resid)[0]
        torch.testing.assert_close(out[i], ref, atol=1e-5, rtol=0)


def test_planted_label_is_readable_from_layer_2_only(planted):
    model, texts, labels, groups, feats = planted
    # the planted facts themselves: identical EOT states within a pair before layer 2, not after
    diff = (feats[:, 0::2] - feats[:, 1::2]).norm(dim=-1)  # [layer, pair]
    assert diff[:2].max() < 1e-5 and diff[2:].min() > 1.0
    rows = probe_layers(feats, labels, groups, n_folds=5, n_controls=2, seed=0)
    sel = {r["layer"]: r["selectivity"] for r in rows}
    acc = {r["layer"]: r["accuracy"] for r in rows}
    assert acc[0] == acc[1] == 0.5  # a pair's two sentences are indistinguishable there
    assert abs(sel[0]) < 0.2 and abs(sel[1]) < 0.2
    assert acc[2] == acc[3] == 1.0
    assert sel[2] > 0.3 and sel[3] > 0.3
    # the exported direction is the planted one
    probe = fit_direction(feats[2], labels, layer=2, role="pooled")
    assert abs(float(probe.direction[CARRIED_DIM])) > 0.95
    assert probe.gap > 0


def test_causal_check_flips_the_text_target_score(planted):
    model, texts, labels, groups, feats = planted
    from probes.embeddings import encode_texts

    e = encode_texts(model, texts).final
    t = text_target_directions(e[0::2], e[1::2]).repeat_interleave(2, dim=0)  # per sample, its pair's

    def score_fn(emb):
        return score(emb, t)

    probe = fit_direction(feats[2], labels, layer=2, role="pooled")
    rows = causal_check(model, texts, labels, probe, score_fn, None, seed=0)
    by = {(r["direction"], r["sample"]): r for r in rows}
    n = len(texts)
    probe_rows = [by[("probe", i)] for i in range(n)]
    rand_rows = [by[("random", i)] for i in range(n)]
    # clean scores: N positive, A negative
    assert all((r["score_clean"] > 0) == (r["label"] == 1) for r in probe_rows)
    # removing the direction from N and adding it to A flips every score's sign
    assert all(r["sign_flipped"] for r in probe_rows)
    assert all(r["change"] < 0 for r in probe_rows if r["label"] == 1)
    assert all(r["change"] > 0 for r in probe_rows if r["label"] == 0)
    # a random direction of the same size does not
    assert sum(r["sign_flipped"] for r in rand_rows) <= n // 10
    assert np.mean([abs(r["change"]) for r in rand_rows]) < 0.25 * np.mean([abs(r["change"]) for r in probe_rows])


def test_bad_probe_inputs():
    with pytest.raises(ProbeError, match="binary"):
        probe_layers(torch.zeros(1, 4, 2), [1, 1, 1, 1], [0, 0, 1, 1], n_folds=2)
    with pytest.raises(ProbeError, match="4 samples but 3 labels"):
        probe_layers(torch.zeros(1, 4, 2), [1, 0, 1], [0, 0, 1, 1], n_folds=2)
    with pytest.raises(ProbeError, match="outside"):
        role_weights([[5]], 3)


def test_near_constant_feature_does_not_capture_the_direction():
    """A dimension constant up to rounding (seen after MiniLM's final LayerNorm) must be ignored, not
    blown up by standardisation into the whole direction."""
    rng = np.random.default_rng(0)
    y = np.array([1, 0] * 40)
    X = rng.normal(size=(80, 6))
    X[:, 1] += 2.0 * (2 * y - 1)  # the informative dimension
    X[:, 4] = 0.3 + 1e-32 * rng.normal(size=80)  # constant up to rounding
    d = fit_direction(torch.from_numpy(X), y, layer=0)
    assert abs(float(d.direction[1])) > 0.9 and abs(float(d.direction[4])) < 1e-9
    assert d.gap > 3.0
    acc = cv_accuracy(torch.from_numpy(X)[None], y, grouped_folds(np.repeat(np.arange(40), 2), 4))
    assert acc.mean() > 0.9


def test_one_task_per_layer_equals_one_call_over_all_layers():
    """probes.linear fits each (role, layer) as its own task (so a cluster can take them one by one);
    the rows and directions must be those of probe_layers / fit_direction over every layer at once."""
    from probes.linear.probe import probe_one_layer

    g = torch.Generator().manual_seed(3)
    n_layers, n, d = 3, 40, 6
    labels = np.tile([1, 0], n // 2)
    groups = np.repeat(np.arange(n // 2), 2)
    features = torch.randn(n_layers, n, d, generator=g, dtype=torch.float64)
    features[:, :, 0] += torch.as_tensor(labels, dtype=torch.float64) * torch.tensor([0.2, 1.0, 3.0]).view(-1, 1)
    layers = [0, 2, 5]  # probed residual-state numbers, not 0..n-1
    together = probe_layers(features, labels, groups, n_folds=4, C=0.5, seed=1, n_controls=2, layers=layers)
    for i, layer in enumerate(layers):
        row, direction = probe_one_layer(("negator", layer, features[i:i + 1], labels, groups, None),
                                         n_folds=4, C=0.5, seed=1, n_controls=2)
        assert row == {"role": "negator", **together[i]}
        reference = fit_direction(features[i], labels, C=0.5, layer=layer, role="negator")
        assert torch.equal(direction.direction, reference.direction) and direction.layer == layer
    assert together[2]["accuracy"] > together[0]["accuracy"]  # the planted label grows with the layer
