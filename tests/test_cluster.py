"""The Dask execution layer on a real LocalCluster of worker processes (no mocks).

One ``local:2`` cluster (2 worker processes, 1 thread each), started by the code under test, is shared
by the module: the tests pass its scheduler address as ``--cluster``, so workers start and import
torch once. Every command's tables on the cluster are compared byte for byte with an in-process run;
a worker SIGKILLed while it holds a task, a run resumed on another backend and a multi-run sweep
give the same bytes again.
"""

from __future__ import annotations

import filecmp
import os
import signal
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

distributed = pytest.importorskip("distributed", reason="the 'cluster' extra is not installed")

from interp.cli.ablate import main as ablate_main  # noqa: E402
from interp.cli.common import run_cli  # noqa: E402
from interp.cli.sweep import main as sweep_main  # noqa: E402
from interp.cli.trace import main as trace_main  # noqa: E402
from interp.models.loading import create_open_clip_model  # noqa: E402
from interp.runs import cluster as cluster_module  # noqa: E402
from interp.runs.cluster import (  # noqa: E402
    ClusterError, ClusterSpec, ModelRecipe, ModelTask, WorkerModelError, open_executor, parse_cluster,
)
from interp.runs.rundir import ItemTable  # noqa: E402
from probes.cli.linear import main as probe_main  # noqa: E402

cloudpickle = pytest.importorskip("cloudpickle")
cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import this test module

TRACE = ["--task", "existence", "--model", "tiny", "--pretrained", "none", "--target", "text", "--limit", "5",
         "--batch-size", "1", "--no-progress", "--no-figures"]
ABLATE = ["--model", "tiny", "--pretrained", "none", "--target", "text", "--limit", "4", "--batch-size", "2",
          "--components", "head,mlp"]
PROBE = ["--task", "existence", "--model", "tiny", "--pretrained", "none", "--limit", "8", "--folds", "2",
         "--roles", "negator,pooled"]


def _tables(run_dir: Path) -> dict[str, bytes]:
    """Every CSV under a run directory (aggregates and per-item files), by relative path."""
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*.csv"))}


def assert_same_tables(a: Path, b: Path) -> None:
    ta, tb = _tables(a), _tables(b)
    assert ta and sorted(ta) == sorted(tb)
    different = [name for name in ta if ta[name] != tb[name]]
    assert not different, f"tables differ: {different}"


@pytest.fixture(scope="module")
def cluster():
    """The ``--cluster local:2`` cluster (2 worker processes x 1 thread), started once by the code under
    test; yields its scheduler address, which the tests pass as ``--cluster`` so the workers (and the
    models they keep) serve every test of the module."""
    with open_executor("local:2", threads=2) as executor:
        assert executor.spec == ClusterSpec("local", workers=2)
        info = executor.client.scheduler_info()
        assert len(info["workers"]) == 2 and {w["nthreads"] for w in info["workers"].values()} == {1}
        yield executor.client.scheduler.address


@pytest.fixture(scope="module")
def trace_reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("trace") / "in-process"
    assert trace_main([*TRACE, "--out", str(out)]) == 0
    return out


# ---------------------------------------------------------------------------------------------- the spec
def test_parse_cluster_accepts_the_three_backends_and_names_bad_values():
    assert parse_cluster(None) == parse_cluster("none") == ClusterSpec("none")
    assert parse_cluster("local:3") == ClusterSpec("local", workers=3)
    assert parse_cluster("tcp://10.0.0.1:8786") == ClusterSpec("address", address="tcp://10.0.0.1:8786")
    for bad in ("local:0", "local:x", "8786", "http://host:1", "tcp://"):
        with pytest.raises(ClusterError, match="--cluster"):
            parse_cluster(bad)


# ---------------------------------------------------------------------------------------------- byte identity
def test_trace_on_cluster_writes_the_in_process_tables(tmp_path, cluster, trace_reference):
    out = tmp_path / "cluster"
    assert trace_main([*TRACE, "--out", str(out), "--cluster", cluster]) == 0
    assert len(list((out / "items").glob("*.csv"))) == 5
    assert_same_tables(trace_reference, out)


def test_ablate_on_cluster_writes_the_in_process_tables(tmp_path, cluster):
    assert ablate_main([*ABLATE, "--out", str(tmp_path / "a")]) == 0
    assert ablate_main([*ABLATE, "--out", str(tmp_path / "b"), "--cluster", cluster]) == 0
    assert_same_tables(tmp_path / "a", tmp_path / "b")


def test_probes_linear_on_cluster_writes_the_in_process_tables(tmp_path, cluster):
    assert probe_main([*PROBE, "--out", str(tmp_path / "a")]) == 0
    assert probe_main([*PROBE, "--out", str(tmp_path / "b"), "--cluster", cluster]) == 0
    assert_same_tables(tmp_path / "a", tmp_path / "b")
    assert filecmp.cmp(tmp_path / "a" / "directions.npz", tmp_path / "b" / "directions.npz", shallow=False)
    probe = pd.read_csv(tmp_path / "a" / "probe.csv")
    assert len(probe) == 2 * 3  # one task per (role, layer): 2 roles x states 0..2 of the tiny model


# ---------------------------------------------------------------------------------------------- faults and resume
class KillOnTask(distributed.WorkerPlugin):
    """SIGKILLs the worker process the first time it starts executing a task whose key has ``prefix``."""

    name = "kill-on-task"

    def __init__(self, prefix: str, marker: str):
        self.prefix, self.marker = prefix, marker

    def transition(self, key, start, finish, **kwargs):
        if finish != "executing" or not str(key).startswith(self.prefix):
            return
        try:  # O_EXCL: exactly one worker (the first to start such a task) wins and dies
            fd = os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        os.kill(os.getpid(), signal.SIGKILL)


def test_a_worker_killed_while_holding_a_task_changes_no_byte(tmp_path, cluster, trace_reference):
    marker = tmp_path / "killed-pid"
    with distributed.Client(cluster) as client:
        pids = set(client.run(os.getpid).values())
        client.register_plugin(KillOnTask("trace-chunk", str(marker)))
        try:
            out = tmp_path / "run"
            assert trace_main([*TRACE, "--out", str(out), "--cluster", cluster]) == 0
        finally:
            client.unregister_worker_plugin(KillOnTask.name)
    assert marker.is_file() and int(marker.read_text()) in pids  # a worker of the cluster really died mid-task
    assert_same_tables(trace_reference, out)


def test_run_stopped_in_process_resumes_on_the_cluster(tmp_path, cluster, trace_reference, monkeypatch):
    out = tmp_path / "run"
    real_write = ItemTable.write
    written = []

    def write_then_stop(self, item_id, rows):  # the in-process run dies after its second item
        if len(written) == 2:
            raise KeyboardInterrupt
        written.append(item_id)
        return real_write(self, item_id, rows)

    monkeypatch.setattr(ItemTable, "write", write_then_stop)
    assert run_cli(trace_main, [*TRACE, "--out", str(out)]) == 130
    monkeypatch.setattr(ItemTable, "write", real_write)
    assert len(list((out / "items").glob("*.csv"))) == 2 and not (out / "cells.csv").exists()
    assert trace_main([*TRACE, "--out", str(out), "--cluster", cluster]) == 0
    assert_same_tables(trace_reference, out)


# ---------------------------------------------------------------------------------------------- the sweep
def test_sweep_runs_every_model_and_command_then_skips_finished_runs(tmp_path, cluster):
    checkpoint = tmp_path / "tiny-seed7.pt"
    torch.save(create_open_clip_model("tiny", None, seed=7).state_dict(), checkpoint)
    plan = tmp_path / "plan.yaml"
    plan.write_text(
        f"root: {tmp_path / 'sweep'}\ncluster: {cluster}\n"
        f"models:\n  - {{name: tiny, pretrained: none}}\n  - {{name: tiny, pretrained: {checkpoint}}}\n"
        "tasks: [existence]\n"
        "commands:\n  trace: {target: text, limit: 2, no_figures: true, no_progress: true}\n"
        "  probes.linear: {limit: 6, folds: 2, roles: pooled}\n"
    )
    assert sweep_main([str(plan)]) == 0
    summary = pd.read_csv(tmp_path / "sweep" / "summary.csv")
    assert len(summary) == 4 and set(summary.status) == {"finished"}
    assert sorted(summary.command.unique()) == ["probes.linear", "trace"] and summary.pretrained.nunique() == 2
    for report in summary.report:
        assert Path(report).is_file()
    # the two models are different weights, so their traces differ
    traces = summary[summary.command == "trace"].run_dir.tolist()
    assert _tables(Path(traces[0]))["cells.csv"] != _tables(Path(traces[1]))["cells.csv"]

    before = {run: _tables(Path(d)) for run, d in zip(summary.run, summary.run_dir)}
    assert sweep_main([str(plan), "--cluster", "none"]) == 0  # a finished run is finished on any backend
    again = pd.read_csv(tmp_path / "sweep" / "summary.csv")
    assert set(again.status) == {"skipped (finished)"}
    assert before == {run: _tables(Path(d)) for run, d in zip(again.run, again.run_dir)}


# ---------------------------------------------------------------------------------------------- bad input
def test_unreachable_scheduler_is_one_line_and_nothing_written(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cluster_module, "CONNECT_TIMEOUT_S", 1.0)
    out = tmp_path / "run"
    assert run_cli(trace_main, [*TRACE, "--out", str(out), "--cluster", "tcp://127.0.0.1:9"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --cluster tcp://127.0.0.1:9: no Dask scheduler answered") and "\n" not in err
    assert not out.exists()


def test_missing_dask_names_the_extra(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed -> ImportError
    assert run_cli(probe_main, [*PROBE, "--out", str(tmp_path / "p"), "--cluster", "local:2"]) == 2
    err = capsys.readouterr().err.strip()
    assert "clip-interp[cluster]" in err and "\n" not in err
    assert not (tmp_path / "p").exists()


@pytest.mark.parametrize("text, message", [
    ("models: [{name: tiny}]\ncommands: {trace: {}}\nbogus: 1\n", "unknown key(s) bogus"),
    ("models: [{name: tiny}]\ncommands: {paint: {}}\n", "unknown command 'paint'"),
    ("models: [{name: tiny, weights: x}]\ncommands: {trace: {}}\n", "unknown key(s) weights"),
    ("models: [{name: tiny}]\ncommands: {trace: {colour: red}}\n", "unknown flag 'colour'"),
    ("models: [{name: tiny}]\ncommands: {trace: {out: x}}\n", "is set by the sweep"),
])
def test_bad_plan_is_one_line_and_nothing_written(tmp_path, capsys, text, message):
    plan = tmp_path / "plan.yaml"
    plan.write_text(text)
    assert run_cli(sweep_main, [str(plan), "--out", str(tmp_path / "root")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
    assert not (tmp_path / "root").exists()


def _double(model, payload):
    return 2 * payload


def test_worker_that_cannot_load_the_model_shows_its_error(cluster):
    recipe = ModelRecipe("tiny", "/nowhere/tiny.pt")
    with open_executor(cluster) as executor:
        with pytest.raises(WorkerModelError, match="a worker could not load the model 'tiny'.*no published weights"):
            list(executor.map(ModelTask(recipe, _double), [1, 2]))
