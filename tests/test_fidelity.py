"""The seed papers' defaults: negator attention's max pooling of "further", ROME's noise calibration,
and the preset record every run writes (interp.presets)."""

from __future__ import annotations

import json

import numpy as np
import pytest

import interp
from interp.cli.trace import main as trace_main
from interp.data.negation import ROLES, align_pairs, load_existence_pairs
from interp.heads.attention import AttentionInputError, negator_attention
from interp.presets import deviations, preset_record, preset_sentence
from interp.tracing.noise import calibration_token_ids, embedding_std


@pytest.fixture(scope="module")
def tiny():
    return interp.load_text_encoder("tiny", seed=1)


@pytest.fixture(scope="module")
def aligned(tiny):
    items, rejected = align_pairs(load_existence_pairs().pairs[:40], tiny.tokenizer)
    assert not rejected
    assert any(len(a.positions("further")) >= 2 for a in items)  # several further tokens: pooling matters
    return items


def test_further_under_max_equals_a_loop(tiny, aligned):
    result = negator_attention(tiny, aligned, progress=False)
    for layer in range(tiny.cfg.n_layers):
        table = result.role_table(layer)  # default: the study's max pooling
        heads = [c for c in table.columns if c.startswith("head")]
        for h, column in enumerate(heads):
            per_item = []
            for i, a in enumerate(aligned):
                values = [float(result.diff[i, layer, h, p]) for p in range(a.length) if a.roles[p] == "further"]
                if values:
                    per_item.append(max(values))
            assert table.loc["further", column] == pytest.approx(sum(per_item) / len(per_item), abs=1e-6)
        assert table.loc["further", "n_values"] == sum(1 for a in aligned if a.positions("further"))
        assert (table["pool"] == "max").all()
    mean_table = result.role_table(0, further_pool="mean")
    max_table = result.role_table(0)
    single = [r for r in ROLES if r != "further"]  # one position per item: both pools agree
    np.testing.assert_allclose(mean_table.loc[single, heads].to_numpy(float), max_table.loc[single, heads].to_numpy(float),
                               atol=1e-7, equal_nan=True)
    assert not np.allclose(mean_table.loc["further", heads].to_numpy(float), max_table.loc["further", heads].to_numpy(float))
    with pytest.raises(AttentionInputError, match="further_pool"):
        result.role_table(0, further_pool="median")


def test_noise_std_is_the_std_of_the_corrupted_tokens_embeddings(tiny, aligned):
    roles = ("negator", "first_subject")
    # by hand: the rows of W_E for the negated sentences' tokens at those roles, one pooled std
    rows = [tiny.embed.W_E[t].detach().double().numpy()
            for a in aligned for t, role in zip(a.tokens_negated, a.roles) if role in roles]
    expected = np.std(np.stack(rows), ddof=1)
    assert embedding_std(tiny, calibration_token_ids(aligned, roles, "corrupted")) == pytest.approx(expected, rel=1e-12)
    everything = [tiny.embed.W_E[t].detach().double().numpy()
                  for a in aligned for ids in (a.tokens_negated, a.tokens_affirmative) for t in ids]
    assert embedding_std(tiny, calibration_token_ids(aligned, roles, "all_tokens")) == pytest.approx(
        np.std(np.stack(everything), ddof=1), rel=1e-12)
    with pytest.raises(ValueError, match="calibration"):
        calibration_token_ids(aligned, roles, "subject")


def test_trace_noise_mode_records_rome_calibration_and_preset(tmp_path):
    out = tmp_path / "noise"
    args = ["--task", "existence", "--model", "tiny", "--out", str(out), "--no-progress", "--target", "text",
            "--limit", "2", "--no-figures", "--mode", "noise", "--samples", "2"]
    assert trace_main(args) == 0
    config = json.loads((out / "config.json").read_text())
    settings = config.get("settings", config)
    model = interp.load_text_encoder("tiny")
    items, _ = align_pairs(load_existence_pairs(valid_only=True).pairs, model.tokenizer)
    negators = [t for a in items for t, role in zip(a.tokens_negated, a.roles) if role == "negator"]
    expected = float(np.std(model.embed.W_E[negators].detach().double().numpy(), ddof=1))
    assert settings["noise_calibration"] == "corrupted"
    assert settings["embedding_std"] == pytest.approx(expected, rel=1e-12)
    assert settings["noise_std"] == pytest.approx(3.0 * expected, rel=1e-12)
    assert settings["preset"] == "paper" and settings["deviations"] == []
    assert "ROME's rule" in (out / "report.md").read_text()
    other = tmp_path / "all_tokens"
    assert trace_main([*args[:5], str(other), *args[6:], "--noise-calibration", "all_tokens"]) == 0
    settings = json.loads((other / "config.json").read_text())
    settings = settings.get("settings", settings)
    assert settings["preset"] == "custom"
    assert settings["deviations"] == ["noise_tracing.noise_calibration: all_tokens (paper: corrupted)"]
    assert "all_tokens (paper: corrupted)" in (other / "report.md").read_text()


def test_preset_record_lists_each_deviation():
    assert preset_record({"matching": {"kernel": "rbf", "protocol": "fixed_base"}}) == {"preset": "paper", "deviations": []}
    record = preset_record({"matching": {"kernel": "linear"}, "negator_attention": {"further_pool": "mean"}})
    assert record["preset"] == "custom"
    assert record["deviations"] == ["matching.kernel: linear (paper: rbf)",
                                    "negator_attention.further_pool: mean (paper: max)"]
    assert "matching.kernel: linear (paper: rbf)" in preset_sentence(record)
    assert deviations("assignment_map", {"temperature": 0.05}) == ["temperature: 0.05 (paper: 0.01)"]


def test_minilm_trace_report_speaks_bert(tmp_path):
    """A WordPiece, post-LN encoder: [CLS]/[SEP] in the report and figures, no CLIP ln_final on the axis."""
    from interp.runs.labels import relabel_roles, residual_axis_text, role_names

    out = tmp_path / "minilm"
    assert trace_main(["--task", "existence", "--model", "all-MiniLM-L6-v2", "--target", "text", "--limit", "2",
                       "--no-figures", "--no-progress", "--out", str(out)]) == 0
    report = (out / "report.md").read_text()
    assert "[CLS]" in report and "[SEP]" in report and "post-LN" in report
    assert "ln_final" not in report and "| SOT" not in report
    model = interp.load_text_encoder("all-MiniLM-L6-v2")
    assert role_names(model.cfg) == {"SOT": "[CLS]", "EOT": "[SEP]"}
    clip = interp.load_text_encoder("tiny")
    assert role_names(clip.cfg) == {} and "before ln_final" in residual_axis_text(clip.cfg)
    import pandas as pd

    table = pd.DataFrame({"x": [1, 2]}, index=["SOT", "EOT"])
    assert list(relabel_roles(table, model.cfg).index) == ["[CLS]", "[SEP]"]
    assert list(relabel_roles(table, clip.cfg).index) == ["SOT", "EOT"]


@pytest.mark.parametrize("extra,message", [
    (["--target", "text", "--preprocess", "hf"], "--preprocess hf only applies to images"),
    (["--target", "text", "--noise-calibration", "all_tokens"], "only applies to --mode noise"),
])
def test_trace_refuses_flags_it_would_ignore(tmp_path, capsys, extra, message):
    from interp.cli.common import run_cli

    out = tmp_path / "bad"
    assert run_cli(trace_main, ["--task", "existence", "--model", "tiny", "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and not out.exists()


def test_ablate_refuses_flags_it_would_ignore(tmp_path, capsys):
    from interp.cli.ablate import main as ablate_main
    from interp.cli.common import run_cli

    base = ["--model", "tiny", "--pretrained", "none", "--target", "text", "--limit", "3", "--out", str(tmp_path / "x")]
    assert run_cli(ablate_main, [*base, "--preprocess", "open_clip"]) == 2
    assert "--preprocess open_clip only applies to images" in capsys.readouterr().err
    assert run_cli(ablate_main, [*base, "--attention-items", "segment"]) == 2
    assert "--attention-items segment needs --segment" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("flag,expected", [([], "open_clip"), (["--preprocess", "hf"], "hf")])
def test_trace_images_use_the_chosen_pipeline_and_record_it(tmp_path, monkeypatch, flag, expected):
    """--images: the pipeline reaches the image cache (its key) and config.json; open_clip weights default to
    open_clip's pipeline, listed as a deviation from the study's HF preprocessing."""
    import torch

    import interp.data.image_cache as image_cache

    seen = {}

    def fake_embed_images(model, model_name, checkpoint, folder, files, *, preprocess, **kwargs):
        seen["pipeline"] = preprocess.pipeline
        return torch.randn(len(files), 32, generator=torch.Generator().manual_seed(0))

    monkeypatch.setattr(image_cache, "embed_images", fake_embed_images)
    images = tmp_path / "images"
    images.mkdir()
    out = tmp_path / "run"
    assert trace_main(["--task", "existence", "--model", "tiny", "--out", str(out), "--no-progress", "--no-figures",
                       "--images", str(images), "--limit", "1", *flag]) == 0
    assert seen["pipeline"] == expected
    settings = json.loads((out / "config.json").read_text())
    settings = settings.get("settings", settings)
    assert settings["preprocess"] == expected
    deviation = "negation_scoring.preprocess: open_clip (paper: hf)"
    assert (deviation in settings["deviations"]) == (expected == "open_clip")
    assert f"image preprocessing: `{expected}`" in (out / "report.md").read_text()


def test_data_records_which_items_make_the_pairs_as_its_preset(tmp_path):
    """interp.data scores nothing; its one paper setting is the item set (the study's valid items)."""
    from interp.cli.data import main as data_main

    default, every = tmp_path / "valid", tmp_path / "all"
    assert data_main(["--model", "tiny", "--pretrained", "none", "--limit", "3", "--out", str(default)]) == 0
    settings = json.loads((default / "config.json").read_text())["settings"]
    assert settings["preset"] == "paper" and settings["deviations"] == []
    assert "Preset: `paper`" in (default / "report.md").read_text()
    assert data_main(["--model", "tiny", "--pretrained", "none", "--limit", "3", "--all-items", "--out", str(every)]) == 0
    settings = json.loads((every / "config.json").read_text())["settings"]
    assert settings["preset"] == "custom" and settings["deviations"] == ["negation_pairs.items: all (paper: valid)"]
    assert "negation_pairs.items: all (paper: valid)" in (every / "report.md").read_text()
