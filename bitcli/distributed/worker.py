"""A worker loads the model once and embeds whole shards with the local pipeline.

Ray actors wrap one (`ray_engine.py`); `run_shards` runs `--shard I/N` in this process. A shard
is a collection, written as a local run writes one (`store.Collection`): batches start at
the shard's first entry, a batch boundary of the whole list, so each batch is the one a local run
forms and the rows are the local run's bytes (on the same machine, with the same thread count).
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from bitcli.distributed.shards import (
    ShardInfo,
    ShardInputs,
    UPDATE_PLAN,
    Split,
    check_alike,
    default_shard_size,
    finished_shards,
    make_shard_dir,
    read_shard,
    remove_shards,
    selected,
    shard_outputs,
    shard_paths,
    spool_inputs,
)
from bitcli.errors import BitError, CheckpointError, InputError, UsageError
from bitcli.inputs import InputItem
from bitcli.pipeline import RunOptions  # light: no torch
from bitcli.store.files import run_state
from bitcli.store.collection import Collection
from bitcli.store.paths import EmbedPaths
from bitcli.util import first_line


@dataclass(frozen=True)
class EmbedJob:
    """What a run computes: the model, the run's options and `bit embed`'s own (JSON round trip)."""

    model: str
    options: RunOptions = field(default_factory=RunOptions)
    normalize: bool = False
    dtype: str = "float32"
    threads: int | None = None  # torch and decoding threads per worker; None: torch's default
    content_hash: bool = False  # --hash: each row's file sha256 recorded

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "EmbedJob":
        return cls(**{**data, "options": RunOptions(**data["options"])})

    def fingerprint(self) -> tuple[dict[str, Any], int]:
        """What a worker records of its rows (`ShardWorker.fingerprint`) but the device and the
        convolution path, and the rows' dimension, from the checkpoint's files without loading
        the model (a Ray driver's view): the reference resolved as `bitcli.load` resolves it,
        the weights' digest, the preprocessing and the options."""
        from bitcli import hub
        from bitcli.checkpoint.describe import describe_any
        from bitcli.checkpoint.loading import identity

        resolved = hub.resolve_model(self.model, offline=self.options.offline)
        try:
            info = describe_any(Path(resolved.path), resolved)
        except BitError:
            raise
        except (OSError, RuntimeError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CheckpointError(f"{self.model}: cannot load the checkpoint ({first_line(exc)})") from exc
        options = self.options
        fingerprint = {
            **identity(info), "precision": options.precision or "fp32", "normalize": self.normalize,
            "batch_size": options.batch_size, "fast_jpeg": options.fast_jpeg, "max_pixels": options.max_pixels,
            "dtype": self.dtype, **({"content_hash": "sha256"} if self.content_hash else {}),
        }
        return fingerprint, int(info.config.feature_dim)


@dataclass(frozen=True)
class Progress:
    """Where a run stands: shards and inputs done (finished before or now) of the total."""

    shards_done: int
    shards_total: int
    images_done: int
    images_total: int
    failed: int = 0


OnProgress = Callable[[Progress], None]


def report_progress(
    progress: OnProgress | None, split: Split, done: Iterable[Any], indices: Sequence[int] | None = None, running: int = 0
) -> Progress:
    """Call `progress` (if any) with the state after the shards `done` (anything with .index and
    .failed) of the shards `indices` (None: all of the split), plus `running` inputs done in
    shards still being written; return that state."""
    infos = list(done)
    state = Progress(
        shards_done=len(infos),
        shards_total=split.shards if indices is None else len(indices),
        images_done=sum(split.count(i.index) for i in infos) + running,
        images_total=split.entries if indices is None else sum(split.count(i) for i in indices),
        failed=sum(i.failed for i in infos),
    )
    if progress is not None:
        progress(state)
    return state


class ShardWorker:
    """The model, loaded once (`bitcli.load`), and the embedder that runs shards through it."""

    def __init__(self, job: EmbedJob, *, model: Any = None) -> None:
        import torch

        from bitcli.pipeline import Embedder, load

        options = job.options
        if job.threads:
            torch.set_num_threads(job.threads)  # before loading: the engine picks the convolution path from it
            options = replace(options, workers=job.threads)
        if model is None:  # a Ray actor: its process is ours, as the `bit` process is (engine/allocator.py)
            from bitcli.engine.allocator import keep_freed_memory

            keep_freed_memory()
            model = load(job.model, device=options.device, precision=options.precision, offline=options.offline)
        self.job = job
        self.embedder = Embedder(model, normalize=job.normalize, options=options)
        self.fingerprint = {**self.embedder.fingerprint(), "dtype": job.dtype, **({"content_hash": "sha256"} if job.content_hash else {})}
        self.dim = self.embedder.feature_dim

    def run(self, shard_dir: Path, split: Split, inputs: ShardInputs, update: str | None = None) -> ShardInfo:
        """Embed one shard into the store's writer and publish it; a shard already finished (a
        retried task) is kept, a partial one (a worker killed) continued. `update`: the digest of
        the `--update` plan the shard was cut from, recorded (`ShardInfo.update`)."""
        shard = Collection(shard_paths(shard_dir, inputs.index))
        extra = {"split": split.to_json(), "shard": inputs.index, **({"update_plan": update} if update else {})}
        run = shard.plan(inputs.read(), self.embedder.embed_groups, dim=self.dim, fingerprint=self.fingerprint,
                         dtype=self.job.dtype, content_hash=self.job.content_hash, resume=True, extra=extra)
        run.write()
        info = read_shard(shard.paths)
        self.check(info, split)
        return info

    def check(self, info: ShardInfo, split: Split) -> None:
        """Refuse a shard of another split, or made with another model or options than this worker's."""
        check_alike(info, split, self.made(), other_run="{shard} belongs to another run ({difference}); pass --overwrite to redo it")

    def made(self) -> dict[str, Any]:
        """What made this worker's rows, as `ShardInfo.settings()` holds it."""
        state = run_state(self.dim, self.job.dtype, self.fingerprint, None)
        return {k: state[k] for k in ("settings", "runtime", "dim", "dtype")}


@dataclass(frozen=True)
class ShardRunSummary:
    """What `run_shards` did: the shards it ran and skipped, and their rows and failures."""

    shard_dir: Path
    split: Split
    ran: list[int]
    skipped: list[int]
    rows: int
    failed: int


def run_shards(
    entries: Iterable[InputItem | InputError],
    shard_dir: Path,
    job: EmbedJob,
    *,
    selection: tuple[int, int] = (0, 1),
    shard_size: int | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: OnProgress | None = None,
    on_failure: Callable[[str, str], None] | None = None,
    model: Any = None,
    update: EmbedPaths | None = None,
) -> ShardRunSummary:
    """`--shard I/N`: embed shards I, I + N, ... of the inputs into `shard_dir`, in this process.

    Other jobs may write their shards into the same directory at the same time; this one only
    touches its own. Shards it finished before need `--resume` (skipped) or `--overwrite`
    (redone). The input list is listed in full (every job needs the same split) into a
    temporary file, not memory. `on_failure(path, reason)`: each failed input of each shard this
    job embeds, in input order, as the shard is published.

    `update` (`--update --shard I/N`): the output the jobs bring up to date. Every job plans the
    update of the whole list as a local `--update` does (the model loaded first: the plan refuses
    other settings) and leaves the plan in `shard_dir` (`shards.UPDATE_PLAN`); the shards are cut from
    the inputs it embeds (new, changed, retried), so each job embeds only its part of those, in
    the batches a local `--update` forms. `bit combine` then copies the kept rows from the output.
    """
    if resume and overwrite:
        raise UsageError("--resume continues a run and --overwrite discards it: pass one of them")
    index, count = selection
    size = shard_size or default_shard_size(job.options.batch_size)
    Split(job.options.batch_size, size)  # refuse a bad split before an update leaves its plan
    make_shard_dir(shard_dir)
    worker, digest = None, None
    if update is not None:
        worker = ShardWorker(job, model=model)
        entries, digest = _update_entries(worker, update, entries, shard_dir, overwrite=overwrite)
    with tempfile.TemporaryDirectory(prefix="bitcli-inputs-") as tmp:
        spool = spool_inputs(entries, Path(tmp) / "inputs.jsonl", batch_size=job.options.batch_size, shard_size=size)
        split = spool.split
        mine = list(selected(split, index, count))
        done = _previous_shards(shard_dir, split, mine, resume=resume, overwrite=overwrite)
        if update is None:  # once the job is not refused: an earlier update's plan would make `bit combine` take these shards for an update's
            (shard_dir / UPDATE_PLAN).unlink(missing_ok=True)
        todo = [i for i in mine if i not in done]
        infos = list(done.values())
        report_progress(progress, split, infos, mine)
        if todo or infos:
            # Kept shards are checked even when none is left to run: a --resume with another
            # model or options is refused, as a local --resume of a finished output is.
            worker = worker or ShardWorker(job, model=model)
            for info in infos:  # refuse to keep or add to shards of another model or options
                worker.check(info, info.split)
            for i in todo:
                infos.append(worker.run(shard_dir, split, spool.shard(i), digest))
                for path, reason in infos[-1].failures() if on_failure else ():
                    on_failure(path, reason)
                report_progress(progress, split, infos, mine)
    return ShardRunSummary(shard_dir, split, todo, sorted(done), sum(s.rows for s in infos), sum(s.failed for s in infos))


def _update_entries(worker: "ShardWorker", out: EmbedPaths, entries: Iterable[InputItem | InputError], shard_dir: Path,
                    *, overwrite: bool) -> tuple[list[InputItem], str]:
    """Plan the update of `out` for all `entries` (`store.update`), leave the plan for `bit combine`
    and return the inputs it embeds, in order (the list the shards are cut from), and its digest. A plan another
    job left that differs (a file changed between the jobs) is refused unless `overwrite`."""
    from bitcli.store.metadata import EmbeddingMetadata
    from bitcli.store.update import prepare_update, read_plan, write_plan

    current = EmbeddingMetadata.from_fingerprint(worker.fingerprint, rows=0, feature_dim=worker.dim)
    plan = prepare_update(out, current, [entry.path for entry in entries], content_hash=worker.job.content_hash)
    path = shard_dir / UPDATE_PLAN
    if path.exists() and not overwrite:
        try:
            same = read_plan(path, plan.old).steps == plan.steps
            why = "another job planned this update differently (a file changed since, other inputs or other options such as --hash)"
        except UsageError:  # made for the output as it was: an earlier round's plan (or OUT changed between the jobs)
            same, why = False, "an update planned for the output as it was before (an earlier round's, or the output changed since)"
        if not same:
            raise UsageError(f"{path}: {why}; run every job again with --overwrite")
    write_plan(path, plan)
    return [InputItem(index=i, path=step.path) for i, step in enumerate(plan.to_embed)], plan.digest()


def _previous_shards(shard_dir: Path, split: Split, mine: list[int], *, resume: bool, overwrite: bool) -> dict[int, ShardInfo]:
    """This job's shards already in `shard_dir`: kept (--resume), removed (--overwrite) or refused.
    A killed job's partial shards are continued with --resume, else discarded. `--overwrite` also
    removes shards beyond the split (an earlier run's, cut from more inputs: a second round of
    `--update` jobs often embeds fewer), which no job of this run would replace."""
    if overwrite:
        remove_shards(shard_dir, [i for i in shard_outputs(shard_dir, partial=True) if i >= split.shards])
    if overwrite or not resume:
        remove_shards(shard_dir, mine, finished=overwrite)
    present = sorted(set(shard_outputs(shard_dir)) & set(mine))
    if present and not resume:
        raise UsageError(
            f"{shard_paths(shard_dir, present[0]).out} already exists; pass --resume to keep this job's finished shards "
            "or --overwrite to redo them"
        )
    return finished_shards(shard_dir, split, present)
