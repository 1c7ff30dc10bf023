"""The Ray side of `--engine ray`: the connection, and shards through a pool of Ray actors.

Each actor (`ShardActor`) builds a `ShardWorker` once and embeds one shard a call; what comes back
is a few numbers per shard: the embeddings stay in the shards the actors wrote. Ray's own logs
are off; bitcli reports progress itself.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator

from bitcli.distributed.shards import InputSpool, ShardInputs, Split, inputs_in_flight
from bitcli.errors import BitError, UsageError
from bitcli.util import first_line
from bitcli.distributed.worker import EmbedJob, OnProgress, ShardWorker, report_progress

INSTALL_HINT = "pip install 'bitcli[ray]'"


def import_ray() -> Any:
    """`ray`, or a UsageError (exit 2) that says how to install it."""
    try:
        import ray
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


class ShardPool:
    """Shards through a pool of Ray actors until all are finished, each reported as it finishes.

    Each actor (`ShardActor`, no restarts) takes the next shard as it finishes one; between
    finished shards, every POLL_SECONDS, the inputs committed in the shards being written
    (`inputs_in_flight`) are reported too, so the bar moves per batch, with its rate and ETA.
    When a worker dies, a new pool runs the shards still missing (a shard finished just before
    is found on disk, not redone). Two pools in a row that die without finishing a shard end the
    run; `--resume` continues it.
    """

    POLL_SECONDS = 0.5

    def __init__(
        self, ray: Any, spool: InputSpool, job: EmbedJob, options: RayOptions, shard_dir: Path, progress: OnProgress | None
    ) -> None:
        self.ray, self.spool, self.job, self.options, self.shard_dir, self.progress = ray, spool, job, options, shard_dir, progress
        self.finished: list[Any] = []  # ShardInfo of earlier runs, _Done of this one: .index, .failed

    def run(self, todo: list[int], done: dict[int, Any]) -> None:
        self.finished = list(done.values())
        self.report()
        fruitless = 0
        while remaining := sorted(set(todo) - {f.index for f in self.finished}):
            before = len(self.finished)
            try:
                self._once(remaining)
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
        """One pool of actors over `todo`, a shard a call; the actors are killed after it."""
        ray, spool, job = self.ray, self.spool, self.job
        actor = ray.remote(num_cpus=job.threads or 1, num_gpus=self.options.num_gpus_per_worker or 0, max_restarts=0)(ShardActor)
        start = (job.to_json(), spool.split.to_json(), str(self.shard_dir.resolve()), str(spool.path.resolve()), os.getcwd())
        actors = [actor.remote(*start) for _ in range(_pool_size(ray, job, self.options, len(todo)))]
        queue, running = list(todo), {}  # running: the call in flight -> its actor

        def next_shard(worker: Any) -> None:
            if queue:
                shard = spool.shard(queue.pop(0))
                running[worker.run.remote(shard.index, shard.offset, shard.count)] = worker

        try:
            for worker in actors:
                next_shard(worker)
            while running:
                ready, _ = ray.wait(list(running), num_returns=1, timeout=self.POLL_SECONDS)
                for ref in ready:
                    worker = running.pop(ref)
                    self.finished.append(_Done(*ray.get(ref)))
                    next_shard(worker)
                self.report(inputs_in_flight(self.shard_dir) if running and self.progress else 0)
        finally:
            for worker in actors:
                ray.kill(worker)

    def report(self, running: int = 0) -> None:
        report_progress(self.progress, self.spool.split, self.finished, running=running)


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
    model. Not in `__init__`: Ray reports an error raised there (a model that cannot load) as an
    actor death, not as the error itself."""

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

    def run(self, index: int, offset: int, count: int) -> tuple[int, int]:
        """Embed and publish one shard: (its index, its failures)."""
        if self.worker is None:
            self.worker = self._start()
        info = self.worker.run(self.shard_dir, self.split, ShardInputs(index, self.spool, offset, count))
        return info.index, info.failed
