"""``--method atp`` of interp.trace and interp.ablate on the tiny model: AtP effects are written
where the exact ones would be, ``--atp-check N`` adds a fidelity table and report section, bad
combinations are one line and exit code 2 with nothing written."""

from __future__ import annotations

import json

import pytest

from interp.cli import ablate, trace
from interp.cli.common import run_cli
from interp.runs.rundir import read_csv


def test_trace_atp_writes_estimates_and_a_fidelity_table(tmp_path):
    out = tmp_path / "trace"
    argv = ["--task", "existence", "--model", "tiny", "--target", "text", "--limit", "3", "--method", "atp",
            "--atp-check", "2", "--out", str(out), "--no-progress", "--no-figures"]
    assert run_cli(trace.main, argv) == 0
    assert json.loads((out / "config.json").read_text())["settings"]["method"] == "atp"
    fid = read_csv(out / "atp_fidelity.csv")
    assert fid["layer"].astype(str).tolist() == ["all", "0", "1", "2"]  # tiny: states 0..2
    assert fid["spearman"].between(-1, 1).all() and (fid["n_cells"] > 0).all()
    assert "## AtP fidelity (--atp-check 2)" in (out / "report.md").read_text()
    assert len(read_csv(out / "cells.csv")) > 0


def test_ablate_atp_writes_estimates_and_a_fidelity_table(tmp_path):
    out = tmp_path / "ablate"
    argv = ["--model", "tiny", "--pretrained", "none", "--target", "text", "--limit", "3", "--method", "atp",
            "--atp-check", "2", "--out", str(out)]
    assert run_cli(ablate.main, argv) == 0
    settings = json.loads((out / "config.json").read_text())["settings"]
    assert settings["method"] == "mean" and settings["estimate"] == "atp"
    fid = read_csv(out / "atp_fidelity.csv")
    assert fid["layer"].astype(str).tolist() == ["all", "0", "1"] and fid["n"].tolist() == [8, 4, 4]
    assert "## AtP fidelity (--atp-check 2)" in (out / "report.md").read_text()


@pytest.mark.parametrize("tool,extra,message", [
    ("trace", ["--atp-check", "2"], "needs --method atp"),
    ("trace", ["--method", "atp", "--window", "2"], "drop --window 2"),
    ("ablate", ["--atp-check", "1"], "needs --method atp"),
    ("ablate", ["--method", "atp", "--site", "result"], "drop --site result"),
])
def test_bad_atp_options_fail_with_one_line(tmp_path, capsys, tool, extra, message):
    out = tmp_path / "bad"
    if tool == "trace":
        argv = ["--task", "existence", "--model", "tiny", "--target", "text", "--out", str(out), *extra]
        code = run_cli(trace.main, argv)
    else:
        argv = ["--model", "tiny", "--pretrained", "none", "--target", "text", "--out", str(out), *extra]
        code = run_cli(ablate.main, argv)
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1
    assert not out.exists()
