"""The run directory every command writes: one contract for ``--out``, resume, refusal and Ctrl-C.

A run directory holds:

- ``config.json``: the command (``tool``), the *settings* that decide the results (model, weights
  fingerprint, target, seed, ...), the full *arguments*, free-form *info* (device, limit, threads),
  the package versions and whether the run is ``complete``.
- tables (CSV) at the top, figures under ``figures/``, and ``report.md`` drawn from the tables.
- for resumable commands, ``items/``: one small CSV per finished item (:class:`ItemTable`).

The contract (:class:`RunDir`), the same for every command:

- ``--out`` holding a run with the same settings: resumed (sweeps skip finished items), or a no-op when
  a one-shot command's run is complete.
- other settings: refused with :class:`RunSettingsMismatch` naming each differing setting.
- ``--overwrite`` replaces the run. Without it, a folder holding files the command did not make is
  never written into.
- a ``.lock`` file (holding the writer's pid) refuses a second writer while a run is live; a lock
  whose process is gone is taken over.
- temporary files a killed writer left behind (``*.tmp``) are removed on resume.
- Ctrl-C or an error: a resumable run keeps its finished items (and says so); a one-shot run removes
  everything it wrote (and says so).

Every file is written through :func:`interp.files.atomic_path` (a temporary name beside the target,
renamed into place), so no half-written file ever carries a final name. Floats round-trip exactly through the
CSVs (:func:`write_csv` / :func:`read_csv`), so a resumed run's tables equal an uninterrupted run's
bit for bit.
"""

from __future__ import annotations

import csv
import datetime as _dt
import errno
import hashlib
import importlib.metadata
import json
import logging
import os
import platform
import re
import shutil
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

from interp.errors import ClipInterpError
from interp.files import TMP_SUFFIX, atomic_path, atomic_write_text, file_sha256, save_figure  # noqa: F401 - re-exported

if TYPE_CHECKING:  # pandas is imported where tables are written, not at import (keeps --help fast)
    import pandas as pd

log = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
ITEMS_DIR = "items"
FIGURES_DIR = "figures"
LOCK_NAME = ".lock"
DEFAULT_RESULTS_ROOT = Path("results")
# Packages whose versions every run records.
VERSIONED_PACKAGES = (
    "clip-interp", "torch", "transformer-lens", "open-clip-torch", "numpy", "pandas", "scipy",
    "transformers", "seaborn", "matplotlib", "scikit-learn",
)


class RunDirError(ClipInterpError):
    """A run directory cannot be used (not a directory, unreadable config, foreign files)."""


class RunSettingsMismatch(RunDirError):
    """``--out`` holds a run made with other settings (or by another command); results must not be mixed."""


class RunLocked(RunDirError):
    """Another live process is writing the run directory."""


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C inside a run; the message says truthfully what was kept."""


# ---------------------------------------------------------------------------------------- files
def write_csv(frame: "pd.DataFrame", path: str | os.PathLike) -> Path:
    """Write a table as CSV (exact float round trip with :func:`read_csv`), atomically."""
    return atomic_write_text(path, frame.to_csv(index=False))


def read_csv(path: str | os.PathLike, **kwargs: Any) -> "pd.DataFrame":
    """Read a CSV written by :func:`write_csv` with floats exactly as written (ids stay strings)."""
    import pandas as pd

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


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError as err:
        return err.errno == errno.EPERM  # exists, owned by someone else
    return True


def _remove_entry(entry: Path) -> None:
    if entry.is_dir() and not entry.is_symlink():
        shutil.rmtree(entry)
    else:
        entry.unlink(missing_ok=True)


class RunDir:
    """A run directory under the toolkit's run contract (see the module docstring).

    Opening (the constructor) checks the folder, takes the lock, cleans stale temporary files and
    writes ``config.json``; use it as a context manager so the lock is released and Ctrl-C or an error
    leaves what the contract promises.

    Args:
        path: the directory (created if missing).
        tool: the command that makes it ("trace", "ablate", ...); another command's run is refused.
        settings: everything that decides the results (JSON-serialisable); a run with other settings is
            refused with the differences named.
        arguments: the full parsed arguments, recorded in ``config.json`` (not compared).
        info: recorded but not compared (device, --limit, threads, ...); updated on each open.
        overwrite: replace whatever the folder holds (``--overwrite``).
        resumable: ``True`` for sweeps whose finished items survive an interruption (``items/``);
            ``False`` for one-shot commands, whose unfinished run is removed on Ctrl-C or error.
    """

    def __init__(self, path: str | os.PathLike, tool: str, settings: Mapping[str, Any],
                 info: Mapping[str, Any] | None = None, *, arguments: Mapping[str, Any] | None = None,
                 overwrite: bool = False, resumable: bool = True):
        self.path = Path(path)
        self.tool = tool
        self.settings = _normalise(settings)
        self.resumable = resumable
        self._locked = False
        if self.path.exists() and not self.path.is_dir():
            raise RunDirError(f"--out {self.path} exists and is not a directory: pass a directory path")
        self.created = not self.path.exists()
        self.path.mkdir(parents=True, exist_ok=True)
        try:
            self._lock()
            self._previous = self._check_existing(overwrite)
        except BaseException:
            self._release()
            if self.created:
                shutil.rmtree(self.path, ignore_errors=True)
            raise
        self.resumed = self._previous is not None
        # A one-shot run found complete is a no-op; anything else (re)starts as incomplete.
        self.complete = bool(self._previous and self._previous.get("complete")) and not resumable
        if self.resumed:
            self._remove_stale_tmp()
        now = _dt.datetime.now().isoformat(timespec="seconds")
        self.config = {
            "tool": tool,
            "settings": self.settings,
            "settings_digest": settings_digest(self.settings),
            "arguments": _normalise(arguments or {}),
            "info": _normalise(info or {}),
            "versions": package_versions(),
            "created": (self._previous or {}).get("created", now),
            "last_opened": now,
            "complete": self.complete,
        }
        if not self.complete:
            write_json(self.config, self.config_path)
        self.items = ItemTable(self.path / ITEMS_DIR) if resumable else None

    # ------------------------------------------------------------------------------ opening
    @property
    def config_path(self) -> Path:
        return self.path / CONFIG_NAME

    def _lock(self) -> None:
        lock = self.path / LOCK_NAME
        for _ in range(2):
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                try:
                    owner = json.loads(lock.read_text(encoding="utf-8"))
                except (OSError, ValueError):
                    owner = {}
                pid, host = owner.get("pid"), owner.get("host")
                live = (isinstance(pid, int) and pid != os.getpid() and host == socket.gethostname()
                        and _pid_alive(pid))
                if live:
                    raise RunLocked(
                        f"--out {self.path} is being written by another process (pid {pid}): wait for it to "
                        f"finish or stop it, or pass another --out DIR (if no such process runs, delete {lock})"
                    ) from None
                if pid != os.getpid():
                    log.warning("taking over the stale lock of %s (pid %s is gone)", self.path, pid)
                lock.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump({"pid": os.getpid(), "host": socket.gethostname()}, handle)
            self._locked = True
            return
        raise RunLocked(f"cannot take the lock {lock}: another process keeps creating it; pass another --out DIR")

    def _release(self) -> None:
        if self._locked:
            (self.path / LOCK_NAME).unlink(missing_ok=True)
            self._locked = False

    def _entries(self) -> list[Path]:
        return sorted(p for p in self.path.iterdir() if p.name != LOCK_NAME)

    def _check_existing(self, overwrite: bool) -> dict[str, Any] | None:
        """The previous run's config when it is resumed, None for a new run (after --overwrite)."""
        entries = self._entries()
        if overwrite:
            for entry in entries:
                _remove_entry(entry)
            if entries:
                log.info("--overwrite: removed the previous contents of %s", self.path)
            return None
        if not entries:
            return None
        if not self.config_path.exists():
            names = ", ".join(e.name for e in entries[:5]) + (", ..." if len(entries) > 5 else "")
            raise RunDirError(
                f"--out {self.path} holds files this command did not make ({names}) and no {CONFIG_NAME}: "
                "pass a new or empty --out DIR, or --overwrite to replace its contents"
            )
        try:
            previous = json.loads(self.config_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise RunDirError(
                f"cannot read {self.config_path} ({err}): pass a new --out DIR, or --overwrite to start over"
            ) from err
        if previous.get("tool") != self.tool:
            raise RunSettingsMismatch(
                f"--out {self.path} holds a run of '{previous.get('tool')}', not '{self.tool}': pass a new --out DIR, "
                "or --overwrite to replace it"
            )
        diffs = _differences(previous.get("settings", {}), self.settings)
        if diffs:
            raise RunSettingsMismatch(
                f"--out {self.path} holds a run with different settings ({'; '.join(diffs)}); results "
                f"would be mixed. Pass a new --out DIR to start a new run, or --overwrite to redo it"
            )
        return previous

    def _remove_stale_tmp(self) -> None:
        stale = [p for p in self.path.rglob(f"*{TMP_SUFFIX}") if p.is_file()]
        for file in stale:
            file.unlink(missing_ok=True)
        if stale:
            log.info("removed %d temporary files a killed run left in %s", len(stale), self.path)

    # ------------------------------------------------------------------------------ writing
    def file(self, name: str) -> Path:
        """Path of an output file ``<run>/<name>`` (write it through :func:`atomic_path`)."""
        return self.path / name

    def figure_path(self, name: str) -> Path:
        """Path of a figure ``<run>/figures/<name>`` (folder created)."""
        path = self.path / FIGURES_DIR / name
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def write_table(self, frame: "pd.DataFrame", name: str) -> Path:
        """Write a table ``<run>/<name>`` (CSV) atomically."""
        return write_csv(frame, self.path / name)

    def write_text(self, text: str, name: str) -> Path:
        return atomic_write_text(self.path / name, text)

    def write_json(self, data: Any, name: str) -> Path:
        return write_json(data, self.path / name)

    def save_figure(self, fig: Any, name: str, **savefig_kwargs: Any) -> Path:
        """Save ``fig`` as ``<run>/figures/<name>`` atomically and close it."""
        try:
            return save_figure(fig, self.figure_path(name), **savefig_kwargs)
        finally:
            import matplotlib.pyplot as plt

            plt.close(fig)

    def record(self, **sections: Any) -> None:
        """Add sections to ``config.json`` (e.g. the models behind a one-shot run) and rewrite it."""
        self.config.update(_normalise(sections))
        write_json(self.config, self.config_path)

    def finish(self) -> None:
        """Mark the run complete (a one-shot rerun with the same settings is then a no-op)."""
        self.complete = True
        self.config["complete"] = True
        write_json(self.config, self.config_path)

    # ------------------------------------------------------------------------------ closing
    def _discard_on_failure(self) -> bool:
        """An unfinished run is removed on failure when nothing in it can be resumed."""
        if self.complete:
            return False
        if not self.resumable:
            return True
        return self.created and not (self.items is not None and self.items.done())

    def kept_message(self, failed: bool = True) -> str:
        """What an interruption keeps, truthfully (also what :meth:`close` does on an error)."""
        if self.complete:
            return f"the run in {self.path} is complete"
        if failed and self._discard_on_failure():
            return f"nothing kept: removed the unfinished run in {self.path}"
        n = len(self.items.done()) if self.items is not None else 0
        return f"kept the resumable run in {self.path} ({n} items finished); rerun the same command to resume"

    def close(self, failed: bool = False) -> str:
        """Release the lock; after a failure, remove an unfinished run nothing can resume. Returns what was kept."""
        message = self.kept_message(failed)
        try:
            if failed and self._discard_on_failure():
                if self.created:
                    shutil.rmtree(self.path, ignore_errors=True)
                else:
                    for entry in self._entries():
                        _remove_entry(entry)
        finally:
            self._release()
        return message

    def __enter__(self) -> "RunDir":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        message = self.close(failed=exc_type is not None)
        if exc_type is not None and issubclass(exc_type, KeyboardInterrupt) and not isinstance(exc, RunInterrupted):
            raise RunInterrupted(f"interrupted: {message}") from None


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

    def write(self, item_id: str, rows: pd.DataFrame | str) -> Path:
        """Store one finished item's rows (must hold an ``item_id`` column equal to ``item_id``): a
        table, or the rows already written as CSV text (header first), stored as they are."""
        if isinstance(rows, str):
            return atomic_write_text(self.file_of(item_id), rows)
        if "item_id" not in rows.columns:
            rows = rows.assign(item_id=str(item_id))
        if len(rows) == 0:
            raise ValueError(f"item {item_id!r} has no rows to store")
        if set(rows["item_id"].astype(str)) != {str(item_id)}:
            raise ValueError(f"rows for item {item_id!r} carry other item ids")
        return write_csv(rows, self.file_of(item_id))

    def read(self, order: Sequence[str] | None = None) -> pd.DataFrame:
        """All stored rows; items in ``order`` (ids) if given, else sorted by id."""
        import pandas as pd

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
