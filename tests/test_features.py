"""Dataset-feature table and correlations: planted correlations recovered, the "There are no people."
subset, embeddings/token counts equal to plain loops, text-mode refusal, files written whole."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from interp import load_text_encoder
from interp.models.compat import import_open_clip
from interp.data.negation import load_existence_pairs
from interp.data.features import (
    NO_PEOPLE_SENTENCE,
    compute_feature_table,
    feature_correlations,
    feature_table,
    write_feature_tables,
)

REPO_VALSE = Path(__file__).resolve().parents[1] / "datasets" / "valse"


@pytest.fixture(scope="module")
def pairs():
    return load_existence_pairs(data_dir=REPO_VALSE).pairs


def _plain_pearson(x, y):
    x, y = np.asarray(x, float), np.asarray(y, float)
    xc, yc = x - x.mean(), y - y.mean()
    return float((xc * yc).sum() / np.sqrt((xc**2).sum() * (yc**2).sum()))


def _planted(pairs, seed=0):
    """Embeddings with a chosen caption-foil cosine per item, and d planted from it."""
    rng = np.random.default_rng(seed)
    n = len(pairs)
    cos = rng.uniform(0.91, 0.99, n)
    e_caption = np.zeros((n, 4))
    e_caption[:, 0] = 2.0
    e_foil = np.stack([cos, np.sqrt(1 - cos**2), np.zeros(n), np.zeros(n)], 1) * 3.0
    side = np.array([p.negation_side for p in pairs])
    no_people = np.array([p.negated == NO_PEOPLE_SENTENCE for p in pairs])
    # foil side: d falls with similarity; caption side: only the no-people items carry a signal
    d = np.where(side == "foil", -40 * cos, 0.0) + rng.normal(0, 0.2, n)
    d = d + np.where(no_people & (side == "caption"), 5.0, 0.0)
    n_tokens = rng.integers(7, 17, n)
    return cos, torch.tensor(e_caption), torch.tensor(e_foil), n_tokens, d


def test_table_columns_and_no_people_items(pairs):
    cos, e_c, e_f, n_tokens, d = _planted(pairs)
    table = feature_table(pairs, e_c, e_f, n_tokens, d)
    assert len(table) == 490
    np.testing.assert_allclose(table["text_similarity"], cos, atol=1e-12)
    assert table["n_tokens"].tolist() == list(n_tokens)
    caption_side = table[table["negation_side"] == "caption"]
    assert len(caption_side) == 250 and int(caption_side["no_people"].sum()) == 44
    assert (caption_side.loc[caption_side["no_people"], "caption"] == "There are no people.").all()
    # three foil-negation items have the foil "There are no people." (counted from the raw texts)
    foil_side = table[table["negation_side"] == "foil"]
    assert int(foil_side["no_people"].sum()) == sum(
        p.original_foil == "There are no people." for p in pairs if p.negation_side == "foil") == 3


def test_correlations_recover_planted_signal(pairs):
    cos, e_c, e_f, n_tokens, d = _planted(pairs)
    corr = feature_correlations(feature_table(pairs, e_c, e_f, n_tokens, d)).set_index(
        ["negation_side", "subset", "feature"]).sort_index()
    side = np.array([p.negation_side for p in pairs])
    no_people = np.array([p.negated == NO_PEOPLE_SENTENCE for p in pairs])
    for key_side, subset in [("foil", "all"), ("caption", "all"), ("caption", "without_no_people"), ("all", "all")]:
        mask = np.ones(len(pairs), bool) if key_side == "all" else side == key_side
        if subset == "without_no_people":
            mask &= ~no_people
        row = corr.loc[(key_side, subset, "text_similarity")]
        assert row["n"] == mask.sum()
        assert row["pearson_r"] == pytest.approx(_plain_pearson(cos[mask], d[mask]), abs=1e-10)
        row = corr.loc[(key_side, subset, "n_tokens")]
        assert row["pearson_r"] == pytest.approx(_plain_pearson(n_tokens[mask], d[mask]), abs=1e-10)
    assert corr.loc[("foil", "all", "text_similarity"), "pearson_r"] < -0.9  # planted: strong negative
    assert corr.loc[("caption", "without_no_people"), "n"].tolist() == [206, 206]


def test_constant_column_gives_nan_and_text_mode_refuses(pairs):
    cos, e_c, e_f, _, d = _planted(pairs)
    table = feature_table(pairs, e_c, e_f, [9] * len(pairs), d)
    corr = feature_correlations(table)
    assert corr[corr["feature"] == "n_tokens"]["pearson_r"].isna().all()
    text_mode = feature_table(pairs, e_c, e_f, [9] * len(pairs), None)
    assert text_mode["d"].isna().all()
    with pytest.raises(ValueError, match="text target"):
        feature_correlations(text_mode)
    with pytest.raises(ValueError, match="one caption/foil embedding"):
        feature_table(pairs[:3], e_c, e_f, [9, 9, 9])


def test_compute_feature_table_equals_a_loop(pairs):
    model = load_text_encoder("tiny")
    sample = pairs[:4] + pairs[-4:]
    table = compute_feature_table(model, sample, d=np.arange(8.0), batch_size=3)
    open_clip = import_open_clip()
    with torch.no_grad():
        for i, p in enumerate(sample):
            e = model([p.caption, p.foil])
            assert table["text_similarity"][i] == pytest.approx(float(F.cosine_similarity(e[:1], e[1:])), abs=1e-6)
            assert table["n_tokens"][i] == int((open_clip.tokenize([p.caption])[0] != 0).sum())
    assert table["d"].tolist() == list(np.arange(8.0))


def test_write_feature_tables(pairs, tmp_path):
    cos, e_c, e_f, n_tokens, d = _planted(pairs)
    table = feature_table(pairs, e_c, e_f, n_tokens, d)
    corr = feature_correlations(table)
    written = write_feature_tables(tmp_path / "out", table, corr, {"model": "planted", "target": "image"})
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(p.name for p in written) == [
        "feature_correlations.csv", "features.csv", "features_config.json"]
    back = pd.read_csv(tmp_path / "out" / "features.csv")
    np.testing.assert_allclose(back["d"], d)
    meta = json.loads((tmp_path / "out" / "features_config.json").read_text())
    assert meta["model"] == "planted" and meta["n_items"] == 490 and "torch" in meta["versions"]
