"""Runtime shape checks of the jaxtyping annotations, for the test suite (``tests/conftest.py``).

A decorator for :func:`jaxtyping.install_import_hook`: each call checks every tensor or array argument
(and the return value) whose annotation is a jaxtyping array type against that annotation, with the
axis sizes shared across one call (``"batch pos"`` in two arguments must agree). (jaxtyping checks
the arguments before the body runs, so a function's own bad-input error is not reached when the shapes
already disagree with its signature.) Other annotations
(``int``, ``Sequence[str]``, ...) are documentation only and are not enforced, so the check says one
thing: the shapes and dtypes the signatures promise are the ones that flow.
"""

from __future__ import annotations

import functools
import inspect
import types
import typing
from typing import Any, Callable


def _array_hints(hint: Any) -> tuple[Any, ...]:
    """The jaxtyping array types in ``hint`` (itself, or the members of a union)."""
    members = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    return tuple(m for m in members if isinstance(m, type) and hasattr(m, "dim_str") and hasattr(m, "dtypes"))


def _is_array(value: Any) -> bool:
    kind = type(value)
    return kind.__module__.startswith(("torch", "numpy")) and hasattr(value, "shape") and hasattr(value, "dtype")


def _problem(name: str, value: Any, hints: tuple[Any, ...], where: str) -> str | None:
    if hints and _is_array(value) and not any(isinstance(value, h) for h in hints):
        return (f"{where}: {name} has shape {tuple(value.shape)} and dtype {value.dtype}, which does not fit "
                f"{' | '.join(h.__name__ for h in hints)} (axis sizes are shared within one call)")
    return None


def check_shapes(fn: Callable) -> Callable:
    """Wrap ``fn`` so its jaxtyping-annotated arrays are checked on every call (see the module docstring)."""
    try:
        hints = typing.get_type_hints(fn, include_extras=True)
        signature = inspect.signature(fn)
    except Exception:  # noqa: BLE001 - unresolvable annotations: leave the function as it is
        return fn
    params = {name: _array_hints(h) for name, h in hints.items() if name != "return"}
    params = {name: h for name, h in params.items() if h}
    returns = _array_hints(hints.get("return"))
    if not params and not returns:
        return fn
    where = getattr(fn, "__qualname__", repr(fn))

    @functools.wraps(fn)
    def checked(*args: Any, **kwargs: Any) -> Any:
        if params:
            bound = signature.bind(*args, **kwargs)
            for name, arg_hints in params.items():
                if name in bound.arguments and (problem := _problem(f"argument {name!r}", bound.arguments[name], arg_hints, where)):
                    raise TypeError(problem)
        out = fn(*args, **kwargs)
        if returns and (problem := _problem("the return value", out, returns, where)):
            raise TypeError(problem)
        return out

    return checked
