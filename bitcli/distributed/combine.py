"""Assemble shard outputs into exactly the files a local `bit embed` writes.

`OUT.npy` is one `.npy` header for the total row count followed by every shard's rows in shard
order (byte-identical to `numpy.save` of the whole matrix, and to a local run: the batches were
the same); the manifest and the error list are the shards' `paths.txt` and `errors.txt`,
concatenated byte for byte. Before writing anything, the shards are checked: every shard of the
split present exactly once, all cut from the same input list with the same batch and shard
size, and all made with the same model, weights, preprocessing and options. Publication is the
embed store's own (`store.assembly`): the array is assembled in `OUT.npy.partial/data.npy` under
the folder's lock, the manifest, the error list, the metadata sidecar (`OUT.meta.json`,
`OUT.files.jsonl`: the shards record no file identities) and the run record `.OUT.npy.run.json`
are staged beside their final names, and all are published as one set through the commit record,
so a kill leaves the old set or the new one and `bit embed --resume` checks the result as it
checks a local run's. The shard folders are left as they are.

The row bytes are copied with `os.copy_file_range` where the filesystem offers it (a reflink or
server-side copy on XFS, btrfs, NFS 4.2), else read and written in 4 MiB chunks: the assembly of
10 million 2048-wide float32 rows moves 80 GB once.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO, Any, Callable, Iterable, Sequence

import numpy as np

from bitcli.distributed.seams import (
    Assembly,
    EmbedPaths,
    EmbedSummary,
    UsageError,
    metadata_for,
    name_some,
    npy_header,
    read_lines,
    run_state,
    writing,
)
from bitcli.distributed.shardfiles import ShardInfo, describe_difference, read_shard, shard_failures, shard_folders, shard_identities
from bitcli.distributed.shards import DuplicateShardError, MissingShardError, ShardError, ShardMismatchError, Split

_CHUNK = 1 << 22

OnFailure = Callable[[str, str], None]  # (path, reason) of a failed input, in input order


def find_shards(sources: Iterable[Path]) -> list[ShardInfo]:
    """Every shard in `sources`: shard directories, or shard folders themselves."""
    found: list[ShardInfo] = []
    seen: set[str] = set()
    for source in sources:
        source = Path(source)
        if (source / "shard.json").exists():
            folders = [source]
        elif source.is_dir():
            folders = list(shard_folders(source).values())
        else:
            raise UsageError(f"{source}: not a shard directory (no such directory)")
        for folder in folders:
            key = os.path.realpath(folder)
            if key not in seen:  # the same folder named twice is one shard, not a duplicate
                seen.add(key)
                found.append(read_shard(folder))
    return found


def plan(shards: Sequence[ShardInfo], sources: Sequence[Path], *, split: Split | None = None) -> list[ShardInfo]:
    """The shards in order, once each, all of one run and split; else a ShardError (exit 2)."""
    if not shards:
        where = ", ".join(str(s) for s in sources[:3]) + (" ..." if len(sources) > 3 else "")
        raise MissingShardError(f"no shard outputs in {where}; run the shards first (bit embed ... --shard I/N)")
    ordered = sorted(shards, key=lambda s: (s.index, str(s.folder)))
    first = ordered[0]
    reference_split = split or first.split
    for shard in ordered:
        if shard.split != reference_split:
            raise ShardMismatchError(
                f"{shard.folder} and {first.folder} are of different runs ({shard.split.unlike(reference_split)}); "
                "combine the shards of one run"
            )
        if shard.settings() != first.settings():
            names = (f"in {shard.folder.name}", f"in {first.folder.name}")
            raise ShardMismatchError(
                f"{shard.folder} was made with other settings than {first.folder} "
                f"({describe_difference(shard.settings(), first.settings(), names)}); rerun it with the same model and options"
            )
    by_index: dict[int, ShardInfo] = {}
    for shard in ordered:
        if shard.index in by_index:
            raise DuplicateShardError(
                f"shard {shard.index} is both {by_index[shard.index].folder} and {shard.folder}; keep one of them"
            )
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
    """Check the shards in `sources` and publish `paths` (OUT.npy, manifest, error list, sidecar,
    run record).

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
    """Refuse (exit 2) an output file inside a shard folder being combined: publishing it would
    replace that shard's own `paths.txt`, `rows.npy`, ... (a job's work) with the whole set's."""
    folders = {os.path.realpath(s.folder): s.folder for s in shards}
    for role, target in paths.set_files().items():
        where = os.path.realpath(target.parent)
        for real, folder in folders.items():
            if where == real or where.startswith(real + os.sep):
                raise UsageError(
                    f"{target}: inside the shard folder {folder}, which this combine reads; "
                    "write the combined files outside the shard folders"
                )


def assemble(shards: list[ShardInfo], assembly: Any, on_failure: OnFailure | None = None, **record: Any) -> EmbedSummary:
    """Write `shards` (planned: in order, of one run) into the held `assembly` and publish it:
    the array into its partial folder, the manifest and error list (the shards' files, byte for
    byte), the metadata sidecar and the run record staged, then all renamed as one set. `record`: extra entries for
    the run record (the Ray engine's job)."""
    first, paths, staged = shards[0], assembly.paths, assembly.staged
    dtype = np.dtype(first.dtype).newbyteorder("<")
    rows, failed = sum(s.rows for s in shards), sum(s.failed for s in shards)
    with writing(paths.out), open(assembly.data, "r+b", buffering=0) as array:
        array.truncate(0)
        array.write(npy_header(dtype, rows, first.dim))
        for shard in shards:
            _copy_rows(shard, array, first.dim * dtype.itemsize)
        os.fsync(array.fileno())
        staged.array(array.tell())
    staged.file("manifest", _concatenation([s.folder / "paths.txt" for s in shards]))
    if failed:
        staged.file("errors", _concatenation([s.folder / "errors.txt" for s in shards]))
    # The sidecar a local run writes (docs/collection.md), with the identities each shard took
    # before reading its files, so that `--update` keeps every unchanged row.
    meta = metadata_for(paths, {**first.fingerprint, "dtype": dtype.name}, rows=rows, dim=first.dim)
    identities = (identity for shard in shards for identity in shard_identities(shard))
    staged.sidecar(meta, zip(read_lines(staged.staged["manifest"]), identities))
    # What a local run with these settings records (the same fingerprint, dim, dtype and input
    # digest), so that `bit embed --resume` checks an assembled output exactly as a local one.
    state = {**run_state(first.dim, dtype.name, first.fingerprint, None), "inputs": first.split.inputs}
    staged.record(state, rows=rows, failed=failed, **record)
    staged.publish()
    if on_failure is not None:
        for shard in shards:
            for path, reason in shard_failures(shard):
                on_failure(path, reason)
    return EmbedSummary(
        rows=rows, dim=first.dim, dtype=dtype.name, failed=failed, out=paths.out, manifest=paths.manifest,
        errors_file=paths.errors if failed else None,
    )


def _copy_rows(shard: ShardInfo, dst: IO[bytes], nbytes_per_row: int) -> None:
    """Append shard's row bytes (rows.npy after its header) to the unbuffered file `dst`."""
    source = shard.folder / "rows.npy"
    length = shard.rows * nbytes_per_row
    with _open_part(source) as src:
        src.seek(os.fstat(src.fileno()).st_size - length)  # the header is whatever precedes the rows
        _copy_range(src, dst, length)


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
