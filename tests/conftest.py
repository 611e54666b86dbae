"""Shared test setup: offline hub, Agg backend, and the small models most tests use."""

from __future__ import annotations

import os

# No network here: fail hub look-ups at once instead of retrying for a minute.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

# Runtime shape checks (as TransformerLens's suite does): every function of the project's packages
# imported from here on checks the tensors and arrays it receives and returns against its jaxtyping
# annotations, axis sizes shared within a call (interp._shapecheck). CLIP_INTERP_SHAPECHECK=0 turns
# them off (to time the suite without them, or to bisect).
if os.environ.get("CLIP_INTERP_SHAPECHECK", "1") != "0":
    from interp import _shapecheck  # noqa: E402

    _shapecheck.install(["interp", "probes", "analyses"])

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


@pytest.fixture(scope="session")
def open_clip_module():
    from interp.models.compat import import_open_clip

    return import_open_clip()


@pytest.fixture(scope="session")
def tiny_model():
    """The built-in tiny random CLIP text encoder (fp32, CPU, seed 0)."""
    from interp import load_text_encoder

    return load_text_encoder("tiny")


# Real tokenized sentences: negation minimal pairs of different lengths, punctuation, a long one.
SENTENCES = [
    "There are no animals.",
    "There are some animals.",
    "There is no dog on the red table .",
    "There is a dog on the red table .",
    "You see no people in the picture.",
    "A photo of a green house next to an old wooden bridge over the river at sunset.",
]


@pytest.fixture(scope="session")
def sentences() -> list[str]:
    return list(SENTENCES)
