"""docs/api.md is executable: every example on the page runs as a doctest (tiny model), and so do
the docstring examples of the modules the page points to."""

from __future__ import annotations

import doctest
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def test_api_page_examples_run():
    result = doctest.testfile(str(ROOT / "docs" / "api.md"), module_relative=False, optionflags=FLAGS,
                              verbose=False, report=True)
    assert result.attempted >= 30, result  # the page really holds the examples
    assert result.failed == 0, result


@pytest.mark.parametrize("module", ["interp.files", "interp.models.tokenization"])
def test_module_docstring_examples_run(module):
    import importlib

    result = doctest.testmod(importlib.import_module(module), optionflags=FLAGS)
    assert result.attempted >= 1 and result.failed == 0, result
