"""Assemble shard outputs into exactly the files a local `bit embed` writes.

`OUT.npy` is one `.npy` header for the total row count followed by every shard's rows in shard
order (byte-identical to `numpy.save` of the whole matrix, and to a local run: the batches were
the same); the manifest and the error list are the shards' `paths.txt` and `errors.txt`,
concatenated byte for byte. Before writing anything, the shards are checked: every shard of the
split present exactly once, all cut from the same input list with the same batch and shard
size, and all made with the same model, weights, preprocessing and options. Publication follows
the embed store: the array is written under a temporary name next to `OUT.npy`, the manifest and
the error list are renamed into place, the array last; the shard folders are left as they are.

The row bytes are copied with `os.copy_file_range` where the filesystem offers it (a reflink or
server-side copy on XFS, btrfs, NFS 4.2), else read and written in 4 MiB chunks: the assembly of
10 million 2048-wide float32 rows moves 80 GB once.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from bitcli.distributed.seams import (
    EmbedPaths,
    EmbedSummary,
    UsageError,
    check_output,
    fsync_dir,
    metadata_for,
    name_some,
    npy_header,
    read_lines,
    write_metadata,
)
from bitcli.distributed.shardfiles import ShardInfo, describe_difference, read_shard, shard_failures, shard_folders
from bitcli.distributed.shards import DuplicateShardError, MissingShardError, ShardMismatchError, Split

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
    """Check the shards in `sources` and publish `paths` (OUT.npy, manifest, error list).

    `split`: the split the shards must have (the Ray engine passes its own); None takes the
    first shard's. `on_failure` is called for every failed input, in input order.
    """
    if paths.out is None:
        raise UsageError("combining shards writes a file: give -o OUT.npy, not -o -")
    check_output(paths, resume=False, overwrite=overwrite)
    shards = plan(find_shards(sources), list(sources), split=split)
    return _publish(shards, paths, on_failure)


def _publish(shards: list[ShardInfo], paths: EmbedPaths, on_failure: OnFailure | None) -> EmbedSummary:
    first = shards[0]
    dtype = np.dtype(first.dtype).newbyteorder("<")
    rows, failed = sum(s.rows for s in shards), sum(s.failed for s in shards)
    out = paths.out
    assert out is not None
    array = _TempFile(out)
    try:
        array.fh.write(npy_header(dtype, rows, first.dim))
        for shard in shards:
            _copy_rows(shard, array.fh, first.dim * dtype.itemsize)
        array.sync()
        _write_concatenation(paths.manifest, [s.folder / "paths.txt" for s in shards])
        if failed:
            _write_concatenation(paths.errors, [s.folder / "errors.txt" for s in shards])
        else:
            paths.errors.unlink(missing_ok=True)  # a stale list from an earlier run would mislead
        _write_sidecar(first, paths, rows, dtype)
        array.publish()
    except BaseException:
        array.discard()
        raise
    if on_failure is not None:
        for shard in shards:
            for path, reason in shard_failures(shard):
                on_failure(path, reason)
    return EmbedSummary(
        rows=rows, dim=first.dim, dtype=dtype.name, failed=failed, out=out, manifest=paths.manifest,
        errors_file=paths.errors if failed else None,
    )


def _write_sidecar(first: ShardInfo, paths: EmbedPaths, rows: int, dtype: np.dtype) -> None:
    """The metadata sidecar a local run writes (docs/collection.md), so that `bit search` finds
    the model; shards record no file identities, so `--update` would embed every row again."""
    meta = metadata_for(paths, {**first.fingerprint, "dtype": dtype.name}, rows=rows, dim=first.dim)
    write_metadata(paths.sidecars, meta, ((line, None) for line in read_lines(paths.manifest)))


class _TempFile:
    """A file written under a temporary name beside `path`, renamed onto it by `publish`."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        self.path, self.tmp = path, Path(tmp)
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(fd, 0o666 & ~mask)  # mkstemp makes 0600; give the usual permissions
        self.fh = os.fdopen(fd, "wb", buffering=0)  # unbuffered: copy_file_range writes at the fd's position

    def sync(self) -> None:
        os.fsync(self.fh.fileno())

    def publish(self) -> None:
        self.sync()
        self.fh.close()
        os.replace(self.tmp, self.path)
        fsync_dir(self.path.parent)

    def discard(self) -> None:
        self.fh.close()
        self.tmp.unlink(missing_ok=True)


def _copy_rows(shard: ShardInfo, dst, nbytes_per_row: int) -> None:
    """Append shard's row bytes (rows.npy after its header) to the unbuffered file `dst`."""
    source = shard.folder / "rows.npy"
    length = shard.rows * nbytes_per_row
    with open(source, "rb", buffering=0) as src:
        src.seek(os.path.getsize(source) - length)  # the header is whatever precedes the rows
        _copy_range(src, dst, length)


def _copy_range(src, dst, length: int) -> None:
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
            raise UsageError(f"{src.name}: shorter than its header says; run that shard again")
        dst.write(chunk)
        length -= len(chunk)


def _write_concatenation(path: Path, parts: list[Path]) -> None:
    target = _TempFile(path)
    try:
        for part in parts:
            with open(part, "rb", buffering=0) as src:
                _copy_range(src, target.fh, os.path.getsize(part))
        target.publish()
    except BaseException:
        target.discard()
        raise
