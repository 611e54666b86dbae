"""``python -m interp.trace`` end to end on the tiny model: files, resume, bad input."""

from __future__ import annotations

import json

import pytest
import torch

import interp.tracing.sweep as sweep_module
from interp.cli.common import run_cli
from interp.data.negation import load_existence_pairs
from interp.data.image_cache import save_precomputed_embeddings
from interp.runs.rundir import read_csv
from interp.cli.trace import main

TINY_D_EMBED = 32
EXPECTED_FILES = [
    "config.json", "cells.csv", "items.csv", "roles_all.csv", "roles_by_side.csv", "roles_by_segment_side.csv",
    "layers.csv", "invariants.csv", "exclusions.csv", "figures/heatmap_caption.png", "figures/heatmap_foil.png",
    "figures/heatmap_all.png", "report.md",
]


@pytest.fixture(scope="module")
def embeddings_file(tmp_path_factory):
    """Synthetic image embeddings (random, seeded) for every existence image, as a .npz."""
    files = sorted({p.image_file for p in load_existence_pairs().pairs})
    emb = torch.randn(len(files), TINY_D_EMBED, generator=torch.Generator().manual_seed(0))
    path = tmp_path_factory.mktemp("emb") / "images.npz"
    save_precomputed_embeddings(path, files, emb)
    return path


def _base_args(out, *extra):
    return ["--task", "existence", "--model", "tiny", "--out", str(out), "--no-progress", *extra]


def test_image_run_writes_every_report_file(tmp_path, embeddings_file):
    out = tmp_path / "run"
    assert main(_base_args(out, "--image-embeddings", str(embeddings_file), "--limit", "6", "--batch-size", "4")) == 0
    # --limit 6 keeps the first 6 items in file order: all negation-in-caption, so no foil heatmap
    for name in EXPECTED_FILES:
        assert (out / name).is_file() == (name != "figures/heatmap_foil.png"), name
    cells = read_csv(out / "cells.csv")
    items = read_csv(out / "items.csv")
    assert len(items) == 6 and set(cells.item_id) == set(items.item_id)
    assert len(cells) == sum(3 * n for n in items.length)  # tiny: 2 layers -> states 0..2, x positions
    assert set(items.segment) <= {"correct", "ambiguous", "incorrect"} and items.d.notna().all()
    inv = read_csv(out / "invariants.csv")
    assert inv.holds_exactly.all() and (inv.max_abs_deviation == 0).all()
    report = (out / "report.md").read_text()
    for fact in ("tiny", "random", "n = 6", "pairwise accuracy", "490", "Sanity invariants", "heatmap_caption.png"):
        assert fact in report, fact
    config = json.loads((out / "config.json").read_text())
    assert config["settings"]["target"] == "image" and len(config["settings"]["weights_fingerprint"]) == 64
    assert config["versions"]["torch"]
    excluded = read_csv(out / "exclusions.csv")
    assert (excluded.stage == "--limit").sum() == 490 - 6 and (excluded.stage == "valid set / minimal pair rule").sum() == 44


def test_segment_filter_and_text_mode_report(tmp_path, embeddings_file):
    out = tmp_path / "seg"
    assert main(_base_args(out, "--image-embeddings", str(embeddings_file), "--segment", "ambiguous",
                           "--limit", "3", "--no-figures")) == 0
    assert set(read_csv(out / "items.csv").segment) == {"ambiguous"}
    assert "segment filter" in set(read_csv(out / "exclusions.csv").stage)
    text = tmp_path / "text"
    assert main(_base_args(text, "--target", "text", "--limit", "2", "--no-figures", "--mode", "noise", "--samples", "2")) == 0
    report = (text / "report.md").read_text()
    assert "undefined for the text target" in report and "pairwise accuracy" not in report
    assert "2 seeded draws" in report
    assert not (text / "roles_by_segment_side.csv").exists()


def test_killed_run_resumes_to_identical_tables(tmp_path, embeddings_file, monkeypatch):
    args = ("--image-embeddings", str(embeddings_file), "--limit", "7", "--batch-size", "2", "--no-figures")
    assert main(_base_args(tmp_path / "whole", *args)) == 0

    real = sweep_module.patched_scores
    calls = {"n": 0}

    def dies_on_third_chunk(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(sweep_module, "patched_scores", dies_on_third_chunk)
    with pytest.raises(KeyboardInterrupt):
        main(_base_args(tmp_path / "resumed", *args))
    assert len(list((tmp_path / "resumed" / "items").glob("*.csv"))) == 4  # two chunks of 2 survived
    monkeypatch.setattr(sweep_module, "patched_scores", real)
    assert main(_base_args(tmp_path / "resumed", *args)) == 0
    for name in ("cells.csv", "items.csv", "roles_by_side.csv", "roles_by_segment_side.csv", "layers.csv"):
        assert (tmp_path / "whole" / name).read_bytes() == (tmp_path / "resumed" / name).read_bytes(), name
    assert "3 items traced" in (tmp_path / "resumed" / "report.md").read_text()  # 7 - 4 finished before the kill


@pytest.mark.parametrize("extra,message", [
    ((), "no target: pass --images DIR"),
    (("--target", "text", "--segment", "correct"), "--segment correct needs images"),
    (("--images", "/nonexistent-dir"), "is not a folder"),
    (("--target", "text", "--image-embeddings", "x.npz"), "drop --images/--image-embeddings or --target text"),
])
def test_bad_target_arguments_fail_with_one_clear_line(tmp_path, capsys, extra, message):
    assert run_cli(main, _base_args(tmp_path / "bad", *extra)) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "bad").exists()  # nothing half-written


def test_out_with_other_settings_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_base_args(out, "--target", "text", "--limit", "1", "--no-figures")) == 0
    assert run_cli(main, _base_args(out, "--target", "text", "--limit", "1", "--kind", "mlp")) == 2
    err = capsys.readouterr().err
    assert "different settings" in err and "kind: 'resid' -> 'mlp'" in err and "new --out" in err
    assert main(_base_args(out, "--target", "text", "--limit", "2", "--no-figures")) == 0  # a larger --limit resumes
    assert len(read_csv(out / "items.csv")) == 2


def test_minilm_with_images_fails_clearly(tmp_path, capsys, embeddings_file):
    argv = ["--task", "existence", "--model", "all-MiniLM-L6-v2", "--image-embeddings", str(embeddings_file),
            "--out", str(tmp_path / "m")]
    assert run_cli(main, argv) == 2
    err = capsys.readouterr().err
    assert "is not a CLIP text tower" in err and "use --target text" in err
    assert not (tmp_path / "m").exists()
