"""analyses/ablation_study.ipynb executes top to bottom on three models, so it cannot rot: the tiny
random CLIP, ViT-B-32 with random weights (full size), and MiniLM with its trained weights (post-LN:
the direct-effects section must say it does not apply and the notebook must go on)."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "analyses" / "ablation_study.ipynb"

MODELS = [
    # (model, pretrained, items, post-LN)
    ("tiny", "none", 6, False),
    ("ViT-B-32", "none", 3, False),
    ("all-MiniLM-L6-v2", "default", 3, True),
]


def _stream_text(nb) -> str:
    return "".join(o.get("text", "") for cell in nb.cells for o in cell.get("outputs", []) if o.output_type == "stream")


@pytest.mark.parametrize("model,pretrained,limit,post_ln", MODELS, ids=[m[0] for m in MODELS])
def test_ablation_notebook_runs_top_to_bottom(model, pretrained, limit, post_ln, monkeypatch):
    monkeypatch.setenv("CLIP_INTERP_MODEL", model)
    monkeypatch.setenv("CLIP_INTERP_PRETRAINED", pretrained)
    monkeypatch.setenv("CLIP_INTERP_LIMIT", str(limit))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    # the kernel starts in the repository (figures go to a temporary folder), so it imports this checkout
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(REPO)}}).execute()
    errors = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", []) if o.output_type == "error"]
    assert not errors
    text = _stream_text(nb)
    assert f"{limit} aligned pairs, 0 rejected" in text
    assert ("Direct effects skipped" in text) == post_ln
    images = [o for cell in nb.cells for o in cell.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) == (2 if post_ln else 3)  # attention, ablation (, direct effects)
    last = nb.cells[-1].outputs[-1]["data"]["text/plain"]
    assert "paper label (1-idx)" in last
    assert ("direct_effect" in last) != post_ln


def test_stored_notebook_has_outputs_from_minilm():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    text = _stream_text(nb)
    assert "all-MiniLM-L6-v2" in text and "Direct effects skipped" in text
    assert sum("image/png" in o.get("data", {}) for cell in nb.cells for o in cell.get("outputs", [])) == 2
