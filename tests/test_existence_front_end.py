"""The shared VALSE existence front end: the same checks in trace, ablate and probes.linear, d and
segments computed as a plain per-item loop would, and clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from interp.cli.common import run_cli
from interp.data.existence import (
    IMAGE,
    TEXT,
    check_target,
    clean_d,
    load_aligned,
    select_segment,
    text_directions,
)
from interp.data.scoring import normalize
from interp.errors import ClipInterpError


@pytest.mark.parametrize("flags,message", [
    ((None, None, None, None), "no target: pass --images DIR"),
    (("a", "b", None, None), "both given"),
    (("a", None, "text", None), "--target text ignores images"),
    ((None, None, "text", "correct"), "--segment correct needs images"),
    (("/nonexistent-folder", None, None, None), "is not a folder"),
])
def test_check_target_refuses_contradictions(flags, message):
    with pytest.raises(ClipInterpError, match=message):
        check_target(*flags)


def test_check_target_kinds(tmp_path):
    assert check_target(None, None, "text") == TEXT
    assert check_target(str(tmp_path), None, None) == IMAGE
    assert check_target(None, "emb.npz", None, "all") == IMAGE


def test_load_aligned_names_the_flag_and_the_minimum(tmp_path, tiny_model):
    with pytest.raises(ClipInterpError, match="pass --valse-dir DIR holding existence.json"):
        load_aligned(tiny_model.tokenizer, tmp_path)
    data = load_aligned(tiny_model.tokenizer, model_name="tiny")
    assert len(data.aligned) + len(data.rejected) == data.loaded.counts["minimal_pairs"] == 490
    with pytest.raises(ClipInterpError, match="at least 100000 are needed"):
        load_aligned(tiny_model.tokenizer, model_name="tiny", min_items=100_000)


def test_d_and_directions_equal_a_plain_loop(tiny_model):
    items = load_aligned(tiny_model.tokenizer).aligned[:70]  # more than one fixed batch of 64
    torch.manual_seed(0)
    dirs = torch.randn(len(items), tiny_model.cfg.d_embed)
    d = clean_d(tiny_model, items, dirs)
    text = text_directions(tiny_model, items)
    with torch.no_grad():
        for i in (0, 33, 69):
            a = items[i]
            e_c, e_f = tiny_model([a.pair.caption]), tiny_model([a.pair.foil])
            expected = float((normalize(e_c) * dirs[i]).sum() - (normalize(e_f) * dirs[i]).sum())
            assert d[i] == pytest.approx(expected, rel=1e-5, abs=1e-6)
            e_n, e_a = tiny_model([a.pair.negated]), tiny_model([a.pair.affirmative])
            torch.testing.assert_close(text[i], (normalize(e_n) - normalize(e_a))[0], rtol=1e-5, atol=1e-6)


def test_select_segment_on_planted_d(tiny_model):
    items = load_aligned(tiny_model.tokenizer).aligned[:4]
    d = np.array([2.0, -2.0, 0.0, 3.0])  # far above / below the ambiguity band, and inside it
    keep, excluded = select_segment(items, d, "correct")
    assert keep == [0, 3] and [e[0] for e in excluded] == [items[1].pair.item_id, items[2].pair.item_id]
    assert select_segment(items, None, "all") == ([0, 1, 2, 3], [])
    with pytest.raises(ClipInterpError, match="needs images"):
        select_segment(items, None, "correct")


@pytest.mark.parametrize("cli_module,extra", [
    ("interp.cli.trace", ["--task", "existence"]),
    ("interp.cli.ablate", []),
    ("probes.cli.linear", ["--task", "existence"]),
])
def test_the_three_commands_give_the_same_answer_to_the_same_bad_valse_dir(cli_module, extra, tmp_path, capsys):
    import importlib

    main = importlib.import_module(cli_module).main
    argv = [*extra, "--model", "tiny", "--pretrained", "none", "--valse-dir", str(tmp_path / "none"),
            "--out", str(tmp_path / "run"), "--no-progress"]
    if cli_module != "probes.cli.linear":
        argv += ["--target", "text"]
    assert run_cli(main, argv) == 2
    err = capsys.readouterr().err
    assert "cannot load VALSE existence" in err and "pass --valse-dir DIR holding existence.json" in err
    assert not (tmp_path / "run").exists()
