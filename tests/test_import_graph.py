"""The import graph of the first-party packages: no cycles, no library module importing a command
module, and every ``python -m`` command executes its module body once."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from interp.cli.main import COMMANDS

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("interp", "probes", "analyses")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def _imports(path: Path, name: str, known: set[str], top_level_only: bool) -> set[str]:
    """First-party modules ``path`` imports (``from a import b`` counts ``a.b`` when that is a module)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    if top_level_only:  # what runs at import: module-level statements, including if/try blocks
        nodes, stack = [], list(tree.body)
        while stack:
            node = stack.pop()
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                continue
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            nodes.append(node)
            stack.extend(ast.iter_child_nodes(node))
    else:
        nodes = list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        found |= {t for t in targets if t in known and t != name}
    return found


def _is_command(name: str) -> bool:
    """Command modules: the cli/ subpackages, the benchmarks, and the two-line ``python -m`` entry modules."""
    entry = {module for _, module in COMMANDS.values()} | {f"{m}.__main__" for _, m in COMMANDS.values()}
    return ".cli." in f"{name}." or ".benchmarks" in name or name in entry or name.endswith("__main__") \
        or name in ("interp.bench", "analyses.bench")


def test_no_import_cycles_among_first_party_modules():
    modules = _modules()
    graph = {name: _imports(path, name, set(modules), top_level_only=True) for name, path in modules.items()}
    # a package's __init__ importing its own submodules is how packages work, not a cycle to report
    graph = {n: {t for t in deps if not (t.startswith(n + ".") and modules[n].name == "__init__.py")}
             for n, deps in graph.items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycles.append(" -> ".join(trail[trail.index(dep):] + [dep]) if dep in trail else f"{node} -> {dep}")
            elif dep not in state:
                visit(dep, trail + [dep])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, cycles


def test_library_modules_never_import_command_modules():
    modules = _modules()
    bad = []
    for name, path in modules.items():
        if _is_command(name):
            continue
        bad += [f"{name} imports {dep}" for dep in _imports(path, name, set(modules), top_level_only=False)
                if _is_command(dep)]
    assert not bad, bad


def test_every_python_m_command_executes_its_module_once():
    """``python -X importtime -m X --help``: the command module is imported once, the module run as
    ``__main__`` is never imported again under its own name (which would run its body twice)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    procs = {}
    for command, (cli_module, module) in COMMANDS.items():
        procs[command] = (cli_module, module, subprocess.Popen(
            [sys.executable, "-X", "importtime", "-m", module, "--help"], cwd=ROOT, env=env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for command, (cli_module, module, proc) in procs.items():
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, f"{command}: {err[-1000:]}"
        imported = [line.rsplit("|", 1)[1].strip() for line in err.splitlines() if line.startswith("import time:")]
        is_package = (ROOT / module.replace(".", "/") / "__main__.py").exists()
        run_as_main = f"{module}.__main__" if is_package else module
        if cli_module != module:  # analyses.bench is its own command module, run as __main__
            assert imported.count(cli_module) == 1, f"{command}: {cli_module} imported {imported.count(cli_module)} times"
        assert run_as_main not in imported, f"{command}: {run_as_main} runs as __main__ and is imported again"
        assert "usage:" in out


@pytest.mark.parametrize("name,expected", [("interp.cli.trace", True), ("interp.trace", True),
                                           ("probes.linear.__main__", True), ("interp.tracing.engine", False),
                                           ("probes.linear.probe", False)])
def test_command_classification(name, expected):
    assert _is_command(name) == expected
