"""Run directories: settings check, atomic per-item table, exact float round trip, resume."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from interp.runs.rundir import (
    ItemTable,
    RunDir,
    RunDirError,
    RunSettingsMismatch,
    default_run_dir,
    read_csv,
    write_csv,
)


def _rows(item_id: str, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"item_id": item_id, "layer": [0, 1, 2], "effect": rng.standard_normal(3) / 3})


def test_config_records_settings_and_versions(tmp_path):
    run = RunDir(tmp_path / "r", "trace", {"model": "tiny", "seed": 0, "roles": ("a", "b")}, info={"limit": 3})
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    assert config["tool"] == "trace"
    assert config["settings"] == {"model": "tiny", "seed": 0, "roles": ["a", "b"]}
    assert config["info"] == {"limit": 3}
    assert config["versions"]["torch"] is not None and config["versions"]["python"]
    assert not run.resumed


def test_same_settings_resume_and_different_settings_are_refused(tmp_path):
    RunDir(tmp_path, "trace", {"model": "tiny", "seed": 0}, info={"limit": 3})
    again = RunDir(tmp_path, "trace", {"model": "tiny", "seed": 0}, info={"limit": 9})  # info may change
    assert again.resumed
    with pytest.raises(RunSettingsMismatch, match=r"seed: 0 -> 1.*new --out"):
        RunDir(tmp_path, "trace", {"model": "tiny", "seed": 1})
    with pytest.raises(RunSettingsMismatch, match="run of 'trace', not 'ablate'"):
        RunDir(tmp_path, "ablate", {"model": "tiny", "seed": 0})


def test_out_that_is_a_file_or_foreign_folder_is_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunDirError, match="not a directory"):
        RunDir(tmp_path / "file", "trace", {})
    (tmp_path / "other" / "items").mkdir(parents=True)
    with pytest.raises(RunDirError, match="no config.json"):
        RunDir(tmp_path / "other", "trace", {})


def test_item_table_round_trips_floats_exactly_and_keeps_order(tmp_path):
    table = ItemTable(tmp_path / "items")
    ids = ["007", "a/b c", "3"]  # leading zeros and unsafe characters must survive
    expected = {i: _rows(i, k) for k, i in enumerate(ids)}
    for i in reversed(ids):
        table.write(i, expected[i])
    assert table.done() == set(ids)
    got = table.read(order=ids)
    pd.testing.assert_frame_equal(got, pd.concat([expected[i] for i in ids], ignore_index=True), check_exact=True)
    assert table.read(order=["3"])["item_id"].tolist() == ["3"] * 3


def test_item_table_ignores_temporary_files_of_a_killed_write(tmp_path):
    table = ItemTable(tmp_path)
    table.write("x", _rows("x", 0))
    (tmp_path / ".y-123.csv.abc.tmp").write_text("item_id,layer\ny,0\n")  # what a kill mid-write leaves
    assert table.done() == {"x"}
    assert set(table.read()["item_id"]) == {"x"}


def test_item_table_rejects_rows_of_another_item(tmp_path):
    with pytest.raises(ValueError, match="other item ids"):
        ItemTable(tmp_path).write("x", _rows("y", 0))


def test_write_csv_is_exact_and_default_dir_is_safe(tmp_path):
    frame = pd.DataFrame({"v": [0.1 + 0.2, 1 / 3, np.nan, -1e-300]})
    write_csv(frame, tmp_path / "t.csv")
    pd.testing.assert_frame_equal(read_csv(tmp_path / "t.csv"), frame, check_exact=True)
    assert default_run_dir("trace", "ViT-B-32/openai", "x").as_posix() == "results/trace/ViT-B-32_openai/x"
