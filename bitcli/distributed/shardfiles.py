"""One shard's files, and the shard directory that holds them.

A finished shard is a folder `shard-000007/` in the shard directory:

    rows.npy     the shard's rows, exactly as numpy.save writes them
    paths.txt    row i's input path, one a line (the manifest's format)
    errors.txt   PATH<TAB>reason for each input of the shard that failed (the error list's)
    files.jsonl  row i's file identity, as the collection's row file has it (size, mtime, and
                 sha256 with --hash), taken before the file was read; a shard of an older
                 bitcli has none (its rows get null identities: `--update` embeds them again)
    shard.json   what made it: format, shard index, split (batch and shard size, the number
                 of entries and the sha256 of the whole input list), the fingerprint (model,
                 commit, weights, preprocessing, device, precision, options, dtype), feature
                 dimension, row and failure counts

It is written into a temporary folder `.shard-000007.*` and renamed into place, so it exists
complete or not at all, and when two workers finish the same shard the first one wins.
`combine.py` assembles the shards into the files a local run writes.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
from numpy.lib import format as npy_format

from bitcli.distributed.seams import (
    FileIdentity,
    settings_difference,
    escape_error_path,
    first_line,
    fsync_dir,
    manifest_problem,
    npy_header,
    unescape_error_path,
    UsageError,
)
from bitcli.distributed.shards import ShardError, ShardMismatchError, Split, shard_name

SHARD_FORMAT = "bitcli-embed-shard"
SHARD_VERSION = 1
SHARD_FILES = ("rows.npy", "paths.txt", "errors.txt", "files.jsonl", "shard.json")
_SHARD_NAME = re.compile(r"shard-(\d{6,})")

# One commit: the paths of a batch's rows, the rows [n, dim] (None when n == 0), (path, reason) failures.
Commit = tuple[Sequence[str], Any, Sequence[tuple[str, str]]]


@dataclass(frozen=True)
class ShardInfo:
    """A finished shard, as its `shard.json` describes it."""

    index: int
    split: Split
    fingerprint: dict[str, Any]
    dim: int
    dtype: str
    rows: int
    failed: int
    folder: Path

    def to_json(self) -> dict[str, Any]:
        return {
            "format": SHARD_FORMAT,
            "version": SHARD_VERSION,
            "shard": self.index,
            "split": self.split.to_json(),
            "fingerprint": self.fingerprint,
            "dim": self.dim,
            "dtype": self.dtype,
            "rows": self.rows,
            "failed": self.failed,
        }

    def settings(self) -> dict[str, Any]:
        """What must agree between shards of one output (JSON round trip: tuples equal lists)."""
        return json.loads(json.dumps({"fingerprint": self.fingerprint, "dim": self.dim, "dtype": self.dtype}))


def write_shard(
    shard_dir: Path,
    index: int,
    split: Split,
    *,
    fingerprint: dict[str, Any],
    dim: int,
    dtype: str,
    commits: Iterable[Commit],
    identities: Callable[[str], FileIdentity | None] | None = None,
) -> ShardInfo:
    """Write shard `index` from its batches' commits and publish it; the first writer wins.
    `identities(path)`: each row's file identity, taken before the file was read."""
    shard_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{shard_name(index)}.", dir=shard_dir))
    try:
        rows, failed = _write_files(tmp, dim, np.dtype(dtype).newbyteorder("<"), commits, identities or (lambda path: None))
        if rows + failed != split.count(index):
            raise RuntimeError(f"shard {index}: {rows} rows and {failed} failures for {split.count(index)} inputs")
        info = ShardInfo(index, split, dict(fingerprint), int(dim), np.dtype(dtype).name, rows, failed, tmp)
        _write_synced(tmp / "shard.json", (json.dumps(info.to_json(), indent=1, sort_keys=True) + "\n").encode("utf-8"))
        fsync_dir(tmp)
        return _publish(tmp, shard_dir / shard_name(index), info)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _write_files(
    folder: Path, dim: int, dtype: np.dtype, commits: Iterable[Commit], identities: Callable[[str], FileIdentity | None]
) -> tuple[int, int]:
    """rows.npy (header rewritten with the final count, as the embed store does), paths, errors,
    the rows' file identities."""
    rows = failed = 0
    text = {"encoding": "utf-8", "errors": "surrogateescape", "newline": "\n"}
    with open(folder / "rows.npy", "wb") as data, open(folder / "paths.txt", "w", **text) as manifest, open(
        folder / "errors.txt", "w", **text
    ) as errors, open(folder / "files.jsonl", "wb") as files:
        header_len = len(npy_header(dtype, 0, dim))
        data.write(npy_header(dtype, 0, dim))
        for paths, vectors, failures in commits:
            if paths:
                for path in paths:
                    problem = manifest_problem(path)
                    if problem:
                        raise ValueError(f"{path!r}: {problem}")
                array = np.asarray(vectors)
                if array.shape != (len(paths), dim):
                    raise ValueError(f"expected rows of shape ({len(paths)}, {dim}), got {array.shape}")
                data.write(np.ascontiguousarray(array.astype(dtype, copy=False)).tobytes())
                manifest.writelines(f"{path}\n" for path in paths)
                files.writelines(identity_line(path, identities(path)) for path in paths)
                rows += len(paths)
            for path, reason in failures:
                errors.write(f"{escape_error_path(str(path))}\t{reason}\n")
                failed += 1
            manifest.flush()  # after each batch: `inputs_in_flight` counts these lines
            errors.flush()
        header = npy_header(dtype, rows, dim)
        if len(header) != header_len:  # numpy pads the header for any row count; never expected
            raise RuntimeError("the .npy header length changed with the row count")
        data.seek(0)
        data.write(header)
        for fh in (data, manifest, errors, files):
            fh.flush()
            os.fsync(fh.fileno())
    return rows, failed


def identity_line(path: str, identity: FileIdentity | None) -> bytes:
    """One line of a row file (the collection's `OUT.files.jsonl` format)."""
    record = identity.to_dict(path) if identity is not None else {"path": path, "size": None, "mtime_ns": None}
    return (json.dumps(record, ensure_ascii=True) + "\n").encode("ascii")


def shard_identities(shard: ShardInfo) -> Iterator[FileIdentity | None]:
    """Each row's recorded file identity, in row order (None throughout for a shard without them)."""
    try:
        fh = open(shard.folder / "files.jsonl", "rb")
    except FileNotFoundError:
        yield from (None for _ in range(shard.rows))
        return
    with fh:
        count = 0
        for raw in fh:
            if count == shard.rows:
                break
            try:
                record = json.loads(raw)
                size = record.get("size")
                yield None if size is None else FileIdentity(int(size), int(record["mtime_ns"]), record.get("sha256"))
            except (ValueError, KeyError, TypeError):
                yield None  # a damaged line only costs that row's re-embedding on --update
            count += 1
        yield from (None for _ in range(shard.rows - count))


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _publish(tmp: Path, final: Path, info: ShardInfo) -> ShardInfo:
    try:
        os.rename(tmp, final)
    except OSError as exc:
        if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
            raise
        shutil.rmtree(tmp, ignore_errors=True)  # another worker finished this shard first
        existing = read_shard(final)
        if existing.split != info.split or existing.settings() != info.settings():
            raise ShardMismatchError(f"{final} was made by another run; pass --overwrite to start over") from None
        return existing
    fsync_dir(final.parent)
    return replace(info, folder=final)


def read_shard(folder: Path, *, check_files: bool = True) -> ShardInfo:
    """The shard in `folder`, its files checked against `shard.json` (ShardError if damaged)."""
    try:
        meta = json.loads((folder / "shard.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ShardError(f"{folder}: not a finished shard ({first_line(exc)}); remove it or run that shard again") from exc
    if not isinstance(meta, dict) or meta.get("format") != SHARD_FORMAT or meta.get("version") != SHARD_VERSION:
        raise ShardError(f"{folder}: not a bitcli shard of format version {SHARD_VERSION}")
    try:
        info = ShardInfo(
            index=int(meta["shard"]),
            split=Split.from_json(meta["split"]),
            fingerprint=dict(meta["fingerprint"]),
            dim=int(meta["dim"]),
            dtype=str(meta["dtype"]),
            rows=int(meta["rows"]),
            failed=int(meta["failed"]),
            folder=folder,
        )
        in_range = 0 <= info.index < info.split.shards and info.rows + info.failed == info.split.count(info.index)
    except (KeyError, TypeError, ValueError) as exc:
        raise ShardError(f"{folder}/shard.json: malformed ({first_line(exc)})") from exc
    if not in_range:
        raise ShardError(f"{folder}/shard.json: its counts do not fit its split; run that shard again")
    if check_files:
        _check_files(info)
    return info


def _check_files(info: ShardInfo) -> None:
    folder = info.folder
    try:
        with open(folder / "rows.npy", "rb") as fh:
            version = npy_format.read_magic(fh)
            reader = npy_format.read_array_header_1_0 if version == (1, 0) else npy_format.read_array_header_2_0
            shape, fortran, dtype = reader(fh)
            header_len = fh.tell()
        size = (folder / "rows.npy").stat().st_size
        lines = [_count_lines(folder / name) for name in ("paths.txt", "errors.txt")]
    except (OSError, ValueError) as exc:
        raise ShardError(f"{folder}: damaged shard ({first_line(exc)}); remove it and run that shard again") from exc
    expected = (info.rows, info.dim)
    wrong_type = fortran or dtype != np.dtype(info.dtype).newbyteorder("<")
    if shape != expected or wrong_type or size != header_len + info.rows * info.dim * dtype.itemsize:
        raise ShardError(f"{folder}/rows.npy does not hold {expected[0]} rows of {info.dim} {info.dtype}; run that shard again")
    if lines != [info.rows, info.failed]:
        raise ShardError(f"{folder}: paths.txt or errors.txt does not match shard.json; run that shard again")


def _count_lines(path: Path) -> int:
    count = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            count += chunk.count(b"\n")
    return count


def shard_failures(shard: ShardInfo) -> Iterator[tuple[str, str]]:
    """(path, reason) of each input of `shard` that failed, in input order."""
    if not shard.failed:
        return
    with open(shard.folder / "errors.txt", encoding="utf-8", errors="surrogateescape", newline="\n") as fh:
        for line in fh:
            path, _, reason = line.rstrip("\n").partition("\t")
            yield unescape_error_path(path), reason


# -- shard directories -----------------------------------------------------------------------


def make_shard_dir(directory: Path) -> None:
    """Create the shard directory (and its parents) if missing; one that cannot be a directory
    (a file, a dangling link, an unwritable parent) is a usage error naming it (exit 2)."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise UsageError(f"{directory}: not a directory, so shards cannot go there; give --shard-dir DIR") from None
    except OSError as exc:
        raise UsageError(f"{directory}: cannot create the shard directory ({exc.strerror or exc}); give --shard-dir DIR") from None


def shard_folders(directory: Path) -> dict[int, Path]:
    """The published shard folders in `directory` (temporary `.shard-*` ones are not)."""
    found: dict[int, Path] = {}
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return found
    for name in names:
        match = _SHARD_NAME.fullmatch(name)
        if match and (directory / name).is_dir():
            found[int(match[1])] = directory / name
    return found


def finished_shards(directory: Path, split: Split, indices: Iterable[int] | None = None) -> dict[int, ShardInfo]:
    """The finished shards of `split` in `directory` (all, or those in `indices`).

    A shard of another split (other inputs, batch or shard size) is refused: the directory
    belongs to another run."""
    wanted = None if indices is None else set(indices)
    done = {}
    for index, folder in shard_folders(directory).items():
        if wanted is not None and index not in wanted:
            continue
        info = read_shard(folder)
        if info.split != split:
            difference = info.split.unlike(split)
            raise ShardMismatchError(f"{folder} belongs to another run ({difference}); pass --overwrite to start over")
        done[index] = info
    return done


def inputs_in_flight(directory: Path) -> int:
    """Inputs already done in the shards being written into `directory` (the lines of their
    temporary folders' paths.txt and errors.txt, flushed after each batch): progress between
    whole shards. A folder renamed or removed meanwhile counts 0."""
    done = 0
    try:
        names = [name for name in os.listdir(directory) if name.startswith(".shard-")]
    except OSError:
        return 0
    for name in names:
        for part in ("paths.txt", "errors.txt"):
            try:
                done += _count_lines(directory / name / part)
            except OSError:
                pass
    return done


def remove_temporary(directory: Path, indices: Iterable[int] | None = None) -> None:
    """Remove the temporary folders killed workers left (all, or those of `indices`)."""
    wanted = None if indices is None else {shard_name(i) for i in indices}
    for name in os.listdir(directory) if directory.is_dir() else ():
        stem = name[1:].split(".", 1)[0]
        if name.startswith(".shard-") and (wanted is None or stem in wanted) and (directory / name).is_dir():
            shutil.rmtree(directory / name, ignore_errors=True)


def remove_shards(directory: Path, indices: Iterable[int] | None = None) -> None:
    """Remove finished shard folders (all, or those of `indices`): only files bitcli writes."""
    wanted = None if indices is None else set(indices)
    for index, folder in shard_folders(directory).items():
        if wanted is None or index in wanted:
            _remove_files(folder, SHARD_FILES)
    remove_temporary(directory, indices)


def remove_directory(directory: Path, files: Sequence[str] = ()) -> None:
    """Remove the shards, the named `files` and then `directory`, if nothing else lives there."""
    remove_shards(directory)
    _remove_files(directory, files)


def _remove_files(folder: Path, names: Iterable[str]) -> None:
    for name in names:
        (folder / name).unlink(missing_ok=True)
    try:
        folder.rmdir()
    except OSError:
        pass  # something else lives there: leave it


def describe_difference(first: dict[str, Any], second: dict[str, Any], names: tuple[str, str] = ("then", "now")) -> str:
    """The settings' one wording of a difference (`store.settings.describe_difference`), for shards."""
    return settings_difference(first, second, names, most=2, skip=()) or "unknown"
