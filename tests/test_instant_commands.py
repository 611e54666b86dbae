"""Every command answers ``--help`` and argument errors before importing anything heavy.

The commands run in a fresh interpreter whose heavy packages are poisoned (``sys.modules[name] =
None`` makes any ``import name`` fail at once), so a command that imports torch, pandas, numpy,
scikit-learn, open_clip, transformer_lens, ... on the path of ``--help`` fails here. No timing:
what is measured is what gets imported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from interp.cli.main import COMMANDS

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "numpy", "pandas", "scipy", "sklearn", "matplotlib", "seaborn", "transformer_lens",
         "transformers", "open_clip", "open_clip_torch", "safetensors", "datasets", "jaxtyping", "einops")
# every module whose ``cli(argv)`` (or ``main(argv)``) answers a command line
COMMAND_MODULES = sorted({module for module, _ in COMMANDS.values()} | {"interp.benchmarks.trace", "interp.benchmarks.ablate"})

_RUNNER = textwrap.dedent("""
    import contextlib, importlib, io, json, sys
    heavy, jobs = json.loads(sys.argv[1]), json.loads(sys.argv[2])
    for name in heavy:
        sys.modules[name] = None  # poisoned: "import name" raises ImportError
    results = []
    for module_name, argv in jobs:
        out, err = io.StringIO(), io.StringIO()
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                module = importlib.import_module(module_name)
                entry = getattr(module, "cli", None) or module.main
                code = entry(argv)
        except SystemExit as exit_:
            code = exit_.code
        except BaseException as exc:  # report, do not crash: the test names the module
            code = f"{type(exc).__name__}: {exc}"
        results.append([module_name, argv, code, out.getvalue()[:200], err.getvalue()[-300:]])
    print(json.dumps(results))
""")


def run_poisoned(jobs: list[tuple[str, list[str]]]) -> list[list]:
    """Run each ``(module, argv)`` in one fresh interpreter with :data:`HEAVY` blocked."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", _RUNNER, json.dumps(HEAVY), json.dumps(jobs)],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def help_results() -> dict[str, list]:
    jobs = [(m, ["--help"]) for m in COMMAND_MODULES]
    jobs += [("interp.cli.main", [name, "--help"]) for name in COMMANDS]
    jobs += [("interp.benchmarks.main", [name, "--help"]) for name in ("trace", "ablate")]
    return {f"{m} {' '.join(argv)}": r for m, argv, *r in [tuple(x) for x in run_poisoned(jobs)]}


def test_the_poison_works():
    """Sanity: a module that does import torch fails in the poisoned interpreter."""
    (result,) = run_poisoned([("interp.tracing.engine", ["--help"])])
    assert "ImportError" in str(result[2]) or "ModuleNotFoundError" in str(result[2])


@pytest.mark.parametrize("module", COMMAND_MODULES)
def test_help_without_heavy_imports(help_results, module):
    code, out, err = help_results[f"{module} --help"]
    assert code == 0, f"{module} --help failed with heavy packages blocked: {code} {err}"
    assert "usage:" in out


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_console_script_help_without_heavy_imports(help_results, command):
    code, out, err = help_results[f"interp.cli.main {command} --help"]
    assert code == 0, f"clip-interp {command} --help failed with heavy packages blocked: {code} {err}"
    assert "usage:" in out


@pytest.mark.parametrize("benchmark", ["trace", "ablate"])
def test_bench_help_without_heavy_imports(help_results, benchmark):
    code, out, err = help_results[f"interp.benchmarks.main {benchmark} --help"]
    assert code == 0, f"python -m interp.bench {benchmark} --help failed: {code} {err}"


ARGUMENT_ERRORS = [
    ("interp.cli.trace", ["--task", "existence", "--kind", "nope"]),  # argparse choice
    ("interp.cli.trace", ["--task", "existence"]),  # no target: the tool's own check
    ("interp.cli.trace", ["--task", "existence", "--target", "text", "--limit", "0"]),
    ("interp.cli.ablate", ["--target", "text", "--method", "nope"]),
    ("interp.cli.ablate", ["--target", "text", "--limit", "0"]),
    ("probes.cli.linear", ["--task", "nope", "--out", "x"]),
    ("analyses.cli.alignment", ["--out", "x"]),  # neither --x/--y nor --synthetic
    ("analyses.cli.alignment", ["--synthetic", "10", "--x", "a.npz", "--out", "x"]),
]


def test_argument_errors_without_heavy_imports(tmp_path):
    """Bad arguments end with exit code 2 before anything heavy is imported."""
    for module, argv, code, out, err in run_poisoned(ARGUMENT_ERRORS):
        assert code == 2, f"{module} {argv}: expected exit code 2 with heavy packages blocked, got {code} {err}"
        assert "error" in err.lower(), (module, argv, err)
