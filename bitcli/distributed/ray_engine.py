"""`bit embed --engine ray`: the run a local `bit embed` makes, computed on a Ray cluster
(docs/distributed.md).

The driver holds the output's writer (its partial folder and lock) from start to end, streams
the inputs into `inputs.jsonl` in the shard directory, cuts them into shards of whole batches
(`shards.py`), runs the unfinished ones on a pool of Ray actors (`ray_pool.py`), then commits the
shards through its writer (`combine.concatenate`), publishes and removes the shard directory.
It never loads the model: it makes the settings record from the checkpoint's files
(`EmbedJob.fingerprint`); shards made otherwise (an interrupted run's with other weights or
inputs, or a node's) are refused. `inputs.jsonl` marks the shard directory as a Ray run's.
The shard directory and the images must be the same path on every node.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from bitcli.distributed.combine import OnFailure, concatenate, find_shards, held, plan
from bitcli.distributed.ray_pool import RayOptions, ShardPool, connect, import_ray, with_threads
from bitcli.distributed.shards import (
    UPDATE_PLAN, check_alike, default_shard_size, finished_shards, make_shard_dir,
    remove_directory, shard_outputs, spool_inputs,
)
from bitcli.errors import InputError, UsageError
from bitcli.inputs import InputItem
from bitcli.store.files import inputs_digest, read_json_record, run_state
from bitcli.store.paths import EmbedPaths, check_output
from bitcli.store.publish import recover
from bitcli.store.collection import in_batches, stored_results
from bitcli.store.writer import INPUTS_CHANGED, EmbedSummary, EmbedWriter
from bitcli.distributed.worker import EmbedJob, OnProgress, report_progress

INPUTS_FILE = "inputs.jsonl"
ENGINE = "bit embed --engine ray"


def default_shard_dir(out: Path) -> Path:
    return out.with_name(out.name + ".shards")


def embed_on_ray(
    entries: Iterable[InputItem | InputError],
    paths: EmbedPaths,
    job: EmbedJob,
    options: RayOptions = RayOptions(),
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: OnProgress | None = None,
    on_failure: OnFailure | None = None,
) -> EmbedSummary:
    """Embed `entries` (expanded inputs, streamed) on a Ray cluster into `paths`, as locally.

    Returns what was written; for `--resume` of an output that is already complete, a summary
    with `already_complete` set and the finished run's failure count (nothing is written).
    `progress` is called at the start and after each shard; `on_failure` for each failed
    input, in input order, once the output is published. Library code: nothing is printed.
    """
    ray = import_ray()
    if paths.out is None:
        raise UsageError("--engine ray keeps shards beside the output: give -o OUT.npy, not -o -")
    shard_dir = options.shard_dir or default_shard_dir(paths.out)
    fingerprint, dim = job.fingerprint()  # what the workers will record: a model error stops the run here
    recover(paths)  # a publication a kill interrupted, completed first
    if resume and paths.out.exists() and not shard_dir.exists() and not os.path.lexists(paths.partial):
        check_output(paths, resume=resume, overwrite=overwrite)
        return _already_complete(entries, paths, job, _record(job, fingerprint, dim, None))
    # Held to the end: a second run on the output is refused meanwhile. A --resume whose driver
    # stopped before committing any row has no partial run left, only its shards: it replaces OUT.
    again = resume and paths.partial.is_dir()
    check_output(paths, resume=resume, overwrite=overwrite, exists="pass --overwrite to replace it (or --resume)")
    writer = EmbedWriter(paths, dim=dim, dtype=job.dtype, resume=again, overwrite=overwrite or (resume and not again),
                         made=_record(job, fingerprint, dim, None))
    with held(writer):
        _prepare(shard_dir, paths, resume=resume, overwrite=overwrite)
        try:
            size = options.shard_size or default_shard_size(job.options.batch_size)
            spool = spool_inputs(entries, shard_dir / INPUTS_FILE, batch_size=job.options.batch_size, shard_size=size)
            split = spool.split
            record = _record(job, fingerprint, dim, split.inputs)
            made = {k: record[k] for k in ("settings", "dim", "dtype")}
            done = finished_shards(shard_dir, split, changed=f"{shard_dir}: {INPUTS_CHANGED}")  # of these inputs (else refused) ...
            for info in done.values():  # ... and made as this run makes its rows (other weights are refused, never mixed)
                check_alike(info, split, made, other=str(shard_dir), names=("then", "now"),
                            other_run="{other} was made with different settings ({difference}); "
                            "resume with the same model and options, or pass --overwrite to start over")
            todo = [i for i in range(split.shards) if i not in done]
            if todo:
                with connect(ray, options) as ray:
                    ShardPool(ray, spool, with_threads(ray, job, options), options, shard_dir, progress).run(todo, done)
            else:
                report_progress(progress, split, done.values())
        except BaseException:
            if not shard_outputs(shard_dir, partial=True):  # nothing worth a --resume: leave no directory
                _remove(shard_dir)
            raise
        shards = plan(find_shards([shard_dir]), [shard_dir], split=split)
        # The workers made the rows as the driver recorded (a node's cache may hold another commit).
        check_alike(shards[0], split, made, names=("on the workers", "here"),
                    other_run="{shard} was made with other settings than this run's ({difference}); "
                    "give every node the same model, or pass --overwrite to start over")
        summary = concatenate(writer, shards, on_failure)
    summary.resumed_rows = sum(info.rows for info in done.values())
    _remove(shard_dir)
    return summary


def groups_on_ray(
    job: EmbedJob, options: RayOptions, scratch: Path, progress: OnProgress | None = None
) -> Callable[[list[str]], Iterator[list[Any]]]:
    """For `bit embed --update --engine ray`: a drop-in for `Embedder.embed_groups` that embeds
    the paths an update must embed on the cluster, as a scratch collection (`scratch`, beside the
    output: shared storage, like the shards), then yields them as results, one batch a group, in
    input order with the failures in their places; the scratch files are removed after. The
    update copies the kept rows and publishes as a local one does."""
    def groups(todo: list[str]) -> Iterator[list[Any]]:
        paths = EmbedPaths.for_output(scratch)
        try:
            entries = [InputItem(i, str(getattr(p, "path", p))) for i, p in enumerate(todo)]
            embed_on_ray(entries, paths, job, options, overwrite=True, progress=progress)
            yield from in_batches(stored_results(paths, [entry.path for entry in entries]), job.options.batch_size)
        finally:
            for path in paths.set_files().values():
                path.unlink(missing_ok=True)

    return groups


def leftover_ray_run(out: Path | None, *, overwrite: bool) -> Path | None:
    """Before a local run of `out`: the shard directory an interrupted `--engine ray` run left
    (its input list), which a local run neither continues nor may leave behind. Refused (exit 2,
    one line naming `--engine ray --resume`); with `overwrite`, removed and returned (None: none)."""
    shard_dir = None if out is None else default_shard_dir(out)
    if shard_dir is None or not (shard_dir / INPUTS_FILE).is_file():
        return None
    if not overwrite:
        raise UsageError(f"{shard_dir} holds the shards of an interrupted {ENGINE} run, which a local run does not continue; "
                         "continue it with --engine ray --resume, or pass --overwrite to start over")
    _remove(shard_dir)
    return shard_dir


def _remove(shard_dir: Path) -> None:
    """The run's shard directory: shards, input list (and a half-written one), run record."""
    leftovers = tuple(p.name for p in shard_dir.glob(f".{INPUTS_FILE}.*.tmp"))
    remove_directory(shard_dir, (INPUTS_FILE, UPDATE_PLAN, *leftovers))


# -- the driver's bookkeeping ---------------------------------------------------------------


def _prepare(shard_dir: Path, paths: EmbedPaths, *, resume: bool, overwrite: bool) -> None:
    """Refuse or discard an earlier run's shard directory, as the local engine does its partial run."""
    if os.path.lexists(shard_dir) and not shard_dir.is_dir():
        make_shard_dir(shard_dir)  # refuses a file or a dangling link, naming it; never removes it
    if shard_dir.exists() and not (resume or overwrite):
        raise UsageError(
            f"{paths.out}: an interrupted run left {shard_dir}; pass --resume to continue it or --overwrite to start over"
        )
    if resume and not overwrite and shard_outputs(shard_dir) and not (shard_dir / INPUTS_FILE).exists():
        # Shards of `--shard I/N` jobs: not cut by a driver (no input list), so it neither
        # keeps them nor publishes them as this run's; bit combine is their command.
        raise UsageError(
            f"{shard_dir} holds shards of bit embed --shard jobs, not of an interrupted Ray run; "
            "assemble them with bit combine, or pass --overwrite to start over"
        )
    if overwrite and shard_dir.exists():
        _remove(shard_dir)
    make_shard_dir(shard_dir)


def _record(job: EmbedJob, fingerprint: dict[str, Any], dim: int, inputs: str | None) -> dict[str, Any]:
    """What a local run of `job` records (`files.run_state`: the settings record, the rows' shape,
    the input digest), with the runtime the driver knows: the device as given, the batch size."""
    return {**run_state(dim, job.dtype, {**fingerprint, "device": job.options.device}, None), "inputs": inputs}


def _already_complete(
    entries: Iterable[InputItem | InputError], paths: EmbedPaths, job: EmbedJob, made: dict[str, Any]
) -> EmbedSummary:
    """`--resume` of a finished output: nothing to do if its run record holds the settings record
    `made` (whoever made it: a local run, bit combine, Ray), these inputs and batch size, and its
    files are as published (a local run's checks, by the writer); else UsageError."""
    runtime = {**((read_json_record(paths.record) or {}).get("runtime") or {}), "batch_size": job.options.batch_size}
    made = {**made, "runtime": runtime, "inputs": inputs_digest(entry.path for entry in entries)}  # not the device
    with EmbedWriter(paths, dim=made["dim"], dtype=job.dtype, resume=True, made=made) as writer:
        return writer.finish()
