"""`bit embed --engine ray`: the run a local `bit embed` makes, computed on a Ray cluster.

The driver (this process) lists the inputs once, streaming them into `inputs.jsonl` in the shard
directory (`OUT.npy.shards/` beside the output, or `shard_dir`), and cuts the list into shards
of whole batches (`shards.py`). Ray Data runs the unfinished shards through `map_batches` with
a fixed pool of actors (`ActorPoolStrategy`): each actor loads the model once through
`bitcli.load` (on a GPU with `num_gpus_per_worker`), reads its shard's entries from the list,
embeds them with the local pipeline and publishes the shard folder atomically. The driver only
sees one small row per finished shard (its counts), reports progress, and at the end assembles
the shards into `OUT.npy`, the manifest and the error list (`combine.py`), then removes the
shard directory.

Where the files live. Workers read `inputs.jsonl` and write the shard folders themselves, so
the shard directory must be the same path on every node: any directory on a single machine (a
local cluster), or a shared POSIX filesystem (NFS, Lustre, CephFS, ...) mounted at the same path
on every node of a cluster, and so must the images. Object stores (s3://) are not supported.
Relative input paths are resolved from the driver's working directory, which workers enter.

Crashes. A worker that dies mid-shard leaves at most a temporary `.shard-*` folder; Ray restarts
the actor and retries the shard. When the driver dies, its actors go with it; `--resume`
re-lists the inputs, checks them and the options against `run.json`, and runs only the shards
without a folder.

The cluster: `address` (`--ray-address`), else Ray's own `RAY_ADDRESS`, else a new local
cluster on this machine (never silently the last cluster some other program started here: pass
`auto` for that). A program that already called `ray.init` keeps its connection.
"""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from pathlib import Path
from typing import Iterable

from bitcli.distributed.combine import OnFailure, combine
from bitcli.distributed.ray_pool import RayOptions, ShardPool, connect, import_ray, with_threads
from bitcli.distributed.seams import EmbedPaths, EmbedSummary, InputError, InputItem, UsageError, check_output, finished_inputs
from bitcli.distributed.shardfiles import describe_difference, finished_shards, remove_directory, remove_temporary, shard_folders
from bitcli.distributed.shards import Split, default_shard_size, spool_inputs
from bitcli.distributed.worker import EmbedJob, OnProgress, report_progress

INPUTS_FILE = "inputs.jsonl"
RUN_FILE = "run.json"
RUN_FORMAT = "bitcli-embed-run"
INPUTS_CHANGED = "inputs changed since the interrupted run; pass --overwrite to start again"


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
) -> EmbedSummary | None:
    """Embed `entries` (expanded inputs, streamed) on a Ray cluster into `paths`, as locally.

    Returns what was written, or None for `--resume` of an output that is already complete.
    `progress` is called at the start and after each shard; `on_failure` for each failed
    input, in input order, once the output is assembled. Library code: nothing is printed.
    """
    ray = import_ray()
    if paths.out is None:
        raise UsageError("--engine ray keeps shards beside the output: give -o OUT.npy, not -o -")
    check_output(paths, resume=resume, overwrite=overwrite)
    shard_dir = options.shard_dir or default_shard_dir(paths.out)
    if paths.out.exists() and resume and not shard_dir.exists():
        return _already_complete(entries, paths)
    _prepare(shard_dir, paths, resume=resume, overwrite=overwrite)
    try:
        size = options.shard_size or default_shard_size(job.options.batch_size)
        spool = spool_inputs(entries, shard_dir / INPUTS_FILE, batch_size=job.options.batch_size, shard_size=size)
        split = spool.split
        _write_run_record(shard_dir, split, job, resume=resume)
        done = finished_shards(shard_dir, split)
        remove_temporary(shard_dir)
        todo = [i for i in range(split.shards) if i not in done]
        if todo:
            with connect(ray, options) as ray:
                ShardPool(ray, spool, with_threads(ray, job, options), options, shard_dir, progress).run(todo, done)
        else:
            report_progress(progress, split, done.values())
    except BaseException:
        if not shard_folders(shard_dir):  # nothing finished worth a --resume: leave no directory
            _remove(shard_dir)
        raise
    summary = combine([shard_dir], paths, overwrite=True, split=split, on_failure=on_failure)
    summary.resumed_rows = sum(info.rows for info in done.values())
    _remove(shard_dir)
    return summary


def _remove(shard_dir: Path) -> None:
    """The run's shard directory: shards, input list (and a half-written one), run record."""
    leftovers = tuple(p.name for p in shard_dir.glob(f".{INPUTS_FILE}.*.tmp"))
    remove_directory(shard_dir, (INPUTS_FILE, RUN_FILE, *leftovers))


# -- the driver's bookkeeping ---------------------------------------------------------------


def _prepare(shard_dir: Path, paths: EmbedPaths, *, resume: bool, overwrite: bool) -> None:
    """Refuse or discard an earlier run's shard directory, as the local engine does its partial run."""
    partial = paths.partial
    if partial is not None and partial.exists():
        if not overwrite:
            raise UsageError(f"{partial} is a local run's; resume it with --engine local, or pass --overwrite")
        shutil.rmtree(partial)
    if shard_dir.exists() and not (resume or overwrite):
        raise UsageError(
            f"{paths.out}: an interrupted run left {shard_dir}; pass --resume to continue it or --overwrite to start over"
        )
    if overwrite and shard_dir.exists():
        _remove(shard_dir)
    shard_dir.mkdir(parents=True, exist_ok=True)


def _write_run_record(shard_dir: Path, split: Split, job: EmbedJob, *, resume: bool) -> None:
    """`run.json`: the split and options; a resumed run must repeat both."""
    record = {"format": RUN_FORMAT, "split": split.to_json(), "job": job.settings()}
    path = shard_dir / RUN_FILE
    if resume and path.exists():
        try:
            earlier = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise UsageError(f"{path} is not readable ({exc}); pass --overwrite to start over") from exc
        if earlier.get("split", {}).get("inputs") != split.inputs:
            raise UsageError(f"{shard_dir}: {INPUTS_CHANGED}")
        if earlier != record:
            raise UsageError(
                f"{shard_dir} was made with different settings ({describe_difference(earlier, record)}); "
                "resume with the same model and options, or pass --overwrite to start over"
            )
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _already_complete(entries: Iterable[InputItem | InputError], paths: EmbedPaths) -> None:
    """`--resume` of a finished output: nothing to do, if it was made from the same inputs."""
    if Counter(entry.path for entry in entries) != finished_inputs(paths):
        raise UsageError(f"{paths.out}: {INPUTS_CHANGED}")
    return None


