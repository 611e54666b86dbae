"""VLAP's assignment settings as a named preset (and the toolkit's tuned ones labelled), and the preset
record of the analyses report."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from analyses.assignment_map import AssignmentMapConfig, compare_maps
from analyses.cli.alignment import main as alignment_main
from analyses.sinkhorn import assignments
from analyses.validation import AnalysisInputError


def swav_style_sinkhorn(scores: np.ndarray, eps: float, iters: int, prior: np.ndarray) -> np.ndarray:
    """The released SwAV/VLAP loop, written from its description: Q = exp(S / eps)^T [K, B], normalised
    to mass 1; per iteration rows (prototypes) to the prior, then columns (samples) to 1/B; finally
    columns rescaled to sum to 1."""
    q = np.exp(scores / eps).T
    q /= q.sum()
    k, b = q.shape
    for _ in range(iters):
        q *= (prior / prior.sum())[:, None] / q.sum(axis=1, keepdims=True)
        q *= (1.0 / b) / q.sum(axis=0, keepdims=True)
    return (q * b).T


def test_three_prior_weighted_iterations_equal_the_released_loop():
    rng = np.random.default_rng(0)
    scores = rng.uniform(-1, 1, size=(12, 7))
    prior = rng.uniform(0.5, 5, size=7)  # word-frequency-like
    cfg = AssignmentMapConfig.from_preset("vlap", frequencies_given=True)
    assert (cfg.temperature, cfg.sinkhorn_iters, cfg.sinkhorn_eps, cfg.marginal) == (0.01, 3, 0.05, "frequency")
    ours = assignments(torch.tensor(scores), eps=cfg.sinkhorn_eps, n_iters=cfg.sinkhorn_iters,
                       col_marginal=torch.tensor(prior)).numpy()
    np.testing.assert_allclose(ours, swav_style_sinkhorn(scores, cfg.sinkhorn_eps, cfg.sinkhorn_iters, prior),
                               rtol=1e-10, atol=1e-12)


def test_presets_are_labelled_in_the_table():
    assert AssignmentMapConfig() == AssignmentMapConfig.from_preset("toolkit")
    assert AssignmentMapConfig.from_preset("vlap").marginal == "uniform"  # no frequencies given
    with pytest.raises(AnalysisInputError, match="preset"):
        AssignmentMapConfig.from_preset("swav")
    rng = np.random.default_rng(1)
    x = rng.normal(size=(60, 4))
    table = compare_maps(x, x @ np.linalg.qr(rng.normal(size=(4, 4)))[0], seed=0,
                         config=AssignmentMapConfig(epochs=1, min_steps=0))
    assert table.set_index("map").loc["assignment_prediction", "preset"].startswith("toolkit (tuned")


def test_analyses_report_names_preset_and_deviations(tmp_path):
    small = ["--synthetic", "120", "--sections", "matching,maps", "--n-base", "30", "--n-query", "40",
             "--match-seeds", "0", "--qap-restarts", "1", "--map-epochs", "1", "--map-min-steps", "0"]
    assert alignment_main([*small, "--out", str(tmp_path / "default")]) == 0
    config = json.loads((tmp_path / "default" / "config.json").read_text())
    assert config["presets"]["preset"] == "custom"
    assert not [d for d in config["presets"]["deviations"] if d.startswith("matching.")]  # seed 002's matching
    assert "assignment_map.temperature: 0.05 (paper: 0.01)" in config["presets"]["deviations"]
    report = (tmp_path / "default" / "report.md").read_text()
    assert "toolkit (tuned" in report and "assignment_map.temperature: 0.05 (paper: 0.01)" in report
    assert alignment_main([*small, "--map-preset", "vlap", "--match-kernel", "linear", "--out", str(tmp_path / "vlap")]) == 0
    config = json.loads((tmp_path / "vlap" / "config.json").read_text())
    assert config["presets"]["deviations"] == ["matching.kernel: linear (paper: rbf)",
                                               "assignment_map.marginal: uniform (paper: frequency)"]
