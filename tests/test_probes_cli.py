"""Both probes CLIs end to end on the tiny random CLIP: run directories, tables that agree with the
library functions, the random-init baseline beside a (stand-in) trained model, the preset each run
names, a resumed probes.linear run equal to an uninterrupted one, one-line errors. (The run contract
itself, shared with every command, is tested in test_run_contract.py.)"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

import interp
from probes.cli import ideal_words as ideal_words_report, linear as linear_report
from probes.concepts import concept_set_from_dict
from probes.cli.ideal_words import random_baseline
from probes.ideal_words.analysis import embed_concept_set, is_random_init
from probes.ideal_words.decomposition import compositionality_metrics

SET = {"name": "mini", "template": "a photo of a {colour} {object}",
       "factors": [{"name": "colour", "values": ["red", "blue", "green"]},
                   {"name": "object", "values": ["car", "cup"]}],
       "single_templates": {"colour": "a photo of a {colour} object", "object": "a photo of a {object}"}}


@pytest.fixture(scope="module")
def concept_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("sets") / "mini.yaml"
    p.write_text(yaml.safe_dump(SET))
    return p


@pytest.fixture(scope="module")
def stand_in_trained():
    """The tiny tower relabelled as if it had trained weights, so the CLI runs its baseline branch."""
    model = interp.load_text_encoder("tiny", None)
    model.cfg.pretrained = "stand-in for trained weights (test)"
    return model


def test_random_baseline_is_fresh_weights(stand_in_trained):
    base = random_baseline(stand_in_trained, seed=3)
    assert is_random_init(base) and not is_random_init(stand_in_trained)
    assert not torch.equal(base.embed.W_E, stand_in_trained.embed.W_E)
    assert base.cfg.n_layers == stand_in_trained.cfg.n_layers


@pytest.mark.slow
def test_ideal_words_cli(tmp_path, concept_file, stand_in_trained, monkeypatch):
    monkeypatch.setattr(ideal_words_report, "load_model_from_args", lambda args: stand_in_trained)
    cs = concept_set_from_dict(SET)
    # planted image embeddings: one per combination, equal to the combination's own text embedding
    emb = embed_concept_set(stand_in_trained, cs, layers=False)
    ids = [f"im{i}.jpg" for i in range(6)]
    np.savez(tmp_path / "img.npz", embeddings=emb.final.reshape(6, -1).numpy(), ids=np.array(ids, dtype=str))
    pd.DataFrame({"image": ids, "colour": [c for c, _ in cs.combinations()],
                  "object": [o for _, o in cs.combinations()]}).to_csv(tmp_path / "labels.csv", index=False)
    out = tmp_path / "iw"
    code = ideal_words_report.cli(["--model", "tiny", "--concepts", str(concept_file), "--out", str(out),
                                   "--image-embeddings", str(tmp_path / "img.npz"), "--labels",
                                   str(tmp_path / "labels.csv"), "--debias-class", "object"])
    assert code == 0
    for name in ("config.json", "metrics.csv", "residuals.csv", "ideal_words.csv", "idioms.csv",
                 "zero_shot.csv", "zero_shot_predictions.csv", "debias.csv", "report.md",
                 "figures/iw_by_layer.png", "figures/metrics_final.png", "figures/idioms.png"):
        assert (out / name).is_file(), name
    m = pd.read_csv(out / "metrics.csv")
    assert set(m["model_kind"]) == {"model", "random-init baseline"}
    assert sorted(m["layer"].unique().tolist()) == ["0", "1", "2", "final"]
    final = m[(m["model_kind"] == "model") & (m["layer"] == "final")].iloc[0]
    assert final["IW"] == pytest.approx(compositionality_metrics(emb.final)["IW"], rel=1e-9)
    # the residual table is the data behind IW
    r = pd.read_csv(out / "residuals.csv")
    mean_res = r[(r["model_kind"] == "model") & (r["layer"] == "final")]["residual"].mean()
    assert mean_res == pytest.approx(final["IW"], rel=1e-9)
    zs = pd.read_csv(out / "zero_shot.csv").set_index(["method", "target"])
    assert zs.loc[("pair_prompts", "pair"), "accuracy"] == 1.0  # each image is its own pair prompt
    report = (out / "report.md").read_text()
    assert "stand-in for trained weights (test)" in report and "random-init" in report
    config = json.loads((out / "config.json").read_text())
    assert config["settings"]["concept_sets"][0]["name"] == "mini"
    # the default weights are the paper's: the run says so in config.json and report.md
    assert config["settings"]["preset"] == "paper" and config["settings"]["deviations"] == []
    assert "Preset: `paper`" in report


@pytest.mark.slow
def test_ideal_words_cli_alpha_and_errors(tmp_path, concept_file, capsys):
    out = tmp_path / "iw"
    args = ["--model", "tiny", "--pretrained", "none", "--concepts", str(concept_file), "--idioms", "none",
            "--no-layers", "--out", str(out)]
    assert ideal_words_report.cli(args + ["--alpha", "object:cup=1"]) == 0
    iw = pd.read_csv(out / "ideal_words.csv")
    cup = iw[(iw["factor"] == "object") & (iw["value"] == "cup")].iloc[0]
    assert cup["alpha"] == 1.0 and cup["norm"] == pytest.approx(0.0, abs=1e-12)
    report = (out / "report.md").read_text()
    assert "random weights" in report
    # non-uniform weights depart from the paper's default: named in config.json and report.md
    deviation = "ideal_words.alpha: object:cup=1 (paper: uniform)"
    settings = json.loads((out / "config.json").read_text())["settings"]
    assert settings["preset"] == "custom" and settings["deviations"] == [deviation]
    assert f"Preset: `custom`, deviating from the seed paper in: {deviation}" in report
    # the same folder with other weights is refused, naming the difference; nothing half-written on errors
    capsys.readouterr()
    assert ideal_words_report.cli(args) == 2
    err = capsys.readouterr().err
    assert "different settings" in err and "alpha: ['object:cup=1'] -> []" in err
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**SET, "template": "a photo of a {colour} thing"}))
    assert ideal_words_report.cli(["--model", "tiny", "--pretrained", "none", "--concepts", str(bad),
                                   "--out", str(tmp_path / "x")]) == 2
    assert "no placeholder for factor(s) ['object']" in capsys.readouterr().err
    assert ideal_words_report.cli(args[:-1] + [str(tmp_path / "y"), "--labels", "l.csv"]) == 2
    assert "without --image-embeddings" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


@pytest.mark.slow
def test_ideal_words_rerun_after_editing_the_concept_file_is_refused(tmp_path, capsys):
    """The settings hold the concept set's contents, not only its path: an edited file is another run."""
    concepts = tmp_path / "mini.yaml"
    concepts.write_text(yaml.safe_dump(SET))
    out = tmp_path / "iw"
    args = ["--model", "tiny", "--pretrained", "none", "--concepts", str(concepts), "--idioms", "none",
            "--no-layers", "--out", str(out)]
    assert ideal_words_report.cli(args) == 0
    before = (out / "metrics.csv").read_bytes()
    assert ideal_words_report.cli(args) == 0  # unchanged: a no-op
    edited = {**SET, "factors": [SET["factors"][0], {"name": "object", "values": ["car", "bus"]}]}
    concepts.write_text(yaml.safe_dump(edited))
    capsys.readouterr()
    assert ideal_words_report.cli(args) == 2
    err = capsys.readouterr().err
    assert "different settings" in err and "concept_sets" in err
    assert (out / "metrics.csv").read_bytes() == before


@pytest.mark.slow
def test_linear_cli(tmp_path, capsys):
    out = tmp_path / "lin"
    args = ["--task", "existence", "--model", "tiny", "--pretrained", "none", "--limit", "16", "--folds", "4",
            "--layers", "0,2", "--roles", "negator,period,pooled", "--out", str(out)]
    assert linear_report.cli(args) == 0
    probe = pd.read_csv(out / "probe.csv")
    assert len(probe) == 6 and set(probe["layer"]) == {0, 2}
    # the negator token differs between N and A: readable at layer 0; EOT before any block is not
    first = probe.set_index(["role", "layer"])
    assert first.loc[("negator", 0), "accuracy"] == 1.0
    assert first.loc[("pooled", 0), "accuracy"] == 0.5
    dirs = np.load(out / "directions.npz")
    assert set(dirs.files) == {f"{r}/L{l}" for r in ("negator", "period", "pooled") for l in (0, 2)}
    causal = pd.read_csv(out / "causal.csv")
    assert len(causal) == 2 * 32 and set(causal["direction"]) == {"probe", "random"}
    assert (causal["layer"] == 2).all()  # pooled is only selective after the blocks
    report = (out / "report.md").read_text()
    assert "random weights" in report and "Preset: `paper`" in report
    settings = json.loads((out / "config.json").read_text())["settings"]
    assert settings["preset"] == "paper" and settings["deviations"] == []
    assert (out / "figures/probe_by_layer.png").is_file() and (out / "figures/causal.png").is_file()
    # the per-word-type control departs from the spec's shuffled labels: named in config.json and report.md
    typed = tmp_path / "typed"
    assert linear_report.cli(args[:-4] + ["--roles", "first_subject", "--causal-role", "first_subject",
                                          "--control", "type", "--out", str(typed)]) == 0
    deviation = "linear_probe.control: type (paper: permuted)"
    assert json.loads((typed / "config.json").read_text())["settings"]["deviations"] == [deviation]
    assert deviation in (typed / "report.md").read_text()
    assert set(pd.read_csv(typed / "probe.csv")["control"]) == {"type"}
    assert linear_report.cli(args[:-1] + [str(tmp_path / "b"), "--causal-role", "EOT"]) == 2
    assert "is not among --roles" in capsys.readouterr().err
    assert linear_report.cli(args[:-1] + [str(tmp_path / "c"), "--layers", "0,9"]) == 2
    assert "outside 0..2" in capsys.readouterr().err
    assert linear_report.cli(args[:-1] + [str(tmp_path / "d"), "--control", "type"]) == 2
    assert "--control type needs token positions" in capsys.readouterr().err
    assert not any((tmp_path / name).exists() for name in "bcd")


@pytest.mark.slow
def test_linear_resumed_after_an_interruption_equals_an_uninterrupted_run(tmp_path, monkeypatch):
    """A run stopped after two finished fits keeps them, and the rerun writes the same bytes as a run
    that was never stopped (the kept fits are read back, the others computed)."""
    from interp.cli.common import run_cli
    from interp.runs.rundir import ItemTable

    args = ["--task", "existence", "--model", "tiny", "--pretrained", "none", "--limit", "12", "--folds", "3",
            "--roles", "negator,pooled", "--no-progress"]
    assert linear_report.cli(args + ["--out", str(tmp_path / "whole")]) == 0
    real_write, written = ItemTable.write, []

    def write_then_stop(self, item_id, rows):
        if len(written) == 2:
            raise KeyboardInterrupt
        written.append(item_id)
        return real_write(self, item_id, rows)

    monkeypatch.setattr(ItemTable, "write", write_then_stop)
    out = tmp_path / "resumed"
    assert run_cli(linear_report.main, args + ["--out", str(out)]) == 130
    monkeypatch.setattr(ItemTable, "write", real_write)
    assert len(list((out / "items").glob("*.csv"))) == 2 and not (out / "probe.csv").exists()
    assert linear_report.cli(args + ["--out", str(out)]) == 0
    assert len(list((out / "items").glob("*.csv"))) == 2 * 3  # 2 roles x states 0..2
    for name in ("probe.csv", "directions.csv", "directions.npz", "causal.csv", "rejected.csv"):
        assert (out / name).read_bytes() == (tmp_path / "whole" / name).read_bytes(), name


@pytest.mark.slow
def test_reports_on_offline_minilm(tmp_path, concept_file):
    """The real trained offline encoder on a small concept set, with its random-init baseline."""
    out = tmp_path / "iw"
    assert ideal_words_report.cli(["--model", "all-MiniLM-L6-v2", "--concepts", str(concept_file),
                                   "--idioms", "none", "--out", str(out)]) == 0
    first = (out / "report.md").read_text().splitlines()[2]
    assert "all-MiniLM-L6-v2" in first and "packaged" in first and "random-init" in first
    m = pd.read_csv(out / "metrics.csv")
    final = m[m["layer"] == "final"].set_index("model_kind")
    # measured property of these weights: training spreads the prompts out and makes them less
    # decomposable than the near-linear std-0.02 random init
    assert final.loc["model", "Avg"] > 5 * final.loc["random-init baseline", "Avg"]
    assert final.loc["model", "IW"] > 5 * final.loc["random-init baseline", "IW"]
    assert sorted(m["layer"].unique().tolist()) == ["0", "1", "2", "3", "4", "5", "6", "final"]

    lin = tmp_path / "lin"
    assert linear_report.cli(["--task", "existence", "--model", "all-MiniLM-L6-v2", "--limit", "16",
                              "--folds", "4", "--layers", "0,6", "--roles", "first_subject,pooled",
                              "--causal-layer", "6", "--out", str(lin)]) == 0
    probe = pd.read_csv(lin / "probe.csv").set_index(["role", "layer"])
    # mean pooling already contains the negator token at layer 0; the subject token's embedding does not
    assert probe.loc[("pooled", 0), "accuracy"] == 1.0
    assert probe.loc[("first_subject", 0), "accuracy"] == 0.5
    assert "all-MiniLM-L6-v2" in (lin / "report.md").read_text().splitlines()[2]


@pytest.mark.slow
def test_ideal_words_cli_with_image_folder(tmp_path, concept_file, capsys):
    from PIL import Image

    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    names = [f"im{i}.png" for i in range(4)]
    for n in names:
        Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(folder / n)
    labels = pd.DataFrame({"image": names, "colour": ["red", "blue", "green", "red"],
                           "object": ["car", "cup", "car", "cup"]})
    labels.to_csv(tmp_path / "labels.csv", index=False)
    base = ["--model", "tiny", "--pretrained", "none", "--concepts", str(concept_file), "--idioms", "none",
            "--no-layers", "--images", str(folder), "--labels", str(tmp_path / "labels.csv")]
    assert ideal_words_report.cli(base + ["--out", str(tmp_path / "ok")]) == 0
    zs = pd.read_csv(tmp_path / "ok" / "zero_shot.csv")
    assert set(zs["n_images"]) == {4} and set(zs["target"]) == {"pair", "colour", "object"}
    (folder / names[0]).unlink()
    assert ideal_words_report.cli(base + ["--out", str(tmp_path / "missing")]) == 2
    assert "1 of 4 image files are missing" in capsys.readouterr().err
    assert not (tmp_path / "missing").exists()
