"""Regression tests for inputs that used to give a wrong result with exit code 0 (issue 11).

Each test states the old wrong behaviour it guards against; each fails on the code before the fix.
"""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import torch

import interp
from interp.cli import ablate as ablate_cli
from interp.errors import ClipInterpError, DeviceError, NonFiniteError
from interp.heads.ablation import AblationError, Component, ablation_scores
from interp.heads.attention import batch_from_ids
from interp.data.negation import align_pairs, load_existence_pairs
from interp.data.scoring import image_target_directions, text_target_directions
from interp.tracing import TraceSpec, build_runs, patched_scores
from interp.tracing.aggregate import role_table


@pytest.fixture(scope="module")
def tiny():
    return interp.load_text_encoder("tiny", None, seed=3)


@pytest.fixture(scope="module")
def items(tiny):
    aligned, _ = align_pairs(load_existence_pairs().pairs[:6], tiny.tokenizer)
    return aligned[:3]


def _directions(model, items):
    with torch.no_grad():
        return text_target_directions(model([a.pair.negated for a in items]), model([a.pair.affirmative for a in items]))


def test_duplicate_components_are_refused(tiny, items):
    # Before: a dict keyed by component gave both copies one row; the first copy kept 0 (d_ablated = 0).
    batch = batch_from_ids(tiny, [a.tokens_negated for a in items])
    comps = [Component("head", 1, 0), Component("head", 1, 0)]
    with pytest.raises(AblationError, match=r"L1H0 is listed twice"):
        ablation_scores(tiny, batch, _directions(tiny, items), comps, "zero")


def test_ablate_cli_refuses_repeated_layers_before_loading(monkeypatch, tmp_path, capsys):
    # Before: `--layers 1,1` ran, doubled every count and reported a mean effect 4x too large.
    monkeypatch.setattr(ablate_cli, "load_model_from_args", lambda args: pytest.fail("model loaded before validation"))
    argv = ["--model", "tiny", "--pretrained", "none", "--target", "text", "--layers", "1,1", "--out", str(tmp_path / "o")]
    assert ablate_cli.cli(argv) == 2
    assert "--layers '1,1' lists [1] more than once" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def _with_nan_weight(model):
    broken = copy.deepcopy(model)
    with torch.no_grad():
        broken.blocks[1].attn.W_O[0, 0, 0] = float("nan")
    return broken


def test_nan_weights_make_ablation_an_error(tiny, items):
    # Before: every score was NaN and the summary tables (NaN-skipping means/sums) showed 0.00.
    broken = _with_nan_weight(tiny)
    batch = batch_from_ids(broken, [a.tokens_negated for a in items])
    with pytest.raises(NonFiniteError, match="clean score of sentence 0"):
        ablation_scores(broken, batch, _directions(tiny, items), [Component("mlp", 0)], "zero")


def test_nan_weights_make_tracing_an_error(tiny, items):
    broken = _with_nan_weight(tiny)
    runs, _ = build_runs(broken, items, _directions(tiny, items))
    with pytest.raises(NonFiniteError, match="clean base score of run 0"):
        patched_scores(broken, runs, TraceSpec(broken.cfg.n_layers))


def test_role_table_refuses_nan_effects_instead_of_showing_zero():
    cells = pd.DataFrame({"item_id": ["a", "a", "b"], "role": ["negator"] * 3, "layer": [0, 0, 0],
                          "position": [3, 4, 3], "effect": [np.nan, np.nan, np.nan]})
    with pytest.raises(NonFiniteError, match="3 effects are NaN"):
        role_table(cells)


def test_zero_image_embeddings_are_refused():
    # Before: a zero image gave NaN directions, scores of NaN and "Clean accuracy 0.0000" in ablate.
    images = torch.randn(4, 8)
    images[2] = 0
    with pytest.raises(ClipInterpError, match=r"1 rows are all zeros \(e.g. rows \[2\]\)"):
        image_target_directions(images, torch.tensor(4.6))


def test_constant_input_to_cka_permutation_test_is_refused():
    # Before: CKA = inf with a p-value, in the report as if it were a result.
    from analyses.similarity import permutation_test
    from analyses.validation import AnalysisInputError

    x = np.random.default_rng(0).normal(size=(30, 4))
    with pytest.raises(AnalysisInputError, match="every row of Y is the same"):
        permutation_test(x, np.ones((30, 3)), n_permutations=5)


@pytest.mark.parametrize("budget", [0, -5, float("nan")])
def test_nonpositive_memory_budget_is_refused(tiny, items, budget):
    # Before: budget 0 or -5 ran (one cell per chunk) as if the flag had been accepted.
    runs, _ = build_runs(tiny, items[:1], _directions(tiny, items[:1]))
    with pytest.raises(ClipInterpError, match="budget_mb=.* must be a positive number"):
        patched_scores(tiny, runs, TraceSpec(tiny.cfg.n_layers), budget_mb=budget)


def test_checkpoint_with_nan_weights_is_refused(tmp_path):
    # Before: loaded without a word; every score downstream was NaN.
    from interp.models.loading import create_open_clip_model

    sd = create_open_clip_model("tiny", None).state_dict()
    sd["token_embedding.weight"][5, 0] = float("inf")
    torch.save(sd, tmp_path / "bad.pt")
    with pytest.raises(NonFiniteError, match=r"bad\.pt: tensor token_embedding\.weight holds 1 NaN/inf"):
        interp.load_text_encoder("tiny", str(tmp_path / "bad.pt"))


def test_cuda_device_on_a_cpu_machine_is_a_clear_error(monkeypatch):
    # Before: AssertionError("Torch not compiled with CUDA enabled") from deep inside torch.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a CPU machine, wherever the suite runs
    with pytest.raises(DeviceError, match="'cuda' asked for, but torch sees no CUDA device here: use cpu"):
        interp.load_text_encoder("tiny", None, device="cuda")
    with pytest.raises(DeviceError, match="'gpu' is not a torch device"):
        interp.load_text_encoder("tiny", None, device="gpu")


def test_probes_linear_negative_limit_is_refused(tmp_path, capsys):
    # Before: `--limit -5` sliced [: -5] and ran on all but five pairs.
    from probes.cli import linear

    argv = ["--task", "existence", "--model", "tiny", "--pretrained", "none", "--limit", "-5", "--out", str(tmp_path / "o")]
    assert linear.cli(argv) == 2
    assert "--limit -5 must be at least 4" in capsys.readouterr().err
