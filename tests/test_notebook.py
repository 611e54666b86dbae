"""analyses/ablation_study.ipynb executes top to bottom on the tiny model, so it cannot rot."""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "analyses" / "ablation_study.ipynb"


def test_ablation_notebook_runs_top_to_bottom(monkeypatch):
    monkeypatch.setenv("CLIP_INTERP_MODEL", "tiny")
    monkeypatch.setenv("CLIP_INTERP_PRETRAINED", "none")
    monkeypatch.setenv("CLIP_INTERP_LIMIT", "6")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    # the kernel starts in the repository (the notebook writes no files), so it imports this checkout
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(REPO)}}).execute()
    errors = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", []) if o.output_type == "error"]
    assert not errors
    text = "".join(o.get("text", "") for cell in nb.cells for o in cell.get("outputs", []) if o.output_type == "stream")
    assert "6 aligned pairs, 0 rejected" in text
    # the last cell shows the side-by-side table with both label conventions
    last = nb.cells[-1].outputs[-1]["data"]["text/plain"]
    assert "paper label (1-idx)" in last
