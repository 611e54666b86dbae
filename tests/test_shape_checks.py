"""The runtime shape checks the suite runs under (interp._shapecheck, installed by tests/conftest.py).

They must act (a wrong shape is caught, also across arguments and in the return value), leave right
calls alone, and let a function that validates its own input give its own error.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from jaxtyping import Float
from torch import Tensor

from interp._shapecheck import check_shapes
from interp.errors import ClipInterpError


class OwnError(ClipInterpError):
    pass


def _add(x: Float[Tensor, "batch d"], y: Float[Tensor, "batch d"]) -> Float[Tensor, "batch d"]:
    return x + y


def _bad_return(x: Float[Tensor, "batch d"]) -> Float[Tensor, "batch d"]:
    return x[:, :1]


def _validates(x: Float[np.ndarray, "n p"], y: Float[np.ndarray, "n q"]) -> float:
    if x.shape[0] != y.shape[0]:
        raise OwnError(f"x and y need the same rows, got {x.shape[0]} and {y.shape[0]}")
    return 0.0


def _accepts_anything(x: Float[np.ndarray, "n p"], y: Float[np.ndarray, "n q"]) -> float:
    return float(x.sum() + y.sum())


def test_a_right_call_passes_through_unchanged():
    x, y = torch.randn(3, 4), torch.randn(3, 4)
    assert torch.equal(check_shapes(_add)(x, y), x + y)


def test_axis_sizes_are_shared_between_arguments():
    with pytest.raises(TypeError, match="argument 'y' has shape \\(2, 4\\)"):
        check_shapes(_add)(torch.randn(3, 4), torch.randn(2, 4))


def test_the_return_value_is_checked():
    with pytest.raises(TypeError, match="the return value has shape \\(3, 1\\)"):
        check_shapes(_bad_return)(torch.randn(3, 4))


def test_a_function_that_checks_its_input_gives_its_own_error():
    with pytest.raises(OwnError, match="same rows"):
        check_shapes(_validates)(np.zeros((3, 2)), np.zeros((4, 2)))


def test_a_function_that_accepts_a_wrong_shape_is_caught():
    with pytest.raises(TypeError, match="argument 'y' has shape \\(4, 2\\)"):
        check_shapes(_accepts_anything)(np.zeros((3, 2)), np.zeros((4, 2)))


def test_the_suite_runs_the_projects_functions_checked():
    """conftest installs the checks (CLIP_INTERP_SHAPECHECK=0 turns them off, and this test fails then)."""
    from analyses.similarity import linear_cka
    from interp.models.components import TransformerBlock

    assert getattr(linear_cka, "__shapes_checked__", False)
    assert getattr(TransformerBlock.forward, "__shapes_checked__", False)
