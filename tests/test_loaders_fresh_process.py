"""Every loader path in a fresh Python process, from the API and the CLI.

The in-process suite cannot see import-order bugs: conftest and earlier tests import open_clip
(and so apply the torchvision fix) before anything else. A saved Hugging Face CLIP folder used to
fail in a fresh process (``ModuleNotFoundError: CLIPModel``) because transformers was imported
before the fix. Each case here starts a new interpreter and checks the embedding it prints against
the one computed in this process (same weights, same text), so a load that "works" but gives other
numbers fails too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
TEXT = "There is no dog on the table."
ATOL = 1e-6  # the same fp32 weights and the same kernels in both processes

API_SCRIPT = """
import json, sys
from interp import load_text_encoder
out = {}
for source, name, pretrained in json.loads(sys.argv[1]):
    model = load_text_encoder(name, None if pretrained == "none" else pretrained)
    out[source] = model([sys.argv[2]])[0].tolist()
print(json.dumps(out))
"""


def _env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("PYTEST_CURRENT_TEST", None)
    return env


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def hf_clip_dir(tmp_path_factory) -> Path:
    from interp.models.compat import import_transformers

    transformers = import_transformers()
    config = transformers.CLIPConfig(
        text_config=dict(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=77, hidden_act="quick_gelu"),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                           image_size=32, patch_size=16),
        projection_dim=16,
    )
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("hf") / "hf-clip"
    transformers.CLIPModel(config).eval().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    from interp.models.loading import create_open_clip_model

    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    torch.save(create_open_clip_model("tiny", None, seed=5).state_dict(), path)
    return path


def _expected(name, pretrained) -> list[float]:
    from interp import load_text_encoder

    with torch.no_grad():
        return load_text_encoder(name, pretrained)([TEXT])[0]


def test_api_loads_every_source_in_a_fresh_process(hf_clip_dir, tiny_checkpoint, tmp_path):
    # The HF folder comes first: nothing has imported open_clip (and so fixed torchvision) before it.
    sources = [
        ("hf-dir-as-name", str(hf_clip_dir), "none"),
        ("hf-dir-as-pretrained", "my-clip", str(hf_clip_dir)),
        ("open-clip-checkpoint", "tiny", str(tiny_checkpoint)),
        ("tiny-random", "tiny", "none"),
    ]
    done = _run(["-c", API_SCRIPT, json.dumps(sources), TEXT], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    for source, name, pretrained in sources:
        want = _expected(name, None if pretrained == "none" else pretrained)
        assert (torch.tensor(got[source]) - want).abs().max().item() <= ATOL, source


def test_cli_loads_an_hf_clip_folder_in_a_fresh_process(hf_clip_dir, tmp_path):
    out = tmp_path / "data-out"
    done = _run(["-m", "interp.data", "--model", str(hf_clip_dir), "--pretrained", "none", "--out", str(out)], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    counts = json.loads((out / "counts.json").read_text())
    assert counts["counts"]["aligned"] > 0


def test_cli_refuses_an_hf_folder_without_weights_in_one_line(tmp_path):
    folder = tmp_path / "config-only"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architectures": ["CLIPModel"], "model_type": "clip"}))
    done = _run(["-m", "interp.data", "--model", str(folder), "--pretrained", "none", "--out", str(tmp_path / "o")], tmp_path)
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert len(errors) == 1 and "config-only does not load as a Hugging Face CLIPModel" in errors[0]
    assert not (tmp_path / "o").exists()
