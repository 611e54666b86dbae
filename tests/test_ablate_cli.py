"""End to end: python -m interp.ablate on the tiny model writes tables, figures and the report;
resumes; refuses other settings; bad input is one clear line and exit code 2."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import pytest

from interp.cli.ablate import main
from interp.cli.common import run_cli
from interp.runs.rundir import read_csv

BASE = ["--model", "tiny", "--pretrained", "none", "--target", "text", "--limit", "5", "--batch-size", "2"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("ablate") / "run"
    assert run_cli(main, [*BASE, "--components", "head,mlp", "--out", str(out)]) == 0
    return out


def test_writes_tables_figures_report(run_dir):
    for name in ("config.json", "ablation_summary.csv", "negator_attention.csv", "negator_attention_roles.csv",
                 "direct_effects.csv", "figures/head_importance.png", "figures/negator_attention.png", "figures/per_layer.png",
                 "figures/direct_effects.png", "report.md"):
        assert (run_dir / name).is_file(), name
    items = read_csv(run_dir / "ablation_summary.csv")
    heads = items[(items.kind == "head") & (items.group == "all")]
    assert len(heads) == 2 * 4 and set(heads.n) == {5}
    report = (run_dir / "report.md").read_text()
    assert "random-init" in report and "say nothing about CLIP" in report
    assert "accuracy and segments are undefined" in report  # text target: no accuracy numbers
    assert "n = 5" in report
    # invariants are reported with measured values, and they hold
    for line in report.splitlines():
        if "max |" in line:
            assert float(line.rsplit("=", 1)[1]) < 1e-5, line
    # the summary is drawn from the per-item table
    per_item = read_csv(next((run_dir / "items").glob("*.csv")))
    assert set(per_item.columns) >= {"item_id", "component", "role", "d_clean", "d_ablated", "effect"}
    np.testing.assert_allclose(per_item.effect, per_item.d_ablated - per_item.d_clean, atol=1e-6)  # float32 values


def test_resume_skips_done_items_and_gives_same_tables(run_dir, capsys):
    before = read_csv(run_dir / "ablation_summary.csv")
    files = sorted((run_dir / "items").glob("*.csv"))
    files[0].unlink()  # as if the run had been killed before this item
    stamps = {f: f.stat().st_mtime_ns for f in files[1:]}
    assert run_cli(main, [*BASE, "--components", "head,mlp", "--out", str(run_dir)]) == 0
    after = read_csv(run_dir / "ablation_summary.csv")
    assert files[0].is_file()  # the missing item was redone
    assert all(f.stat().st_mtime_ns == t for f, t in stamps.items())  # finished items were skipped
    np.testing.assert_allclose(after.effect, before.effect, atol=1e-7)
    # other settings into the same directory are refused, naming the difference
    capsys.readouterr()
    assert run_cli(main, [*BASE, "--method", "zero", "--out", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert "different settings" in err and "method" in err


@pytest.mark.parametrize("args,message", [
    (["--model", "tiny", "--pretrained", "none", "--limit", "2"], "--target text"),
    ([*BASE, "--method", "shuffle"], "does not exist: choose one of zero, mean, resample"),
    ([*BASE, "--layers", "5"], "valid layers are 0..1"),
    ([*BASE, "--segment", "correct"], "needs images"),
])
def test_bad_input_is_one_clear_line(args, message, tmp_path, capsys):
    assert run_cli(main, [*args, "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_image_embeddings_target_reports_accuracy_and_segments(tmp_path):
    from interp.data.negation import load_existence_pairs
    from interp.data.image_cache import save_precomputed_embeddings

    files = sorted({p.image_file for p in load_existence_pairs().pairs[:6]})
    emb = torch.randn(len(files), 32, generator=torch.Generator().manual_seed(0))
    path = save_precomputed_embeddings(tmp_path / "img.npz", files, emb)
    args = ["--model", "tiny", "--pretrained", "none", "--image-embeddings", str(path), "--limit", "6",
            "--method", "resample", "--layers", "1"]
    assert run_cli(main, [*args, "--out", str(tmp_path / "run")]) == 0
    summary = read_csv(tmp_path / "run" / "ablation_summary.csv")
    assert {"accuracy_clean", "accuracy_ablated", "accuracy_change"} <= set(summary.columns)
    rows = summary[summary.group == "all"]
    np.testing.assert_allclose(rows.accuracy_change, rows.accuracy_ablated - rows.accuracy_clean, atol=1e-12)
    report = (tmp_path / "run" / "report.md").read_text()
    assert "Clean accuracy" in report and "undefined" not in report
    assert (tmp_path / "run" / "negator_attention_d_correlation.csv").is_file()
    # --segment keeps only that segment's items and lists the others with their d
    per_item = pd.concat([read_csv(f) for f in (tmp_path / "run" / "items").glob("*.csv")]).drop_duplicates("item_id")
    n_ambiguous = int(((per_item.d_clean >= -1) & (per_item.d_clean < 1)).sum())
    code = run_cli(main, [*args, "--segment", "ambiguous", "--out", str(tmp_path / "seg")])
    if n_ambiguous == 0:
        assert code == 2
    else:
        assert code == 0
        seg = (tmp_path / "seg" / "report.md").read_text()
        assert f"{6 - n_ambiguous} outside --segment ambiguous" in seg and f"n = {n_ambiguous}**" in seg
        # the negator attention still covers every item (the study's scope), and the report says so
        att = read_csv(tmp_path / "seg" / "negator_attention.csv")
        assert set(att[att.group == "all"].n) == {len(per_item)}
        assert "--segment restricts the ablation only" in seg and "Preset: `" in seg
