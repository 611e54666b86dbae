"""``python -m interp.image`` end to end on drawn images (named as VALSE's image_file), and its bad-input answers.

Every bad input ends with one line on stderr, exit code 2, and no run directory.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest

from interp.cli.image import cli
from interp.cli.image_report import FIGURE_TEXT, TABLES
from interp.data.valse import load_piece
from interp.vision.synthetic import write_scenes


@pytest.fixture(scope="module")
def items():
    return load_piece("existence")[:3]


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory, items):
    folder = tmp_path_factory.mktemp("images")
    write_scenes(folder, {item.image_file: k % 2 == 0 for k, item in enumerate(items)}, size=96)
    return folder


def _fail(capsys, argv) -> str:
    assert cli(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_end_to_end_on_tiny_writes_every_documented_file(image_dir, items, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["--task", "existence", "--images", str(image_dir), "--model", "tiny", "--pretrained", "none",
            "--limit", "2", "--out", str(out), "--no-progress", "--ablation", "mean"]
    assert cli(argv) == 0
    for name in [*TABLES, *FIGURE_TEXT, "report.md", "config.json"]:
        assert (out / name).is_file(), name
    config = json.loads((out / "config.json").read_text())
    assert config["settings"]["items"] == [item.item_id for item in items[:2]]
    assert config["versions"]["torch"]
    assert config["info"]["checks"]["max_abs_decomposition_sum_minus_d"] <= 1e-5
    tracing = pd.read_csv(out / "tracing.csv")
    assert len(tracing) == 2 * 3 * 50  # items x (layers + 1) x (class token + 7 x 7 patches)
    report = (out / "report.md").read_text()
    assert "random" in report and "say nothing about trained CLIP" in report
    # rerunning the same command into the same folder is allowed (same settings)
    assert cli(argv) == 0


def test_end_to_end_on_random_vit_b_32_writes_every_documented_file(image_dir, items, tmp_path):
    """The real-size tower (random init): the slowest test of this file, kept because sizes, patch
    grid and head counts (8 text heads, 12 image heads) differ from the tiny model's."""
    out = tmp_path / "run"
    assert cli(["--task", "existence", "--images", str(image_dir), "--model", "ViT-B-32", "--pretrained", "none",
                "--limit", "1", "--out", str(out), "--no-progress"]) == 0
    for name in [*TABLES, *FIGURE_TEXT, "report.md", "config.json"]:
        assert (out / name).is_file(), name
    config = json.loads((out / "config.json").read_text())
    assert config["settings"]["items"] == [items[0].item_id]
    assert config["info"]["checks"]["max_abs_decomposition_sum_minus_d"] <= 1e-5
    assert config["info"]["checks"]["max_abs_trace_clean_minus_d"] <= 1e-5
    tracing = pd.read_csv(out / "tracing.csv")
    assert len(tracing) == 1 * 13 * 50  # item x (12 layers + 1) x (class token + 7 x 7 patches)
    heads = pd.read_csv(out / "ablation.csv")
    assert set(heads[heads.component == "head"].layer) == set(range(12))


def test_corrupted_images_option(image_dir, items, tmp_path):
    corrupted = tmp_path / "corrupted"
    write_scenes(corrupted, {item.image_file: False for item in items}, size=96)
    out = tmp_path / "run"
    assert cli(["--task", "existence", "--images", str(image_dir), "--corrupted-images", str(corrupted),
                "--model", "tiny", "--pretrained", "none", "--limit", "1", "--out", str(out), "--no-figures",
                "--no-progress"]) == 0
    assert json.loads((out / "config.json").read_text())["settings"]["corruption"] == "images"


def test_unsupported_tower(image_dir, tmp_path, capsys):
    line = _fail(capsys, ["--task", "existence", "--images", str(image_dir), "--model", "RN50", "--pretrained", "none",
                          "--out", str(tmp_path / "run")])
    assert "ModifiedResNet" in line and "supported image towers" in line
    assert not (tmp_path / "run").exists()


def test_text_only_model(image_dir, tmp_path, capsys):
    line = _fail(capsys, ["--task", "existence", "--images", str(image_dir), "--model", "all-MiniLM-L6-v2",
                          "--out", str(tmp_path / "run")])
    assert "text-only" in line
    assert not (tmp_path / "run").exists()


def test_folder_without_any_item_image(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "unrelated.png").write_bytes(b"")
    line = _fail(capsys, ["--task", "existence", "--images", str(tmp_path / "empty"), "--model", "tiny",
                          "--pretrained", "none", "--out", str(tmp_path / "run")])
    assert "none of the" in line and "v7w_" in line
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("content", [b"\x89PNG\r\n\x1a\n-truncated", b"this is a text file, not an image\n"])
def test_corrupt_or_non_image_file(items, tmp_path, capsys, content):
    folder = tmp_path / "images"
    write_scenes(folder, {items[0].image_file: True}, size=96)
    (folder / items[1].image_file).write_bytes(content)
    line = _fail(capsys, ["--task", "existence", "--images", str(folder), "--model", "tiny", "--pretrained", "none",
                          "--limit", "2", "--out", str(tmp_path / "run")])
    assert items[1].image_file in line and "cannot be read" in line
    assert not (tmp_path / "run").exists()


def test_missing_images_folder(tmp_path, capsys):
    line = _fail(capsys, ["--task", "existence", "--images", str(tmp_path / "nope"), "--model", "tiny",
                          "--pretrained", "none", "--out", str(tmp_path / "run")])
    assert "is not a folder" in line


def test_image_trace_benchmark_runs_and_agrees(capsys):
    from interp.benchmarks.main import main

    assert main(["image-trace", "--model", "tiny", "--images", "1", "--loop-cells", "4", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "EXTRAPOLATED" in out and "speed-up" in out and "FLOP ratio (loop / engine)" in out
    diff = float(out.rsplit("max |engine - loop| on the loop's cells: ", 1)[1].split()[0])
    assert diff <= 1e-5


def test_preprocessing_and_preset_are_recorded(image_dir, tmp_path):
    """Default for open_clip weights: open_clip preprocessing, a deviation from the negation study's
    HF pipeline; --preprocess hf with ROME's noise scale is the paper preset; another noise scale is
    listed as a deviation. config.json and report.md say the same."""
    base = ["--task", "existence", "--images", str(image_dir), "--model", "tiny", "--pretrained", "none",
            "--limit", "1", "--no-figures", "--no-progress"]
    runs = {"default": [], "paper": ["--preprocess", "hf"], "noise": ["--preprocess", "hf", "--noise-factor", "2"]}
    settings, reports = {}, {}
    for name, extra in runs.items():
        out = tmp_path / name
        assert cli([*base, "--out", str(out), *extra]) == 0
        settings[name] = json.loads((out / "config.json").read_text())["settings"]
        reports[name] = (out / "report.md").read_text()
    assert settings["default"]["preprocess"] == "open_clip"
    assert settings["default"]["preset"] == "custom"
    assert settings["default"]["deviations"] == ["negation_scoring.preprocess: open_clip (paper: hf)"]
    assert settings["paper"]["preprocess"] == "hf"
    assert settings["paper"]["preset"] == "paper" and settings["paper"]["deviations"] == []
    assert settings["noise"]["deviations"] == ["noise_tracing.noise_scale: 2.0 (paper: 3.0)"]
    assert "Preset: `paper`" in reports["paper"] and "Image preprocessing: `hf`" in reports["paper"]
    assert "negation_scoring.preprocess: open_clip (paper: hf)" in reports["default"]
    assert "noise_tracing.noise_scale: 2.0 (paper: 3.0)" in reports["noise"]
