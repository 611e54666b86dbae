"""The run contract, one parametrised test over every command that writes a run directory.

For each command: a first run writes config.json (arguments, settings with seed, versions, complete)
and report.md; the same settings again resume (sweeps) or do nothing (one-shot commands); other
settings are refused naming the difference; --overwrite replaces the run; a folder holding foreign
files is never written into; a live lock refuses a second writer; stale .tmp files are removed on
resume; bad arguments fail before any folder exists; and a real SIGINT (delivered to a subprocess)
leaves a resumable run or nothing, with a message that says which.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml

from interp.cli.common import run_cli

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--model", "tiny", "--pretrained", "none"]


@dataclass(frozen=True)
class Command:
    name: str  # config.json "tool"
    module: str  # python -m name
    cli_module: str  # module holding main(argv)
    args: tuple[str, ...]  # fast arguments (inputs are filled in from the fixture)
    resumable: bool


# The commands on the run contract (interp.runs.rundir.RunDir). A resumable command's fast arguments
# make exactly 3 items (analyses.alignment: one per section).
COMMANDS = [
    Command("trace", "interp.trace", "interp.cli.trace",
            ("--task", "existence", *TINY, "--target", "text", "--limit", "3", "--batch-size", "1", "--no-figures"), True),
    Command("ablate", "interp.ablate", "interp.cli.ablate",
            (*TINY, "--target", "text", "--limit", "3", "--batch-size", "1", "--components", "mlp"), True),
    Command("data", "interp.data", "interp.cli.data", (*TINY, "--limit", "5"), False),
    Command("analyses.alignment", "analyses.alignment", "analyses.cli.alignment",
            ("--x", "{x_npz}", "--y", "{y_npz}", "--sections", "cka,layers,alignment", "--permutations", "5",
             "--folds", "3", "--csls-k", "5"), True),
    Command("analyses.extract", "analyses.extract", "analyses.cli.extract",
            ("--images", "{images}", "--captions", "{captions}", *TINY, "--batch-size", "2"), False),
    Command("image", "interp.image", "interp.cli.image",
            ("--task", "existence", "--images", "{scenes}", *TINY, "--limit", "1", "--no-figures"), False),
    # probes.linear's 3 items: the pooled read-out at the tiny model's states 0, 1, 2
    Command("probes.linear", "probes.linear", "probes.cli.linear",
            ("--task", "existence", *TINY, "--limit", "8", "--folds", "2", "--roles", "pooled", "--batch-size", "4"),
            True),
    Command("probes.ideal_words", "probes.ideal_words", "probes.cli.ideal_words",
            (*TINY, "--concepts", "{concepts}", "--idioms", "none", "--batch-size", "4"), False),
]
IDS = [c.name for c in COMMANDS]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, str]:
    from PIL import Image

    folder = tmp_path_factory.mktemp("inputs")
    concepts = folder / "mini.yaml"
    concepts.write_text(yaml.safe_dump({
        "name": "mini", "template": "a photo of a {colour} {object}",
        "factors": [{"name": "colour", "values": ["red", "blue"]}, {"name": "object", "values": ["car", "cup"]}],
        "single_templates": {"colour": "a photo of a {colour} object", "object": "a photo of a {object}"}}))
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(folder / f"im{i}.png")
    captions = folder / "captions.csv"
    captions.write_text("image,caption\nim0.png,a red car\nim1.png,a blue cup\nim0.png,a car\nim1.png,a cup\n")
    from analyses.io import save_embeddings
    from analyses.synthetic import synthetic_pair

    x, y = synthetic_pair(40, n_layers=2)
    x_npz, y_npz = save_embeddings(folder / "x.npz", x), save_embeddings(folder / "y.npz", y)
    # drawn scenes under the names of the first VALSE existence items' images (interp.image)
    from interp.data.valse import load_piece
    from interp.vision.synthetic import write_scenes

    scenes = folder / "scenes"
    write_scenes(scenes, {item.image_file: k % 2 == 0 for k, item in enumerate(load_piece("existence")[:2])}, size=64)
    return {"concepts": str(concepts), "images": str(folder), "captions": str(captions), "x_npz": str(x_npz),
            "y_npz": str(y_npz), "scenes": str(scenes)}


def _argv(command: Command, inputs: dict[str, str], out: Path, *extra: str) -> list[str]:
    return [a.format(**inputs) for a in command.args] + ["--out", str(out), "--no-progress", *extra]


def _run(command: Command, argv: list[str]) -> int:
    return run_cli(importlib.import_module(command.cli_module).main, argv)


def _config(out: Path) -> dict:
    return json.loads((out / "config.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("command", COMMANDS, ids=IDS)
def test_run_contract(command, inputs, tmp_path, capsys):
    out = tmp_path / "run"
    assert _run(command, _argv(command, inputs, out)) == 0
    config = _config(out)
    assert config["tool"] == command.name and config["complete"] is True
    assert config["settings"]["seed"] == 0 and config["arguments"]["out"] == str(out)
    assert config["versions"]["torch"] and config["versions"]["python"]
    assert (out / "report.md").is_file() and not (out / ".lock").exists()
    report_stamp = (out / "report.md").stat().st_mtime_ns

    # the same settings: a sweep resumes (every item already done), a one-shot run does nothing;
    # a temporary file a killed writer left is removed either way
    (out / ".stray.csv.x1y2.tmp").write_text("half")
    assert _run(command, _argv(command, inputs, out)) == 0
    assert not (out / ".stray.csv.x1y2.tmp").exists()
    if command.resumable:
        assert len(list((out / "items").glob("*.csv"))) == 3
    else:
        assert (out / "report.md").stat().st_mtime_ns == report_stamp  # not rewritten
    capsys.readouterr()

    # other settings are refused, naming the difference; nothing in the run changes
    assert _run(command, _argv(command, inputs, out, "--seed", "1")) == 2
    err = capsys.readouterr().err
    assert "different settings" in err and "seed: 0 -> 1" in err and "Traceback" not in err
    assert _config(out)["settings"]["seed"] == 0

    # --overwrite replaces the run
    assert _run(command, _argv(command, inputs, out, "--seed", "1", "--overwrite")) == 0
    assert _config(out)["settings"]["seed"] == 1 and _config(out)["complete"] is True

    # a folder holding files this command did not make is never written into
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    assert _run(command, _argv(command, inputs, foreign)) == 2
    assert "did not make (notes.txt)" in capsys.readouterr().err
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]

    # a live writer's lock refuses a second writer (our parent process stands in for the live writer)
    (out / ".lock").write_text(json.dumps({"pid": os.getppid(), "host": os.uname().nodename}))
    assert _run(command, _argv(command, inputs, out, "--seed", "1")) == 2
    assert f"being written by another process (pid {os.getppid()})" in capsys.readouterr().err
    (out / ".lock").unlink()

    # bad arguments fail before any folder exists, so the corrected command is not refused
    fresh = tmp_path / "fresh"
    assert _run(command, _argv(command, inputs, fresh, "--threads", "0")) == 2
    assert "--threads 0 must be at least 1" in capsys.readouterr().err
    assert not fresh.exists()


# Runs the command as `python -m`, delivering a real SIGINT to itself right after the first item
# (sweeps) or the first table (one-shot commands) is written.
_INTERRUPTING_RUNNER = """
import runpy, signal, sys
from interp.runs import rundir
name = "write" if sys.argv[1] == "item" else "write_table"
owner = rundir.ItemTable if sys.argv[1] == "item" else rundir.RunDir
original = getattr(owner, name)
def interrupting(self, *args, **kwargs):
    result = original(self, *args, **kwargs)
    signal.raise_signal(signal.SIGINT)
    return result
setattr(owner, name, interrupting)
module = sys.argv[2]
sys.argv = [module, *sys.argv[3:]]
runpy.run_module(module, run_name="__main__", alter_sys=True)
"""


@pytest.mark.slow
@pytest.mark.parametrize("command", COMMANDS, ids=IDS)
def test_sigint_leaves_a_resumable_run_or_nothing_and_says_which(command, inputs, tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "MPLBACKEND": "Agg"}
    proc = subprocess.run(
        [sys.executable, "-c", _INTERRUPTING_RUNNER, "item" if command.resumable else "table", command.module,
         *_argv(command, inputs, out)],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=600,
    )
    assert proc.returncode == 130, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert "Traceback" not in proc.stderr
    if command.resumable:
        assert last == f"interrupted: kept the resumable run in {out} (1 items finished); rerun the same command to resume"
        assert len(list((out / "items").glob("*.csv"))) == 1 and not (out / ".lock").exists()
        assert _config(out)["complete"] is False
        assert _run(command, _argv(command, inputs, out)) == 0  # the rerun resumes and finishes
        assert len(list((out / "items").glob("*.csv"))) == 3 and _config(out)["complete"] is True
    else:
        assert last == f"interrupted: nothing kept: removed the unfinished run in {out}"
        assert not out.exists()
