"""Run directories shared by the sweep CLIs (``interp.trace``, ``interp.ablate``): config, resume, tables.

A run directory holds:

- ``config.json``: the tool name, the *settings* that decide the results (model, weights
  fingerprint, target, mode, seed, ...), free-form *info* (device, limit, start time), and the
  package versions. Opening a directory that holds a run with different settings is refused
  (:class:`RunSettingsMismatch`), naming the settings that differ and how to start a new run.
- ``items/``: the resumable per-item table, one small CSV per finished item, written to a temporary
  name and renamed, so a killed run loses at most the item in flight and a rerun skips finished
  items (:class:`ItemTable`). :meth:`ItemTable.read` concatenates them in a stable order.
- whatever the tool writes beside them (aggregated CSVs, figures, ``report.md``), each written with
  :func:`atomic_write_text` / :func:`write_csv` so no half-written file is ever left behind.

Floats round-trip exactly through the CSVs (pandas writes ``repr`` digits; :func:`read_csv` reads
them back round-trip exact), so a resumed run's tables equal an uninterrupted
run's bit for bit.
"""

from __future__ import annotations

import csv
import datetime as _dt
import hashlib
import importlib.metadata
import json
import logging
import os
import platform
import re
import tempfile
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import pandas as pd

from interp.errors import ClipInterpError

log = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
ITEMS_DIR = "items"
DEFAULT_RESULTS_ROOT = Path("results")
# Packages whose versions every run records.
VERSIONED_PACKAGES = (
    "clip-interp", "torch", "transformer-lens", "open-clip-torch", "numpy", "pandas", "scipy",
    "transformers", "seaborn", "matplotlib",
)


class RunSettingsMismatch(ClipInterpError):
    """``--out`` holds a run made with other settings; results must not be mixed."""


class RunDirError(ClipInterpError):
    """A run directory cannot be used (not a directory, unreadable config, foreign tool)."""


# ---------------------------------------------------------------------------------------- files
def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to a temporary file beside ``path`` and rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_csv(frame: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write a table as CSV (exact float round trip with :func:`read_csv`), atomically."""
    return atomic_write_text(path, frame.to_csv(index=False))


def read_csv(path: str | os.PathLike, **kwargs: Any) -> pd.DataFrame:
    """Read a CSV written by :func:`write_csv` with floats exactly as written (ids stay strings)."""
    dtype = {"item_id": str, **kwargs.pop("dtype", {})}
    if int(pd.__version__.split(".")[0]) < 3:  # pandas 3 parses round-trip by default (and deprecates the flag)
        kwargs.setdefault("float_precision", "round_trip")
    return pd.read_csv(path, dtype=dtype, **kwargs)


def write_json(data: Any, path: str | os.PathLike) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


# ---------------------------------------------------------------------------------------- config
def package_versions(packages: Iterable[str] = VERSIONED_PACKAGES) -> dict[str, str | None]:
    """Installed versions (None when a package is absent), plus Python's and the platform's."""
    versions: dict[str, str | None] = {}
    for name in packages:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    versions["python"] = platform.python_version()
    versions["platform"] = platform.platform()
    return versions


def _normalise(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Settings as they read back from JSON (tuples become lists, paths strings)."""
    return json.loads(json.dumps(dict(settings), sort_keys=True, default=str))


def settings_digest(settings: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(_normalise(settings), sort_keys=True).encode()).hexdigest()[:16]


def _differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    keys = sorted(set(old) | set(new))
    return [f"{k}: {old.get(k, '(unset)')!r} -> {new.get(k, '(unset)')!r}" for k in keys if old.get(k) != new.get(k)]


def safe_name(text: str) -> str:
    """A file-name-safe version of a model name or item id ('ViT-B-32/openai' -> 'ViT-B-32_openai')."""
    cleaned = re.sub(r"[^A-Za-z0-9._+-]+", "_", str(text)).strip("._")
    return cleaned or "unnamed"


def default_run_dir(tool: str, model_name: str, name: str | None = None,
                    root: str | os.PathLike = DEFAULT_RESULTS_ROOT) -> Path:
    """``results/<tool>/<model>/<name or timestamp>/``."""
    stamp = name or _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path(root) / tool / safe_name(model_name) / safe_name(stamp)


class RunDir:
    """A run directory: checked settings, recorded versions, a resumable per-item table.

    Args:
        path: the directory (created if missing).
        tool: which CLI made it ("trace", "ablate"); a directory of another tool is refused.
        settings: everything that decides the results (JSON-serialisable). A directory holding a
            run with different settings is refused with the differences named.
        info: recorded but not checked (device, --limit, command line, ...); updated on each open.
    """

    def __init__(self, path: str | os.PathLike, tool: str, settings: Mapping[str, Any],
                 info: Mapping[str, Any] | None = None):
        self.path = Path(path)
        self.tool = tool
        self.settings = _normalise(settings)
        if self.path.exists() and not self.path.is_dir():
            raise RunDirError(f"--out {self.path} exists and is not a directory: pass a directory path")
        self.path.mkdir(parents=True, exist_ok=True)
        self.resumed = self._check_existing()
        now = _dt.datetime.now().isoformat(timespec="seconds")
        self.config = {
            "tool": tool,
            "settings": self.settings,
            "settings_digest": settings_digest(self.settings),
            "info": _normalise(info or {}),
            "versions": package_versions(),
            "created": self._previous.get("created", now) if self._previous else now,
            "last_opened": now,
        }
        write_json(self.config, self.config_path)
        self.items = ItemTable(self.path / ITEMS_DIR)

    @property
    def config_path(self) -> Path:
        return self.path / CONFIG_NAME

    def _check_existing(self) -> bool:
        self._previous: dict[str, Any] | None = None
        if not self.config_path.exists():
            if (self.path / ITEMS_DIR).exists():
                raise RunDirError(
                    f"--out {self.path} has an {ITEMS_DIR}/ folder but no {CONFIG_NAME}: it is not a run "
                    "this tool can resume; pass a new --out DIR"
                )
            return False
        try:
            previous = json.loads(self.config_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise RunDirError(
                f"cannot read {self.config_path} ({err}): pass a new --out DIR, or delete {self.path} to start over"
            ) from err
        self._previous = previous
        if previous.get("tool") != self.tool:
            raise RunSettingsMismatch(
                f"--out {self.path} holds a run of '{previous.get('tool')}', not '{self.tool}': pass a new --out DIR"
            )
        diffs = _differences(previous.get("settings", {}), self.settings)
        if diffs:
            raise RunSettingsMismatch(
                f"--out {self.path} holds a run with different settings ({'; '.join(diffs)}); results "
                f"would be mixed. Pass a new --out DIR to start a new run, or delete {self.path} to redo it"
            )
        log.info("resuming the run in %s (%d items finished)", self.path,
                 len(ItemTable(self.path / ITEMS_DIR).done()))
        return True

    def write_table(self, frame: pd.DataFrame, name: str) -> Path:
        """Write an aggregated table ``<run>/<name>`` (CSV) atomically."""
        return write_csv(frame, self.path / name)


class ItemTable:
    """Per-item results, one CSV per finished item (atomic), readable as one table.

    A file is named by the item id made file-name safe plus a hash of the exact id, so every id maps
    to exactly one file; the id itself is read back from the rows. Writing an item twice replaces it
    (the rows are the same for a deterministic run).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def _file_name(item_id: str) -> str:
        digest = hashlib.sha256(str(item_id).encode()).hexdigest()[:10]
        return f"{safe_name(item_id)[:60]}-{digest}.csv"

    def file_of(self, item_id: str) -> Path:
        return self.path / self._file_name(item_id)

    def done(self) -> set[str]:
        """Ids of finished items (read from the files, so a partial item never counts)."""
        finished = set()
        for file in self.path.glob("*.csv"):
            with open(file, encoding="utf-8", newline="") as handle:
                reader = csv.reader(handle)
                header, first = next(reader, None), next(reader, None)
            if header and first and "item_id" in header:
                finished.add(first[header.index("item_id")])
        return finished

    def write(self, item_id: str, rows: pd.DataFrame) -> Path:
        """Store one finished item's rows (must hold an ``item_id`` column equal to ``item_id``)."""
        if "item_id" not in rows.columns:
            rows = rows.assign(item_id=str(item_id))
        if len(rows) == 0:
            raise ValueError(f"item {item_id!r} has no rows to store")
        if set(rows["item_id"].astype(str)) != {str(item_id)}:
            raise ValueError(f"rows for item {item_id!r} carry other item ids")
        return write_csv(rows, self.file_of(item_id))

    def read(self, order: Sequence[str] | None = None) -> pd.DataFrame:
        """All stored rows; items in ``order`` (ids) if given, else sorted by id."""
        frames = {}
        for file in sorted(self.path.glob("*.csv")):
            frame = read_csv(file)
            frames[str(frame["item_id"].iloc[0])] = frame
        if order is None:
            keys = sorted(frames)
        else:
            keys = [str(k) for k in order if str(k) in frames]
        if not keys:
            return pd.DataFrame()
        return pd.concat([frames[k] for k in keys], ignore_index=True)
