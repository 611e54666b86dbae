"""``python -m interp.sweep PLAN.yaml``: many runs (models x tasks x commands) under one root, on one cluster.

A plan::

    root: results/sweeps/negation        # every run gets its own directory under it (--out overrides)
    cluster: local:2                     # none | local:N | tcp://HOST:PORT (--cluster overrides)
    models:
      - {name: ViT-B-32-quickgelu, pretrained: openai}
      - {name: ViT-B-16, pretrained: /ckpt/vit-b-16.safetensors}
    tasks: [existence]
    commands:                            # command: its flags (as on its command line, without the dashes)
      trace: {target: text, chunk_items: 8}
      ablate: {target: text, method: mean}
      probes.linear: {folds: 5}

Run ``<root>/<command>/<model>__<pretrained>/<task>/`` is the command's own run directory. A run
whose directory holds ``sweep_run.json`` with the same command line is finished and skipped; any
other run is started, or resumed by the command itself (trace and ablate item by item, probes.linear
fit by fit). The runs go one after the other through this process; the chunks of each go onto the cluster (a
``local:N`` cluster is started once for the whole sweep). ``<root>/summary.csv`` indexes every run:
settings, status, duration, run directory and report.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from interp.cli.common import run_cli
from interp.errors import ClipInterpError
from interp.runs.cluster import cluster_address, parse_cluster

log = logging.getLogger("interp.sweep")

# plan command -> module with build_parser() and main(argv)
COMMANDS = {"trace": "interp.cli.trace", "ablate": "interp.cli.ablate", "probes.linear": "probes.cli.linear"}
PLAN_KEYS = {"root", "cluster", "models", "tasks", "commands"}
MODEL_KEYS = {"name", "pretrained"}
# Flags the sweep sets itself for every run.
RESERVED_FLAGS = {"model", "pretrained", "task", "out", "cluster", "overwrite"}
MARKER = "sweep_run.json"
SUMMARY_COLUMNS = ["run", "command", "model", "pretrained", "task", "flags", "status", "seconds", "run_dir",
                   "report", "error"]


class PlanError(ClipInterpError):
    """The sweep plan file is not valid (unknown keys or commands, missing fields, bad flags)."""


@dataclass(frozen=True)
class PlannedRun:
    command: str
    model: str
    pretrained: str
    task: str
    flags: dict[str, Any]

    @property
    def name(self) -> str:
        from interp.runs.rundir import safe_name  # pandas-free at import time: --help stays instant

        return f"{self.command}/{safe_name(self.model)}__{safe_name(self.pretrained)}/{safe_name(self.task)}"

    def argv(self, out: Path, cluster: str) -> list[str]:
        argv = ["--task", self.task, "--model", self.model, "--pretrained", self.pretrained, "--out", str(out)]
        for key, value in self.flags.items():
            flag = "--" + key.replace("_", "-")
            if value is True:
                argv.append(flag)
            elif value is not False and value is not None:
                argv += [flag, ",".join(map(str, value)) if isinstance(value, list) else str(value)]
        return argv + ["--cluster", cluster]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m interp.sweep", description=__doc__.splitlines()[0])
    p.add_argument("plan", help="plan file (YAML): models, tasks, commands with their flags")
    p.add_argument("--out", help="root of the run directories (default: the plan's 'root')")
    p.add_argument("--cluster", help="none | local:N | tcp://HOST:PORT (default: the plan's 'cluster', else none)")
    p.add_argument("--threads", type=int, help="CPU threads a local:N cluster splits between its workers")
    p.add_argument("--debug", action="store_true", help="show full tracebacks and debug logs")
    return p


def load_plan(path: str | Path) -> dict[str, Any]:
    """Read and check a plan file (every problem is a :class:`PlanError` naming the key)."""
    import yaml

    path = Path(path)
    try:
        plan = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise PlanError(f"cannot read the plan {path} ({err.strerror}): pass an existing YAML file") from None
    except yaml.YAMLError as err:
        raise PlanError(f"plan {path} is not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(plan, dict):
        raise PlanError(f"plan {path} must be a mapping with keys {', '.join(sorted(PLAN_KEYS))}")
    unknown = sorted(set(plan) - PLAN_KEYS)
    if unknown:
        raise PlanError(f"plan {path}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(PLAN_KEYS))}")
    for key in ("models", "commands"):
        if not plan.get(key):
            raise PlanError(f"plan {path}: '{key}' is missing or empty")
    if not isinstance(plan["models"], list):
        raise PlanError(f"plan {path}: 'models' must be a list of {{name, pretrained}}")
    for k, model in enumerate(plan["models"]):
        if not isinstance(model, dict) or "name" not in model:
            raise PlanError(f"plan {path}: models[{k}] must be a mapping with 'name' (and 'pretrained')")
        bad = sorted(set(model) - MODEL_KEYS)
        if bad:
            raise PlanError(f"plan {path}: models[{k}] has unknown key(s) {', '.join(bad)}; allowed: name, pretrained")
    tasks = plan.setdefault("tasks", ["existence"])
    if not isinstance(tasks, list) or not tasks:
        raise PlanError(f"plan {path}: 'tasks' must be a non-empty list, e.g. [existence]")
    if not isinstance(plan["commands"], dict):
        raise PlanError(f"plan {path}: 'commands' must map a command ({', '.join(COMMANDS)}) to its flags")
    for command, flags in plan["commands"].items():
        _check_command(path, command, flags or {}, tasks)
    return plan


def _check_command(path: Path, command: str, flags: Any, tasks: list) -> None:
    if command not in COMMANDS:
        raise PlanError(f"plan {path}: unknown command {command!r}; use one of {', '.join(COMMANDS)}")
    if not isinstance(flags, dict):
        raise PlanError(f"plan {path}: commands.{command} must map flag names to values, e.g. {{limit: 20}}")
    parser = importlib.import_module(COMMANDS[command]).build_parser()
    options = {s.lstrip("-"): a for a in parser._actions for s in a.option_strings}  # noqa: SLF001 - argparse's table
    for key in flags:
        name = str(key).replace("_", "-")
        if name in RESERVED_FLAGS:
            raise PlanError(f"plan {path}: commands.{command}.{key} is set by the sweep (from models/tasks/root/cluster); remove it")
        if name not in options:
            raise PlanError(f"plan {path}: commands.{command} has unknown flag {key!r} ({parser.prog} --help lists its flags)")
    task_action = options.get("task")
    if task_action is not None and task_action.choices:
        bad = [t for t in tasks if t not in task_action.choices]
        if bad:
            raise PlanError(f"plan {path}: task(s) {bad} unknown to {command}; it knows {list(task_action.choices)}")


def planned_runs(plan: dict[str, Any]) -> list[PlannedRun]:
    return [PlannedRun(command, str(m["name"]), str(m.get("pretrained", "default")), str(task), dict(flags or {}))
            for m in plan["models"] for task in plan["tasks"] for command, flags in plan["commands"].items()]


def _report_of(run_dir: Path) -> str:
    return str(run_dir / "report.md") if (run_dir / "report.md").is_file() else ""


def execute(run: PlannedRun, root: Path, cluster: str) -> dict[str, Any]:
    """Run (or skip, or resume) one planned run; return its summary row."""
    from interp.runs.rundir import write_json

    run_dir = root / run.name
    argv = run.argv(run_dir, cluster)
    recorded = ["--cluster", cluster]  # the backend is not a setting: a finished run is finished on any backend
    key = argv[: -len(recorded)]
    row = {"run": run.name, "command": run.command, "model": run.model, "pretrained": run.pretrained,
           "task": run.task, "flags": json.dumps(run.flags, sort_keys=True), "run_dir": str(run_dir), "error": ""}
    marker = run_dir / MARKER
    if marker.is_file():
        previous = json.loads(marker.read_text(encoding="utf-8"))
        if previous.get("argv") == key:
            return {**row, "status": "skipped (finished)", "seconds": previous.get("seconds", float("nan")),
                    "report": _report_of(run_dir)}
        return {**row, "status": "failed", "seconds": 0.0, "report": "",
                "error": f"{run_dir} holds a finished run of other flags: delete it or use another root"}
    log.info("run %s: %s", run.name, " ".join(argv))
    start = time.perf_counter()
    try:
        importlib.import_module(COMMANDS[run.command]).main(argv)
    except ClipInterpError as err:
        return {**row, "status": "failed", "seconds": time.perf_counter() - start, "report": "", "error": str(err)}
    seconds = time.perf_counter() - start
    write_json({"argv": key, "seconds": seconds}, marker)
    return {**row, "status": "finished", "seconds": seconds, "report": _report_of(run_dir)}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    plan = load_plan(args.plan)
    import pandas as pd

    from interp.runs.report import markdown_table
    from interp.runs.rundir import package_versions, write_csv, write_json

    runs = planned_runs(plan)
    root = Path(args.out or plan.get("root") or "results/sweep")
    spec = parse_cluster(args.cluster or plan.get("cluster") or "none")
    rows = []
    with cluster_address(spec, args.threads) as address:
        root.mkdir(parents=True, exist_ok=True)
        write_json({"plan": plan, "cluster": str(spec), "versions": package_versions()}, root / "sweep.json")
        for run in runs:
            rows.append(execute(run, root, address))
            write_csv(pd.DataFrame(rows, columns=SUMMARY_COLUMNS), root / "summary.csv")  # readable while running
    summary = pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
    print(markdown_table(summary[["run", "status", "seconds", "report"]], floatfmt=".1f"))  # noqa: T201 - the answer
    failed = summary[summary.status == "failed"]
    if len(failed):
        log.error("%d of %d runs failed (summary.csv has their errors), first: %s: %s", len(failed), len(summary),
                  failed.run.iloc[0], failed.error.iloc[0])
        return 1
    log.info("%d runs (%d skipped as finished); summary: %s", len(summary),
             int(summary.status.str.startswith("skipped").sum()), root / "summary.csv")
    return 0


def cli(argv: Sequence[str] | None = None) -> int:
    """Entry point with the toolkit's error handling (one line on stderr, exit code 2)."""
    return run_cli(main, argv)

