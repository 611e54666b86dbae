"""How many threads the toolkit's maths runs on: a policy for torch, a limit for small BLAS fits.

Measured on a 2-core machine shared by other jobs:

- scikit-learn's L-BFGS on small matrices spent 25x more CPU with OpenBLAS's default 2-thread pool
  than with one thread, for identical results: the threads spin at every barrier. Small fits run
  under :func:`single_blas_thread`.
- A 2-thread torch run of the trace sweep on an oversubscribed machine spent about 5x the CPU of a
  1-thread run on the same items. :func:`choose_threads` picks 1 thread when the load average says
  the cores are already busy, the physical cores otherwise; ``--threads`` overrides.

Light on purpose (no torch, no threadpoolctl at import): the commands import it before parsing.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

from interp.errors import ClipInterpError


def physical_cores() -> int:
    """Physical cores this process may run on (hyper-threads counted once; at least 1)."""
    try:
        allowed = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        allowed = os.cpu_count() or 1
    cores: set[tuple[str, str]] = set()
    try:
        physical_id = core_id = ""
        with open("/proc/cpuinfo") as info:
            for line in info:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "physical id":
                    physical_id = value.strip()
                elif key == "core id":
                    core_id = value.strip()
                    cores.add((physical_id, core_id))
    except OSError:
        pass
    return max(1, min(allowed, len(cores) or allowed))


def load_average() -> float | None:
    """The 1-minute load average, or None where the OS has none."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def choose_threads(requested: int | None = None, cores: int | None = None, load: float | None = None) -> tuple[int, str]:
    """``(torch threads, reason)``: ``requested`` when given (``--threads``); else 1 when the load
    average is at least the number of physical cores (other jobs already keep every core busy, and
    more threads would spin at barriers), else the physical cores.

    ``cores`` and ``load`` default to this machine's; tests pass them.
    """
    if requested is not None:
        if requested < 1:
            raise ClipInterpError(f"--threads {requested} must be at least 1 (or leave it out for the automatic choice)")
        return requested, "--threads"
    cores = physical_cores() if cores is None else cores
    load = load_average() if load is None else load
    if cores > 1 and load is not None and load >= cores:
        return 1, f"load average {load:.1f} >= {cores} physical cores: oversubscribed, 1 thread avoids spinning"
    return cores, f"{cores} physical cores" + ("" if load is None else f" (load average {load:.1f})")


@contextlib.contextmanager
def single_blas_thread() -> Iterator[None]:
    """Run the block with BLAS and OpenMP pools limited to one thread (threadpoolctl): for fits on
    small matrices, where extra threads only add synchronisation."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        yield
