"""The torchvision compatibility step: applied only when the plain import fails, and it works."""

from __future__ import annotations

import subprocess
import sys
import types

import interp.models.compat as compat


def test_open_clip_imports_in_a_fresh_interpreter():
    code = (
        "from interp.models.compat import import_open_clip; import interp.models.compat as c; "
        "oc = import_open_clip(); m = oc.create_model('ViT-B-32', pretrained=None); "
        "print(type(m).__name__, c.patch_applied)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[0] == "CLIP"
    # On CPU torch with a CUDA torchvision wheel the patch is needed; elsewhere it must stay off.
    plain = subprocess.run([sys.executable, "-c", "import open_clip"], capture_output=True, text=True)
    assert out[1] == str(plain.returncode != 0)


def test_patch_is_not_applied_when_the_plain_import_works(monkeypatch):
    fake = types.ModuleType("open_clip")
    calls = []
    monkeypatch.setattr(compat.importlib, "import_module", lambda name: calls.append(name) or fake)
    monkeypatch.setattr(compat, "_define_missing_torchvision_schemas", lambda: calls.append("patched"))
    assert compat.import_open_clip() is fake
    assert calls == ["open_clip"]


def test_other_import_errors_are_not_swallowed(monkeypatch):
    def broken(name):
        raise RuntimeError("something unrelated")

    monkeypatch.setattr(compat.importlib, "import_module", broken)
    try:
        compat.import_open_clip()
    except RuntimeError as err:
        assert "unrelated" in str(err)
    else:
        raise AssertionError("an unrelated RuntimeError was swallowed")
