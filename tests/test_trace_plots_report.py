"""Generic figure and report helpers: files are written atomically and tables render exactly."""

from __future__ import annotations

import pandas as pd

from interp.runs.plots import heads_heatmap, layer_bars, roles_layers_heatmap
from interp.runs.report import Report, markdown_table


def test_figures_are_written(tmp_path):
    roles = pd.DataFrame([[1.0, 0.5], [0.0, 0.25]], index=["negator", "EOT"], columns=[0, 1])
    heads = pd.DataFrame([[0.1, -0.3], [0.0, 0.2]])
    bars = pd.DataFrame({"layer": [0, 1, 0, 1], "effect": [0.1, -0.2, 0.3, 0.0], "kind": ["attn", "attn", "mlp", "mlp"]})
    for path in (roles_layers_heatmap(roles, tmp_path / "r.png", "roles"),
                 heads_heatmap(heads, tmp_path / "h.png", "heads"),
                 layer_bars(bars, tmp_path / "b.png", "bars", hue="kind")):
        assert path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.png", "h.png", "r.png"]  # no temp files left


def test_markdown_table_and_report(tmp_path):
    frame = pd.DataFrame({"name": ["a|b", "c"], "value": [0.12345, float("nan")], "n": [3, 4]})
    assert markdown_table(frame).splitlines() == [
        "| name | value | n |", "|---|---|---|", "| a\\|b | 0.123 | 3 |", "| c | n/a | 4 |",
    ]
    report = Report("T").heading("S").bullets(["x"]).table(frame, floatfmt=".1f").image(tmp_path / "f.png", "fig", tmp_path)
    path = report.write(tmp_path / "report.md")
    text = path.read_text()
    assert text.startswith("# T\n") and "## S" in text and "- x" in text and "![fig](f.png)" in text and "| c | n/a | 4 |" in text
