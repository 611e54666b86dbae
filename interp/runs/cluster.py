"""Where a sweep's tasks run: in this process, on a Dask ``LocalCluster``, or on an existing scheduler.

The sweep commands (``interp.trace``, ``interp.ablate``, ``probes.linear``, ``interp.sweep``) hand
this layer a list of independent tasks (one chunk of items, or one probe fit) and a function; the
results come back to the driver, which alone writes the run directory. So resume, the settings check
and the atomic writes stay where they were, and a run started on one backend can be resumed on another.

Backends (``--cluster``):

- ``none`` (default): in this process, one task after the other, exactly as without this layer.
- ``local:N``: a ``distributed.LocalCluster`` of N worker processes, the CPU threads split between them.
- ``tcp://HOST:PORT``: an existing Dask scheduler (Slurm through dask-jobqueue, Kubernetes, ...).

A task that needs the encoder names it by a :class:`ModelRecipe`; each worker process loads that
model once and keeps it for later tasks, keyed by the recipe's digest (the run's model settings).
The driver's own model serves the in-process backend, so ``none`` never loads a second copy.

Dask itself reschedules the tasks of a worker that dies; tasks are pure functions of their inputs,
so a rerun gives the same bytes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections import OrderedDict
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterator, Mapping, Sequence

from interp.errors import ClipInterpError

log = logging.getLogger(__name__)

CLUSTER_EXTRA_HINT = 'pip install -c constraints.txt "clip-interp[cluster]"'
# Seconds to wait for a scheduler given by address before giving up with a clear error.
CONNECT_TIMEOUT_S = 10.0
# Models a worker keeps at once (a multi-model sweep would otherwise pile them up in memory).
WORKER_MODEL_SLOTS = 2


class ClusterError(ClipInterpError):
    """The cluster cannot be used as asked (bad address, dask missing, a worker failed a task)."""


class WorkerModelError(ClusterError):
    """A worker could not load (or could not reproduce) the run's model."""


# ---------------------------------------------------------------------------------------------- spec
@dataclass(frozen=True)
class ClusterSpec:
    """A parsed ``--cluster`` value: ``kind`` is "none", "local" (``workers`` processes) or "address"."""

    kind: str
    workers: int = 0
    address: str | None = None

    def __str__(self) -> str:
        return {"none": "none", "local": f"local:{self.workers}"}.get(self.kind, str(self.address))


def parse_cluster(text: str | None) -> ClusterSpec:
    """``none`` | ``local:N`` | ``tcp://HOST:PORT`` (also tls://, ws://, inproc://) into a spec."""
    value = "none" if text is None else str(text).strip()
    if value in ("", "none"):
        return ClusterSpec("none")
    if value.startswith("local:"):
        count = value.split(":", 1)[1]
        if not count.isdigit() or int(count) < 1:
            raise ClusterError(f"--cluster {value!r}: local:N needs a worker count N >= 1, e.g. local:2")
        return ClusterSpec("local", workers=int(count))
    if "://" in value:
        scheme, rest = value.split("://", 1)
        if scheme not in ("tcp", "tls", "ws", "wss", "inproc") or not rest:
            raise ClusterError(f"--cluster {value!r}: a scheduler address looks like tcp://HOST:PORT")
        return ClusterSpec("address", address=value)
    raise ClusterError(f"--cluster {value!r}: use none, local:N (N worker processes) or tcp://HOST:PORT (a running scheduler)")


def check_cluster(text: str | None) -> ClusterSpec:
    """Parse ``--cluster`` and check it can work (dask installed, a given scheduler answers).

    The CLIs call this before they load anything or open their run directory, so a bad backend
    ends the run with one line and nothing written.
    """
    spec = parse_cluster(text)
    if spec.kind != "none":
        distributed = import_distributed()
        if spec.kind == "address":
            _connect(distributed, spec.address).close()
    return spec


def add_cluster_arg(parser) -> None:
    """Add ``--cluster`` to a command's parser (default ``none``)."""
    parser.add_argument(
        "--cluster", default="none",
        help="where tasks run: none (this process, default), local:N (N worker processes on this machine) "
             "or tcp://HOST:PORT (a running Dask scheduler); needs the 'cluster' extra except for none",
    )


def import_distributed():
    """The ``distributed`` module, or a :class:`ClusterError` naming the extra to install."""
    try:
        import distributed
    except ImportError as err:
        raise ClusterError(
            f"--cluster needs dask and distributed, which are not installed ({err}): {CLUSTER_EXTRA_HINT}, "
            "or run with --cluster none"
        ) from err
    return distributed


# ---------------------------------------------------------------------------------------------- models on workers
@dataclass(frozen=True)
class ModelRecipe:
    """How a worker loads the run's encoder: the CLI model flags plus the weights fingerprint to expect."""

    model: str
    pretrained: str | None
    device: str = "cpu"
    dtype: str = "float32"
    seed: int = 0
    fingerprint: str | None = None

    @property
    def key(self) -> str:
        """Digest of the recipe: the worker-side cache key."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]

    def load(self):
        """Load the encoder as the CLIs do (``eval`` mode), then check it is the driver's weights."""
        import torch

        from interp.models.loading import load_text_encoder, weights_fingerprint

        pretrained = None if self.pretrained is None or str(self.pretrained).lower() == "none" else self.pretrained
        model = load_text_encoder(self.model, pretrained, device=self.device, dtype=getattr(torch, self.dtype), seed=self.seed)
        model.eval()
        if self.fingerprint is not None and weights_fingerprint(model) != self.fingerprint:
            raise WorkerModelError(
                f"the worker loaded {self.model!r} / {self.pretrained!r} with other weights than the driver "
                "(weights fingerprints differ): give every worker the same checkpoint file"
            )
        return model


_MODELS: "OrderedDict[str, Any]" = OrderedDict()


def model_recipe(args, model, fingerprint: str | None = None) -> ModelRecipe:
    """The recipe of a CLI's ``--model/--pretrained/--device/--dtype/--seed``, holding ``model`` locally.

    The driver's ``model`` is kept under the recipe's key, so in-process tasks use it instead of loading
    a copy; ``fingerprint`` (the driver's weights) lets workers check they loaded the same weights.
    """
    pretrained = None if str(args.pretrained).lower() == "none" else str(args.pretrained)
    recipe = ModelRecipe(str(args.model), pretrained, str(args.device), str(args.dtype), int(args.seed), fingerprint)
    _remember(recipe.key, model)
    return recipe


def _remember(key: str, model) -> None:
    _MODELS[key] = model
    _MODELS.move_to_end(key)
    while len(_MODELS) > WORKER_MODEL_SLOTS:
        _MODELS.popitem(last=False)


def worker_model(recipe: ModelRecipe):
    """The model of ``recipe`` in this process: loaded on first use, then kept for later tasks."""
    model = _MODELS.get(recipe.key)
    if model is not None:
        _MODELS.move_to_end(recipe.key)
        return model
    _set_worker_threads()
    try:
        model = recipe.load()
    except WorkerModelError:
        raise
    except Exception as err:  # noqa: BLE001 - any load failure is reported with the worker's own message
        raise WorkerModelError(
            f"a worker could not load the model {recipe.model!r} / {recipe.pretrained!r}: {type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''} (every worker must reach the same weights as the driver: "
            "a shared path or cache)"
        ) from None
    _remember(recipe.key, model)
    return model


def _set_worker_threads() -> None:
    """Inside a Dask worker, give torch the worker's thread count (Dask sets OMP_NUM_THREADS=1)."""
    try:
        from distributed import get_worker

        threads = get_worker().state.nthreads
    except (ImportError, ValueError, AttributeError):
        return  # not in a worker: leave the driver's torch settings alone
    import torch

    torch.set_num_threads(max(1, int(threads)))


@dataclass(frozen=True)
class ModelTask:
    """A picklable task ``fn(model, payload, **shared)`` run with the recipe's model on whatever process runs it."""

    recipe: ModelRecipe
    fn: Callable[..., Any]

    def __call__(self, payload: Any, **shared: Any) -> Any:
        return self.fn(worker_model(self.recipe), payload, **shared)


# ---------------------------------------------------------------------------------------------- executors
class InProcessExecutor:
    """Runs tasks here, in order, one after the other (``--cluster none``)."""

    spec = ClusterSpec("none")

    def map(self, fn: Callable[..., Any], payloads: Sequence[Any], shared: Mapping[str, Any] | None = None,
            name: str = "task") -> Iterator[tuple[int, Any]]:
        for index, payload in enumerate(payloads):
            yield index, fn(payload, **(shared or {}))


def _shared_value(value: Any) -> Any:
    """A task whose result is its input: how shared task inputs enter the graph."""
    return value


class DaskExecutor:
    """Runs tasks on a Dask cluster through ``client``; results come back as each task finishes."""

    def __init__(self, client, spec: ClusterSpec):
        self.client = client
        self.spec = spec

    def map(self, fn: Callable[..., Any], payloads: Sequence[Any], shared: Mapping[str, Any] | None = None,
            name: str = "task") -> Iterator[tuple[int, Any]]:
        """Submit one task per payload (``shared``: inputs every task takes, sent once); yield ``(index, result)``."""
        distributed = import_distributed()
        token = os.urandom(4).hex()
        # Shared inputs are tasks, not scattered data: Dask recomputes a lost task result from its
        # spec when the worker holding it dies, while scattered data would be lost for good.
        shared_futures = {k: self.client.submit(_shared_value, v, pure=False, key=f"{name}-shared-{k}-{token}")
                          for k, v in (shared or {}).items()}
        futures = [self.client.submit(fn, payload, pure=False, key=f"{name}-{index}-{token}", **shared_futures)
                   for index, payload in enumerate(payloads)]
        position = {f.key: i for i, f in enumerate(futures)}
        try:
            for future in distributed.as_completed(futures, loop=self.client.loop):
                try:
                    result = future.result()
                except ClipInterpError:
                    raise
                except distributed.KilledWorker as err:
                    raise ClusterError(
                        f"Dask gave up on task {err.args[0] if err.args else name}: each worker that ran it died "
                        "(more often than distributed.scheduler.allowed-failures): check the workers' memory and logs"
                    ) from None
                yield position[future.key], result
        finally:
            for future in futures:
                future.cancel()
            for future in shared_futures.values():
                future.release()


def _threads_total(threads: int | None) -> int:
    return int(threads) if threads else (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


@contextlib.contextmanager
def open_executor(cluster: str | ClusterSpec | None, threads: int | None = None) -> Iterator[Any]:
    """An executor for ``--cluster`` (closed on exit; a ``local:N`` cluster is shut down with it).

    Args:
        cluster: ``none`` / ``local:N`` / a scheduler address, or a parsed :class:`ClusterSpec`.
        threads: CPU threads ``local:N`` splits between its N workers (default: the CPUs this
            process may use); each worker gets at least one.
    """
    spec = cluster if isinstance(cluster, ClusterSpec) else parse_cluster(cluster)
    if spec.kind == "none":
        yield InProcessExecutor()
        return
    # One way to start or check a cluster (cluster_address), then a client on its scheduler.
    with cluster_address(spec, threads) as address:
        client = _connect(import_distributed(), address)
        try:
            yield DaskExecutor(client, spec)
        finally:
            client.close()


@contextlib.contextmanager
def cluster_address(cluster: str | ClusterSpec | None, threads: int | None = None) -> Iterator[str]:
    """A ``--cluster`` value that several runs in a row can share (``interp.sweep``).

    ``none`` stays ``none``; ``local:N`` starts one LocalCluster for all of them and gives its
    scheduler address; an address is checked to answer, then passed on.
    """
    spec = cluster if isinstance(cluster, ClusterSpec) else parse_cluster(cluster)
    if spec.kind == "none":
        yield "none"
        return
    distributed = import_distributed()
    with contextlib.ExitStack() as stack:
        _quiet_dask_logs(stack)
        if spec.kind == "local":
            local = _local_cluster(distributed, spec, threads)
            stack.callback(local.close)
            yield local.scheduler_address
        else:
            _connect(distributed, spec.address).close()
            yield str(spec.address)


def _local_cluster(distributed, spec: ClusterSpec, threads: int | None):
    per_worker = max(1, _threads_total(threads) // spec.workers)
    log.info("starting a LocalCluster of %d worker processes x %d thread(s)", spec.workers, per_worker)
    return distributed.LocalCluster(n_workers=spec.workers, threads_per_worker=per_worker, processes=True,
                                    dashboard_address=":0", silence_logs=logging.WARNING)


def _quiet_dask_logs(stack: contextlib.ExitStack) -> None:
    """Keep Dask's own INFO/WARNING chatter (worker start-up, shutdown races) out of the CLI's output."""
    logger = logging.getLogger("distributed")
    if logging.getLogger().isEnabledFor(logging.DEBUG):
        return  # --debug: show everything
    previous = logger.level
    logger.setLevel(logging.ERROR)
    stack.callback(logger.setLevel, previous)


def _connect(distributed, address: str):
    try:
        return distributed.Client(address, timeout=CONNECT_TIMEOUT_S, set_as_default=False)
    except (OSError, TimeoutError) as err:
        raise ClusterError(
            f"--cluster {address}: no Dask scheduler answered within {CONNECT_TIMEOUT_S:g} s ({type(err).__name__}): "
            "start one (`dask scheduler` + `dask worker ADDRESS`) and pass its address, or use --cluster local:N"
        ) from None
