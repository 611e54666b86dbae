"""A killed ``interp.ablate`` run resumes to tables byte-identical to an uninterrupted run.

Chunks are fixed slices of the full item list, so a resumed run batches every item with the same
neighbours (and the same padding) as the uninterrupted run; the chunk size is a resume setting.
"""

from __future__ import annotations

import pytest

from interp.cli import ablate as ablate_cli

ARGS = ["--model", "tiny", "--pretrained", "none", "--target", "text", "--limit", "7", "--batch-size", "3",
        "--components", "head,mlp"]


def test_killed_run_resumes_byte_identical(tmp_path, monkeypatch, capsys):
    assert ablate_cli.main([*ARGS, "--out", str(tmp_path / "whole")]) == 0

    real = ablate_cli.ablate_items
    calls = {"n": 0}

    def dies_on_second_chunk(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(ablate_cli, "ablate_items", dies_on_second_chunk)
    resumed = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        ablate_cli.main([*ARGS, "--out", str(resumed)])
    finished = sorted((resumed / "items").glob("*.csv"))
    assert len(finished) == 3  # the first chunk
    finished[1].unlink()  # as if killed while the chunk's items were being written
    monkeypatch.setattr(ablate_cli, "ablate_items", real)
    assert ablate_cli.main([*ARGS, "--out", str(resumed)]) == 0
    for name in ("ablation_summary.csv", "negator_attention.csv", "direct_effects.csv"):
        assert (tmp_path / "whole" / name).read_bytes() == (resumed / name).read_bytes(), name
    whole_items = sorted(p.name for p in (tmp_path / "whole" / "items").glob("*.csv"))
    assert whole_items == sorted(p.name for p in (resumed / "items").glob("*.csv"))
    for name in whole_items:
        assert (tmp_path / "whole" / "items" / name).read_bytes() == (resumed / "items" / name).read_bytes(), name

    # The chunk size is a resume setting: another one would change the last bits of the floats.
    capsys.readouterr()
    assert ablate_cli.cli([*ARGS[:-4], "--batch-size", "2", "--components", "head,mlp", "--out", str(resumed)]) == 2
    assert "batch_size" in capsys.readouterr().err
