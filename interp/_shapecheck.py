"""Runtime shape checks of the jaxtyping annotations, on in the test suite (``tests/conftest.py``).

:func:`check_shapes` wraps a function so that each call checks every tensor or array argument (and the
return value) whose annotation is a jaxtyping array type against that annotation, with the axis sizes
shared across one call (``"batch pos"`` in two arguments must agree). Other annotations (``int``,
``Sequence[str]``, ...) are documentation only and are not enforced, so the check says one thing: the
shapes and dtypes the signatures promise are the ones that flow.

A function that validates its own input keeps that job. When the arguments disagree with the
signature, the function still runs, and its own :class:`~interp.errors.ClipInterpError` (the message a
user sees, naming the input and the fix) is what the caller gets. The shape error surfaces only when
the function accepts the mismatched arguments or fails some other way: then the signature lied.
(This is why the suite does not use :func:`jaxtyping.install_import_hook` with a type checker: its
wrapper checks the parameters before the body runs, so a bad-input test would see the checker's
error instead of the function's.)

:func:`install` adds an import hook for the given packages: every function and method *defined* in
one of their modules is wrapped right after the module runs. Functions nested inside other functions
are not reached (the annotations that matter are on the public and module-level ones).
"""

from __future__ import annotations

import functools
import importlib.abc
import importlib.machinery
import inspect
import sys
import types
import typing
from typing import Any, Callable, Iterable

from jaxtyping import jaxtyped

from interp.errors import ClipInterpError


def _array_hints(hint: Any) -> tuple[tuple[Any, ...], tuple[type, ...]]:
    """The jaxtyping array types in ``hint`` (itself, or the members of a union), and the plain array
    classes (``np.ndarray``, ``torch.Tensor``) the union also admits without a shape."""
    members = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    shaped = tuple(m for m in members if isinstance(m, type) and hasattr(m, "dim_str") and hasattr(m, "dtypes"))
    plain = tuple(m for m in members if isinstance(m, type) and m not in shaped and m.__module__.startswith(("torch", "numpy")))
    return shaped, plain


def _is_array(value: Any) -> bool:
    kind = type(value)
    return kind.__module__.startswith(("torch", "numpy")) and hasattr(value, "shape") and hasattr(value, "dtype")


def _problem(name: str, value: Any, hints: tuple[tuple[Any, ...], tuple[type, ...]], where: str) -> str | None:
    shaped, plain = hints
    if not shaped or not _is_array(value) or isinstance(value, plain) or any(isinstance(value, h) for h in shaped):
        return None
    return (f"{where}: {name} has shape {tuple(value.shape)} and dtype {value.dtype}, which does not fit "
            f"{' | '.join(h.__name__ for h in shaped)} (axis sizes are shared within one call)")


def check_shapes(fn: Callable) -> Callable:
    """Wrap ``fn`` so its jaxtyping-annotated arrays are checked on every call (see the module docstring)."""
    try:
        hints = typing.get_type_hints(fn, include_extras=True)
        signature = inspect.signature(fn)
    except Exception:  # noqa: BLE001 - unresolvable annotations: leave the function as it is
        return fn
    params = {name: _array_hints(h) for name, h in hints.items() if name != "return"}
    params = {name: h for name, h in params.items() if h[0]}
    returns = _array_hints(hints.get("return"))
    if not params and not returns[0]:
        return fn
    where = getattr(fn, "__qualname__", repr(fn))

    def arguments_problem(args: tuple, kwargs: dict) -> str | None:
        try:
            bound = signature.bind(*args, **kwargs)
        except TypeError:
            return None  # a wrong call: the function itself raises Python's own error
        for name, arg_hints in params.items():
            if name in bound.arguments and (problem := _problem(f"argument {name!r}", bound.arguments[name], arg_hints, where)):
                return problem
        return None

    @functools.wraps(fn)
    def checked(*args: Any, **kwargs: Any) -> Any:
        with jaxtyped("context"):  # one memo of axis sizes for the arguments and the return value
            problem = arguments_problem(args, kwargs) if params else None
            if problem is not None:
                try:
                    fn(*args, **kwargs)
                except ClipInterpError:
                    raise  # the function caught the bad input itself, with its own message
                except Exception as error:
                    raise TypeError(problem) from error
                raise TypeError(problem)
            out = fn(*args, **kwargs)
            if returns[0] and (problem := _problem("the return value", out, returns, where)):
                raise TypeError(problem)
            return out

    checked.__shapes_checked__ = True
    return checked


def _wrap_callables(namespace: dict[str, Any], module_name: str) -> None:
    """Replace, in ``namespace``, each function defined in ``module_name`` by its checked version,
    and do the same for the methods of the classes defined there."""
    for name, value in list(namespace.items()):
        if isinstance(value, type) and value.__module__ == module_name:
            _wrap_class(value)
        elif isinstance(value, types.FunctionType) and value.__module__ == module_name:
            namespace[name] = check_shapes(value)


def _wrap_class(cls: type) -> None:
    for name, value in list(vars(cls).items()):
        if isinstance(value, types.FunctionType) and not getattr(value, "__shapes_checked__", False):
            setattr(cls, name, check_shapes(value))
        elif isinstance(value, (staticmethod, classmethod)) and isinstance(value.__func__, types.FunctionType):
            setattr(cls, name, type(value)(check_shapes(value.__func__)))


class _CheckingLoader(importlib.abc.Loader):
    """Runs the real loader, then wraps what the module defined."""

    def __init__(self, loader: importlib.abc.Loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module: types.ModuleType) -> None:
        self._loader.exec_module(module)
        _wrap_callables(vars(module), module.__name__)

    def __getattr__(self, name: str) -> Any:  # get_source, is_package, ... for tracebacks and doctest
        return getattr(self._loader, name)


class _CheckingFinder(importlib.abc.MetaPathFinder):
    def __init__(self, packages: Iterable[str]):
        self._packages = tuple(packages)

    def find_spec(self, fullname: str, path, target=None):
        if fullname.partition(".")[0] not in self._packages:
            return None
        # Ask the finders after this one (the path finder, or an editable install's own finder).
        spec = None
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            if finder is self or find is None:
                continue
            spec = find(fullname, path, target)
            if spec is not None:
                break
        if spec is not None and isinstance(spec.loader, importlib.machinery.SourceFileLoader):
            spec.loader = _CheckingLoader(spec.loader)
        return spec


def install(packages: Iterable[str]) -> None:
    """Check shapes in every module of ``packages`` imported from now on.

    Call it before importing them: modules already imported stay as they are (this one, ``interp``'s
    lazy ``__init__`` and ``interp.errors``, which hold no array functions).
    """
    sys.meta_path.insert(0, _CheckingFinder(packages))
