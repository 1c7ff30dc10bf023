"""Combining shards: concatenate collections into exactly the files a local `bit embed` writes.

Every shard is a collection (`shards.py`). `OUT.npy` is one `.npy` header for the total row count
followed by every shard's rows in shard order (byte-identical to a local run: the batches were
the same); the manifest, the error list and the row identities are the shards', concatenated.
Before writing anything, the shards are checked: every shard of the split present exactly once,
all cut from the same input list with the same batch and shard size, all made with the same
settings. Publication is the store's own (`store.Assembly`: one set through the commit record),
so a kill leaves the old set or the new one. The shards are left as they are.

The row bytes are copied with `os.copy_file_range` where the filesystem offers it (a reflink or
server-side copy), else in 4 MiB chunks.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO, Any, Callable, Iterable, Sequence

import numpy as np

from bitcli.distributed.shards import (
    DuplicateShardError, MissingShardError, ShardError, ShardInfo, ShardMismatchError, Split, describe_difference,
    read_shard, shard_outputs,
)
from bitcli.errors import UsageError
from bitcli.store.publish import Assembly
from bitcli.store.files import npy_header, run_state
from bitcli.store.metadata import metadata_for, read_metadata
from bitcli.store.paths import EmbedPaths, writing
from bitcli.store.writer import EmbedSummary
from bitcli.util import name_some

_CHUNK = 1 << 22

OnFailure = Callable[[str, str], None]  # (path, reason) of a failed input, in input order


def find_shards(sources: Iterable[Path]) -> list[ShardInfo]:
    """Every shard in `sources`: shard directories, or shards' arrays themselves."""
    found: list[ShardInfo] = []
    seen: set[str] = set()
    for source in sources:
        source = Path(source)
        if source.is_file():
            shards = [EmbedPaths.for_output(source)]
        elif source.is_dir():
            shards = list(shard_outputs(source).values())
        else:
            raise UsageError(f"{source}: not a shard directory (no such directory)")
        for paths in shards:
            key = os.path.realpath(paths.out)
            if key not in seen:  # the same shard named twice is one shard, not a duplicate
                seen.add(key)
                found.append(read_shard(paths))
    return found


def plan(shards: Sequence[ShardInfo], sources: Sequence[Path], *, split: Split | None = None) -> list[ShardInfo]:
    """The shards in order, once each, all of one run and split; else a ShardError (exit 2)."""
    if not shards:
        where = ", ".join(str(s) for s in sources[:3]) + (" ..." if len(sources) > 3 else "")
        raise MissingShardError(f"no shard outputs in {where}; run the shards first (bit embed ... --shard I/N)")
    ordered = sorted(shards, key=lambda s: (s.index, str(s.out)))
    first = ordered[0]
    reference_split = split or first.split
    for shard in ordered:
        if shard.split != reference_split:
            raise ShardMismatchError(
                f"{shard.out} and {first.out} are of different runs ({shard.split.unlike(reference_split)}); "
                "combine the shards of one run"
            )
        names = (f"in {shard.out.name}", f"in {first.out.name}")
        if difference := describe_difference(shard.settings(), first.settings(), names):
            raise ShardMismatchError(
                f"{shard.out} was made with other settings than {first.out} ({difference}); rerun it with the same model and options"
            )
    by_index: dict[int, ShardInfo] = {}
    for shard in ordered:
        if shard.index in by_index:
            raise DuplicateShardError(f"shard {shard.index} is both {by_index[shard.index].out} and {shard.out}; keep one of them")
        by_index[shard.index] = shard
    missing = [i for i in range(reference_split.shards) if i not in by_index]
    if missing:
        raise MissingShardError(
            f"{len(missing)} of {reference_split.shards} shards have no output yet "
            f"(shard{'s' if len(missing) > 1 else ''} {name_some(missing)}); "
            "run them (bit embed ... --shard I/N) and combine again"
        )
    return [by_index[i] for i in range(reference_split.shards)]


def combine(
    sources: Sequence[Path],
    paths: EmbedPaths,
    *,
    overwrite: bool = False,
    split: Split | None = None,
    on_failure: OnFailure | None = None,
) -> EmbedSummary:
    """Check the shards in `sources` and publish their concatenation as `paths`.

    `split`: the split the shards must have; None takes the first shard's. `on_failure` is
    called for every failed input, in input order, once the files are published.
    """
    if paths.out is None:
        raise UsageError("combining shards writes a file: give -o OUT.npy, not -o -")
    with Assembly(paths, by="bit combine", overwrite=overwrite) as assembly:  # the output checked first
        shards = plan(find_shards(sources), list(sources), split=split)
        check_outside(paths, shards)
        return assemble(shards, assembly, on_failure)


def check_outside(paths: EmbedPaths, shards: Sequence[ShardInfo]) -> None:
    """Refuse (exit 2) an output that is a file of a shard being combined: publishing it would
    replace that shard (a job's work) with the whole set."""
    taken = {os.path.realpath(p): s.out for s in shards for p in (*s.paths.set_files().values(), s.paths.partial)}
    for target in paths.set_files().values():
        shard = taken.get(os.path.realpath(target))
        if shard is not None:
            raise UsageError(f"{target}: a file of the shard {shard}, which this combine reads; write the combined files elsewhere")


def assemble(shards: list[ShardInfo], assembly: Any, on_failure: OnFailure | None = None) -> EmbedSummary:
    """Concatenate `shards` (planned: in order, of one run) into the held `assembly` and publish it."""
    first, paths, staged = shards[0], assembly.paths, assembly.staged
    dtype = np.dtype(first.dtype).newbyteorder("<")
    rows, failed = sum(s.rows for s in shards), sum(s.failed for s in shards)
    with writing(paths.out), open(assembly.data, "r+b", buffering=0) as array:
        array.truncate(0)
        array.write(npy_header(dtype, rows, first.dim))
        for shard in shards:
            length = shard.rows * first.dim * dtype.itemsize
            with _open_part(shard.out) as src:
                src.seek(os.fstat(src.fileno()).st_size - length)  # the header is whatever precedes the rows
                _copy_range(src, array, length)
        os.fsync(array.fileno())
        staged.array(array.tell())
    staged.file("manifest", _concatenation([s.paths.manifest for s in shards]))
    if failed:
        staged.file("errors", _concatenation([s.paths.errors for s in shards if s.failed]))
    # Relative row paths are relative to where the shard jobs ran, wherever combine runs.
    shard_meta = first.paths.sidecars.meta
    meta = metadata_for(paths, first.record, rows=rows, dim=first.dim, cwd=read_metadata(shard_meta).base_dir(shard_meta))
    staged.sidecar(meta, (row for shard in shards for row in shard.rows_and_identities()))
    # What a local run with these settings records, so that `--resume` checks it as a local one.
    state = {**run_state(first.dim, dtype.name, {}, None), **first.record, "inputs": first.split.inputs}
    staged.record(state, rows=rows, failed=failed)
    staged.publish()
    for path, reason in (f for shard in shards for f in shard.failures()) if on_failure else ():
        on_failure(path, reason)
    return EmbedSummary(
        rows=rows, dim=first.dim, dtype=dtype.name, failed=failed, out=paths.out, manifest=paths.manifest,
        errors_file=paths.errors if failed else None,
    )


def _open_part(path: Path) -> IO[bytes]:
    """A shard's file, unbuffered; one that cannot be opened is a damaged shard (exit 2)."""
    try:
        return open(path, "rb", buffering=0)
    except OSError as exc:
        raise ShardError(f"{path}: cannot read it ({exc.strerror or exc}); run that shard again") from None


def _copy_range(src: IO[bytes], dst: IO[bytes], length: int) -> None:
    copy = getattr(os, "copy_file_range", None)
    while length > 0 and copy is not None:
        try:
            done = copy(src.fileno(), dst.fileno(), length)
        except OSError:
            break  # not offered between these files: copy by hand from where it stopped
        if done == 0:
            break
        length -= done
    while length > 0:
        chunk = src.read(min(_CHUNK, length))
        if not chunk:
            raise ShardError(f"{src.name}: shorter than its header says; run that shard again")
        view = memoryview(chunk)
        while view:  # an unbuffered file may take part of a write
            view = view[dst.write(view):]
        length -= len(chunk)


def _concatenation(parts: list[Path]) -> Callable[[IO[bytes]], None]:
    """A writer of `parts`, byte for byte, one after the other (`StagedSet.file`)."""

    def write(target: IO[bytes]) -> None:
        for part in parts:
            with _open_part(part) as src:
                _copy_range(src, target, os.fstat(src.fileno()).st_size)

    return write
