"""Thread policy: torch threads by load and cores (``--threads`` overrides); small fits on one BLAS thread."""

from __future__ import annotations

import argparse
import os

import numpy as np
import pytest
import torch
from threadpoolctl import threadpool_info, threadpool_limits

from interp.cli.common import setup_threads
from interp.errors import ClipInterpError
from interp.runs.threads import choose_threads, physical_cores


def test_requested_threads_win():
    assert choose_threads(3, cores=2, load=10.0) == (3, "--threads")
    assert choose_threads(1, cores=8, load=0.0) == (1, "--threads")


def test_bad_thread_count_is_a_user_error():
    with pytest.raises(ClipInterpError, match="--threads 0"):
        choose_threads(0)


def test_automatic_choice_follows_load_and_cores(monkeypatch):
    assert choose_threads(None, cores=2, load=0.3)[0] == 2  # idle machine: every physical core
    n, reason = choose_threads(None, cores=2, load=7.5)  # busy machine: other jobs hold the cores
    assert n == 1 and "oversubscribed" in reason
    assert choose_threads(None, cores=2, load=2.0)[0] == 1  # exactly saturated counts as busy
    assert choose_threads(None, cores=1, load=0.0)[0] == 1
    monkeypatch.setattr("interp.runs.threads.load_average", lambda: None)
    assert choose_threads(None, cores=4)[0] == 4  # no load average on this OS: the cores


def test_physical_cores_is_within_the_logical_cpus():
    assert 1 <= physical_cores() <= (os.cpu_count() or 1)


def test_setup_threads_sets_torch_and_records_the_choice():
    before = torch.get_num_threads()
    try:
        args = argparse.Namespace(threads=1)
        assert setup_threads(args) == (1, "--threads")
        assert torch.get_num_threads() == 1
        assert (args.threads_chosen, args.threads_reason) == (1, "--threads")
        auto = argparse.Namespace()  # a command without --threads: the automatic choice
        n, reason = setup_threads(auto)
        assert torch.get_num_threads() == n == auto.threads_chosen and reason == auto.threads_reason
    finally:
        torch.set_num_threads(before)


def _blas_threads() -> list[int]:
    return [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]


def test_probe_fits_run_on_one_blas_thread(monkeypatch):
    """Inside every scikit-learn fit of the linear probes, each BLAS pool has one thread, although
    the caller's pools have two."""
    from sklearn.linear_model import LogisticRegression

    from probes.linear.probe import fit_direction, probe_layers

    seen: list[list[int]] = []
    original_fit = LogisticRegression.fit

    def recording_fit(self, *args, **kwargs):
        seen.append(_blas_threads())
        return original_fit(self, *args, **kwargs)

    monkeypatch.setattr(LogisticRegression, "fit", recording_fit)
    rng = np.random.default_rng(0)
    labels = np.tile([1, 0], 20)
    features = torch.from_numpy(rng.normal(size=(2, 40, 8)) + labels[None, :, None])
    groups = np.repeat(np.arange(20), 2)
    with threadpool_limits(limits=2, user_api="blas"):
        outside = _blas_threads()
        probe_layers(features, labels, groups, n_folds=4)
        fit_direction(features[0], labels)
    assert outside and max(outside) == 2, "the test needs a BLAS pool of 2 threads outside the fits"
    assert len(seen) == 2 * 4 * 2 + 1  # (task + control) x folds x layers, + the direction fit
    assert all(threads and max(threads) == 1 for threads in seen), seen


def test_trace_records_the_thread_choice(tmp_path):
    """config.json of a trace run says how many torch threads ran and why."""
    import json

    from interp.cli.trace import main

    before = torch.get_num_threads()
    try:
        out = tmp_path / "run"
        assert main(["--task", "existence", "--model", "tiny", "--target", "text", "--limit", "1", "--threads", "1",
                     "--no-progress", "--no-figures", "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(before)
    config = json.loads((out / "config.json").read_text())
    info = config["info"]
    assert info["threads"] == 1 and info["threads_reason"] == "--threads"
    assert config["arguments"]["threads_chosen"] == 1


def test_another_thread_count_does_not_change_a_runs_settings(tmp_path, capsys):
    """Threads decide speed, not results: a complete run redone with another --threads is a no-op,
    not refused as "different settings" (the automatic choice depends on the machine's load)."""
    from interp.cli.common import run_cli
    from interp.cli.data import main

    before = torch.get_num_threads()
    out = tmp_path / "pairs"
    try:
        assert run_cli(main, ["--model", "tiny", "--pretrained", "none", "--limit", "3", "--threads", "1",
                              "--out", str(out)]) == 0
        first = (out / "pairs.csv").read_bytes()
        assert run_cli(main, ["--model", "tiny", "--pretrained", "none", "--limit", "3", "--threads", "2",
                              "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(before)
    assert "different settings" not in capsys.readouterr().err
    assert (out / "pairs.csv").read_bytes() == first
