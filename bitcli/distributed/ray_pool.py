"""The Ray side of `--engine ray`: the connection, and shards through a Ray Data actor pool.

The unfinished shards become a small dataset (one row per shard) run through
`Dataset.map_batches` with a class UDF (`ShardActor`) on a fixed `ActorPoolStrategy`, one shard a
call; each actor builds a `ShardWorker` once. The rows that come back are a few numbers per shard:
the embeddings stay in the shards the actors wrote. Ray's own progress bars and logs are off;
bitcli reports progress itself.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import threading
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator

from bitcli.distributed.shards import InputSpool, ShardInputs, Split, inputs_in_flight
from bitcli.errors import BitError, InputError, UsageError
from bitcli.util import first_line
from bitcli.distributed.worker import EmbedJob, OnProgress, ShardWorker, report_progress

INSTALL_HINT = "pip install 'bitcli[ray]'"


def import_ray() -> Any:
    """`ray` with Ray Data, or a UsageError (exit 2) that says how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise UsageError(f"--engine ray needs Ray, which is not installed: {INSTALL_HINT}") from exc
    return ray


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide: the cluster, the actor pool and the shard size."""

    address: str | None = None  # None: RAY_ADDRESS, else a new local cluster
    workers: int | None = None  # actors; None: as many as the cluster's CPUs (or GPUs) allow
    num_gpus_per_worker: float = 0.0
    shard_size: int | None = None  # inputs per shard, whole batches; None: about 1024
    shard_dir: Path | None = None  # None: OUT.npy.shards beside the output
    num_cpus: int | None = None  # CPUs of a local cluster this call starts; None: all


@contextlib.contextmanager
def connect(ray: Any, options: RayOptions) -> Iterator[Any]:
    """Connected to the cluster for the block; a cluster this call started is stopped after it."""
    if ray.is_initialized():
        yield ray
        return
    address = options.address or os.environ.get("RAY_ADDRESS") or "local"
    kwargs: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.ERROR}
    if address == "local":
        kwargs.update(include_dashboard=False, num_cpus=options.num_cpus)
    else:
        probe(address)  # Ray itself retries an address where nothing listens for minutes
    handler = signal.getsignal(signal.SIGTERM) if threading.current_thread() is threading.main_thread() else None
    try:
        ray.init(address=address, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise UsageError(
            f"--ray-address {address}: cannot connect ({first_line(exc)}); start the cluster "
            "(ray start --head) or check the address"
        ) from exc
    finally:
        if handler is not None:  # ray.init replaces the driver's SIGTERM handler: put the caller's back
            signal.signal(signal.SIGTERM, handler)
    try:
        yield ray
    finally:
        ray.shutdown()


PROBE_SECONDS = 5.0


def probe(address: str) -> None:
    """UsageError (exit 2) unless something accepts a TCP connection at `address` within
    PROBE_SECONDS (`host:port`, or `ray://host:port`; `auto` and other forms are left to Ray)."""
    target = address.removeprefix("ray://")
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=PROBE_SECONDS).close()
    except OSError as exc:
        reason = "timed out" if isinstance(exc, socket.timeout) else (exc.strerror or str(exc))
        raise UsageError(
            f"--ray-address {address}: nothing answers there ({reason}); start the cluster (ray start --head) "
            "or check the address"
        ) from None


def with_threads(ray: Any, job: EmbedJob, options: RayOptions) -> EmbedJob:
    """Threads per worker: --threads, else 1 per CPU worker, else the CPUs each GPU worker gets."""
    if job.threads:
        return job
    if not options.num_gpus_per_worker:
        return replace(job, threads=1)
    resources = ray.cluster_resources()
    gpu_workers = max(1, int(resources.get("GPU", 0) / options.num_gpus_per_worker))
    return replace(job, threads=max(1, min(8, int(resources.get("CPU", 1)) // gpu_workers)))


def _pool_size(ray: Any, job: EmbedJob, options: RayOptions, todo: int) -> int:
    if options.workers:
        return max(1, min(options.workers, todo))
    resources = ray.cluster_resources()
    if options.num_gpus_per_worker:
        fit = int(resources.get("GPU", 0) / options.num_gpus_per_worker)
    else:
        fit = int(resources.get("CPU", 1)) // max(1, job.threads or 1)
    return max(1, min(fit, todo))


@contextlib.contextmanager
def _quiet_ray_data(ray: Any) -> Iterator[None]:
    """No progress bars, execution logs or failure tracebacks from Ray Data for the block: bitcli
    reports progress itself, and a failure reaches the caller as an exception."""
    context = ray.data.DataContext.get_current()
    for name, value in (
        ("enable_progress_bars", False),
        ("print_on_execution_start", False),
        ("enable_auto_log_stats", False),
        ("max_consecutive_actor_init_deaths", 0),  # a model that cannot load fails the run at once
    ):
        if hasattr(context, name):
            setattr(context, name, value)
    logger = logging.getLogger("ray.data")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


class ShardPool:
    """Shards through Ray Data actor pools until all are finished, each reported as it finishes.

    Ray Data's own actor restarts are off (with them on, Ray's core worker prints a line per
    actor to stderr); instead, when a worker dies, a new pool runs the shards still missing
    (a shard finished just before is found on disk, not redone). Two pools in a row that die
    without finishing a shard end the run; `--resume` continues it.
    """

    def __init__(
        self, ray: Any, spool: InputSpool, job: EmbedJob, options: RayOptions, shard_dir: Path, progress: OnProgress | None
    ) -> None:
        self.ray, self.spool, self.job, self.options, self.shard_dir, self.progress = ray, spool, job, options, shard_dir, progress
        self.finished: list[Any] = []  # ShardInfo of earlier runs, _Done of this one: .index, .failed
        self.lock = threading.Lock()  # progress comes from the driver and from `_BatchWatch`

    def run(self, todo: list[int], done: dict[int, Any]) -> None:
        self.finished = list(done.values())
        report_progress(self.progress, self.spool.split, self.finished)
        fruitless = 0
        while True:
            before = len(self.finished)
            remaining = sorted(set(todo) - {f.index for f in self.finished})
            try:
                with _quiet_ray_data(self.ray):
                    self._once(remaining)
                return
            except Exception as exc:
                error = _bit_error(exc)
                if error is not None:
                    raise error from None
                if not _worker_lost(self.ray, exc):
                    raise
                fruitless = 0 if len(self.finished) > before else fruitless + 1
                if fruitless >= 2:
                    raise BitError(
                        f"Ray workers died twice without finishing a shard ({first_line(exc)}); "
                        f"finished shards are kept in {self.shard_dir}: rerun with --resume"
                    ) from exc

    def _once(self, todo: list[int]) -> None:
        """One Ray Data pass over `todo`: `map_batches` with a fixed actor pool, one shard a call."""
        ray, spool, job = self.ray, self.spool, self.job
        rows = [{"shard": i, "offset": spool.shard(i).offset, "count": spool.shard(i).count} for i in todo]
        dataset = _map_shards(
            ray.data.from_items(rows, override_num_blocks=len(rows)),
            ShardActor,
            batch_size=1,
            compute=ray.data.ActorPoolStrategy(size=_pool_size(ray, job, self.options, len(todo))),
            num_cpus=job.threads,
            num_gpus=self.options.num_gpus_per_worker or None,
            fn_constructor_kwargs={
                "job": job.to_json(),
                "split": spool.split.to_json(),
                "shard_dir": str(self.shard_dir.resolve()),
                "spool": str(spool.path.resolve()),
                "cwd": os.getcwd(),
            },
        )
        with _BatchWatch(self):
            self._collect(dataset)

    def report(self, running: int = 0) -> None:
        with self.lock:
            report_progress(self.progress, self.spool.split, self.finished, running=running)

    def _collect(self, dataset: Any) -> None:
        """Each finished shard as it comes (its settings are checked with the others' before
        anything is published: `combine.plan`)."""
        for row in dataset.iter_rows():
            if row["error"]:
                raise rebuild_error(row["error"])
            self.finished.append(_Done(int(row["shard"]), int(row["failed"])))
            self.report()


class _BatchWatch:
    """While a pass runs, every POLL_SECONDS: report the inputs done in the shards being written
    (`inputs_in_flight`), so the bar moves per batch, with its rate and ETA, not per shard."""

    POLL_SECONDS = 0.5

    def __init__(self, pool: ShardPool) -> None:
        self.pool, self.stop = pool, threading.Event()
        self.thread = threading.Thread(target=self._run, name="bitcli-progress", daemon=True)

    def __enter__(self) -> "_BatchWatch":
        if self.pool.progress is not None:
            self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join()

    def _run(self) -> None:
        while not self.stop.wait(self.POLL_SECONDS):
            self.pool.report(inputs_in_flight(self.pool.shard_dir))


def _map_shards(dataset: Any, fn: Any, **kwargs: Any) -> Any:
    """`map_batches` without Ray Data's actor restarts (`max_restarts=0`, see `run_pool`); Ray
    2.60 warns that such remote arguments are deprecated, a later Ray may refuse them."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return dataset.map_batches(fn, max_restarts=0, **kwargs)
    except TypeError:
        return dataset.map_batches(fn, **kwargs)


_WORKER_LOST = ("RayActorError", "WorkerCrashedError", "NodeDiedError", "OutOfMemoryError", "ObjectLostError")


def _worker_lost(ray: Any, exc: BaseException) -> bool:
    """Whether `exc` (or what it wraps) says a worker process or node died, not a bug."""
    kinds = tuple(k for k in (getattr(ray.exceptions, name, None) for name in _WORKER_LOST) if isinstance(k, type))
    return any(isinstance(e, kinds) for e in _chain(exc))


@dataclass(frozen=True)
class _Done:
    index: int
    failed: int


def _bit_error(exc: BaseException) -> BitError | None:
    """The bitcli error (a worker's UsageError or ModelError) inside Ray's wrappers, if any."""
    for error in _chain(exc):
        if isinstance(error, BitError) and not hasattr(error, "cause"):  # not Ray's wrapper class
            return error
    return None


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """`exc` and everything it wraps: causes, contexts and Ray's `.cause`."""
    seen: set[int] = set()
    stack: list[Any] = [exc]
    while stack:
        current = stack.pop()
        if not isinstance(current, BaseException) or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        stack.extend([getattr(current, "cause", None), current.__cause__, current.__context__])


class ShardActor:
    """One actor of the pool: on its first shard it enters the driver's directory and loads the
    model. Not in `__init__`: Ray would report an error raised there (a model that cannot load)
    as an actor death; a bitcli error raised in a call comes back as a row (`rebuild_error`)."""

    def __init__(self, job: dict[str, Any], split: dict[str, Any], shard_dir: str, spool: str, cwd: str) -> None:
        self.job, self.cwd, self.spool = EmbedJob.from_json(job), cwd, spool
        self.split = Split.from_json(split)
        self.shard_dir = Path(shard_dir)
        self.worker: ShardWorker | None = None

    def _start(self) -> ShardWorker:
        host = socket.gethostname()
        try:
            os.chdir(self.cwd)  # relative input paths are the driver's
        except OSError as exc:
            raise UsageError(
                f"worker on {host} cannot enter {self.cwd} ({exc.strerror}); run from a directory every node "
                "mounts, or give absolute input paths"
            ) from None
        if not os.access(self.spool, os.R_OK):
            raise UsageError(
                f"worker on {host} cannot read {self.spool}: put the output (or the shard directory) on storage "
                "every node mounts at the same path"
            )
        return ShardWorker(self.job)

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {"shard": [], "rows": [], "failed": [], "error": []}
        try:
            if self.worker is None:
                self.worker = self._start()
            for index, offset, count in zip(batch["shard"], batch["offset"], batch["count"]):
                info = self.worker.run(self.shard_dir, self.split, ShardInputs(int(index), self.spool, int(offset), int(count)))
                for key, value in zip(out, (info.index, info.rows, info.failed, "")):
                    out[key].append(value)
        except BitError as exc:
            # Sent back as a row: an exception raised here reaches the driver only as text.
            kind = type(exc)
            error = {"module": kind.__module__, "name": kind.__qualname__, "message": str(exc), "exit_code": exc.exit_code}
            out = {"shard": [-1], "rows": [0], "failed": [0], "error": [json.dumps(error)]}
        return out


def rebuild_error(text: str) -> BitError:
    """The bitcli error a worker sent back (`ShardActor.__call__`), as the same class if possible."""
    import importlib

    data = json.loads(text)
    try:
        cls = getattr(importlib.import_module(data["module"]), data["name"])
        if isinstance(cls, type) and issubclass(cls, BitError) and cls is not InputError:
            return cls(data["message"])
    except (ImportError, AttributeError, TypeError):
        pass
    error = BitError(data["message"])
    error.exit_code = int(data.get("exit_code", 1))
    return error
