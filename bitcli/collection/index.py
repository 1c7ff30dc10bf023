"""Open an embedding written by `bit embed` (the `.npy`, its manifest, its metadata) for reading.

The array is opened once and memory-mapped read-only: nothing is read until asked for, and every
later read (blocks, single rows) goes through that open file, so an index whose `.npy` is
replaced meanwhile (a `bit embed --update` or `--overwrite` publishing by rename) keeps reading
the very rows its manifest describes, never the new file's under the old paths. Exact search
and dedup map it block by block (`blocks.MappedRows`); `iter_blocks` reads float32 copies of
blocks into one reused buffer (the approximate index's build), `take` single rows.

Everything that makes an index unusable is a `UsageError` naming the file and what to do: a
missing or malformed `.npy`, a manifest whose line count differs from the row count, metadata
that disagrees with the array, an empty index (unless `allow_empty`). A plain `.npy` from
elsewhere (no `OUT.meta.json`) opens with `meta = None`: its rows can be searched, but a query
image can only be embedded with an explicitly chosen model.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, BinaryIO, Iterable, Iterator

import numpy as np

from bitcli.collection.blocks import BlockReader, read_exactly
from bitcli.errors import UsageError
from bitcli.inputs import STDIN_PATH_MAX as PATH_MAX
from bitcli.store.metadata import EmbeddingMetadata, SidecarPaths, read_metadata, sidecar_file
from bitcli.util import FileTooLarge, beside, open_regular, read_capped

# A block of float32 rows is at most this big (the raw rows read from disk add at most as much).
DEFAULT_BLOCK_BYTES = 64 << 20
_FLOAT_DTYPES = ("float16", "float32", "float64")


@dataclass
class EmbeddingIndex:
    """An opened embedding: `vectors` [N, D] (read-only memory map), `paths[i]` = row i's file.

    `recorded` holds the paths as the manifest stores them (as the inputs were given, relative
    to the directory `bit embed` ran in, the header's `cwd`); `paths` the same files as paths
    that resolve from the current directory: as stored when they already do (absolute, or the
    current directory is the one recorded), else joined to the recorded directory. Every path
    search and dedup print comes from `paths`."""

    array_path: Path
    vectors: np.ndarray
    paths: list[str]
    manifest_path: Path
    meta: EmbeddingMetadata | None = None
    meta_path: Path | None = None
    file: BinaryIO | None = None  # the array file as opened: every read goes through it
    recorded: list[str] | None = None  # the manifest's lines (None: the same as `paths`)

    def __post_init__(self) -> None:
        if self.recorded is None:
            self.recorded = self.paths
            base = self.base_dir
            if base and os.path.abspath(base) != os.path.abspath(os.getcwd()):
                self.paths = [p if os.path.isabs(p) else os.path.join(base, p) for p in self.recorded]

    def close(self) -> None:
        if self.file is not None:
            self.file.close()

    def stat(self) -> os.stat_result:
        """The opened array file's status (not whatever the name points at now)."""
        return os.fstat(self.file.fileno()) if self.file is not None else os.stat(self.array_path)

    @property
    def rows(self) -> int:
        return int(self.vectors.shape[0])

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    @cached_property
    def base_dir(self) -> str | None:
        """The directory `bit embed` ran in: relative row paths are relative to it."""
        sample = next((p for p in self.recorded or () if not os.path.isabs(p)), None)
        return self.meta.base_dir(self.meta_path, sample) if self.meta is not None else None

    def block_rows(self, block_bytes: int = DEFAULT_BLOCK_BYTES) -> int:
        """Rows per block so that one float32 block takes about `block_bytes`."""
        return max(1, block_bytes // max(1, self.dim * 4))

    def iter_blocks(self, block_rows: int | None = None, start: int = 0, stop: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """(first row, float32 [n, D] block) over rows [start, stop), in order.

        The yielded array is reused for the next block: copy it to keep it."""
        stop = self.rows if stop is None else min(stop, self.rows)
        block_rows = block_rows or self.block_rows()
        if stop <= start:
            return
        reader = BlockReader(self, min(block_rows, stop - start))
        try:
            for first in range(start, stop, block_rows):
                yield first, reader.read(first, min(first + block_rows, stop))
        finally:
            reader.close()

    def take(self, rows: Iterable[int]) -> np.ndarray:
        """float32 copies of the given rows, in the order given.

        Read with `preadv`, not through the memory map: touching scattered rows of a map makes
        the kernel map their neighbours too (fault-around), and the process's resident set would
        grow towards the file's size although it holds only these rows."""
        rows = np.asarray(list(rows), dtype=np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= self.rows):
            raise IndexError(f"row out of range for {self.rows} rows")
        offset = getattr(self.vectors, "offset", None)
        if rows.size == 0 or offset is None or not self.vectors.flags.c_contiguous or not hasattr(os, "preadv"):
            return np.asarray(self.vectors[rows], dtype=np.float32).reshape(rows.size, self.dim)
        row_bytes = self.dim * self.vectors.dtype.itemsize
        raw = np.empty((rows.size, row_bytes), dtype=np.uint8)
        with self._reader() as fd:
            for i, row in enumerate(rows.tolist()):
                read_exactly(fd, memoryview(raw[i]), offset + row * row_bytes, self.array_path)
        return raw.view(self.vectors.dtype).reshape(rows.size, self.dim).astype(np.float32)

    @contextmanager
    def _reader(self) -> Iterator[int]:
        """A descriptor of the opened array file (a caller-built index without one opens the name)."""
        if self.file is not None:
            yield self.file.fileno()
            return
        fd = os.open(self.array_path, os.O_RDONLY)
        try:
            yield fd
        finally:
            os.close(fd)

    def describe(self) -> dict[str, Any]:
        """What the collection holds (`bit info`): JSON-ready, without reading any row."""
        info = self.stat()
        meta = self.meta
        report: dict[str, Any] = {
            "path": str(self.array_path),
            "rows": self.rows,
            "feature_dim": self.dim,
            "dtype": self.vectors.dtype.name,
            "bytes": info.st_size,
            "manifest": str(self.manifest_path),
            "metadata": str(self.meta_path) if self.meta_path is not None else None,
            "modified": _iso_time(info.st_mtime_ns),
        }
        if meta is None:
            return {**report, "made_by": None}
        settings = meta.settings.to_json()
        return {
            **report,
            "made_by": {"bitcli_version": meta.bitcli_version or None, "cwd": meta.cwd, "runtime": meta.runtime},
            "model": settings["model"],
            "normalize": settings["normalize"],
            "identity": "size, mtime and sha256" if settings["content_hash"] else "size and mtime",
            "preprocessing": settings["preprocessing"],
            "decode": settings["decode"],
        }

    def find_rows(self, queries: Iterable[str]) -> dict[str, int]:
        """For each query path that names a row, the first such row.

        A query matches a row when the strings are equal, or when both name the same file: the
        row's path taken relative to the directory `bit embed` ran in (`meta.cwd`), the query's
        relative to the current directory. The paths are searched as one NUL-separated string
        (paths cannot hold NUL): a million rows in milliseconds rather than a second of Python."""
        wanted = {q: _absolute(q, None) for q in queries}
        if not wanted:
            return {}
        recorded, paths, base = self._joined_recorded, self._joined_paths, self.base_dir
        found: dict[str, int] = {}
        for query, absolute in wanted.items():
            rows = [row for row in (_first_line(recorded, query), self._same_file(paths, absolute, base)) if row is not None]
            if rows:
                found[query] = min(rows)
        return found

    @cached_property
    def _joined_recorded(self) -> tuple[str, list[str]]:
        """The recorded paths as "\0a\0b\0...\0", and the list."""
        return _joined(self.recorded)

    @cached_property
    def _joined_paths(self) -> tuple[str, list[str]]:
        return self._joined_recorded if self.paths is self.recorded else _joined(self.paths)

    @staticmethod
    def _same_file(joined: tuple[str, list[str]], absolute: str, base: str | None) -> int | None:
        """The first row whose path ends in `absolute`'s file name and names that file."""
        text, lines = joined
        name = os.path.basename(absolute)
        if not name:
            return None
        counted, row, at = 0, 0, 0
        while True:
            at = text.find(name + "\0", at)
            if at < 0:
                return None
            before = text[at - 1]
            if before in ("\0", "/"):
                row += text.count("\0", counted, at)
                counted = at
                start = text.rfind("\0", 0, at)
                if _absolute(lines[row - 1], base) == absolute and text[start + 1 : at + len(name)] == lines[row - 1]:
                    return row - 1
            at += len(name)

    def locate(self, path: str) -> str | None:
        """A row's file as recorded (a relative path from the directory `bit embed` ran in, never
        from wherever the reader stands), when it exists; None when it does not."""
        base = self.base_dir
        full = path if os.path.isabs(path) or not base else os.path.join(base, path)
        return full if os.path.exists(full) else None


def _joined(lines: list[str]) -> tuple[str, list[str]]:
    return "\0" + "\0".join(lines) + "\0", lines


def _first_line(joined: tuple[str, list[str]], line: str) -> int | None:
    """The first row whose path is `line` exactly."""
    text, lines = joined
    at = -1 if "\0" in line else text.find("\0" + line + "\0")
    if at < 0:
        return None
    row = text.count("\0", 0, at)
    if row < len(lines) and lines[row] == line:
        return row
    return lines.index(line) if line in lines else None  # a manifest line holding NUL shifted the count


def _absolute(path: str, base: str | None) -> str:
    if base and not os.path.isabs(path):
        path = os.path.join(base, path)
    return os.path.normpath(os.path.abspath(path))


def open_index(array_path: str | os.PathLike[str], *, manifest: str | os.PathLike[str] | None = None, allow_empty: bool = False) -> EmbeddingIndex:
    """Open and validate an embedding. `manifest` overrides where the row paths are read from.

    The array, header and manifest come from one publication: `bit embed` renames a new set
    over the old one file by file (the array last), so a reader racing it could pair the old
    array with the new manifest. The files' identities (inode, size, times) are taken before
    and after reading, the opened array's among them, and the read is repeated until they agree
    and no publication was in progress (its commit record, `OUT.npy.partial/publish.json`)."""
    array_path = Path(array_path)
    for _ in range(_CONSISTENT_TRIES):
        before = _snapshot(array_path, manifest)
        index = _open_once(array_path, manifest)
        if before is not None and before == _snapshot(array_path, manifest, index):
            break
        index.close()
        time.sleep(0.001)
    else:
        raise UsageError(f"{array_path} kept changing while it was read (a bit embed publishing it?); try again")
    _check_consistent(index)
    if index.rows == 0 and not allow_empty:
        raise UsageError(f"{array_path} has no rows (every input failed or none was given); nothing to search")
    return index


_CONSISTENT_TRIES = 1000


def _iso_time(ns: int) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(ns / 1e9, tz=timezone.utc).isoformat(timespec="seconds")


def _open_once(array_path: Path, manifest: str | os.PathLike[str] | None) -> EmbeddingIndex:
    vectors, file = _load_array(array_path)
    try:
        sidecars = SidecarPaths.for_output(array_path)
        meta = read_metadata(sidecars.meta) if os.path.lexists(sidecars.meta) else None
        manifest_path = _manifest_path(array_path, manifest, meta, sidecars.meta)
        paths = _read_manifest(manifest_path, array_path, int(vectors.shape[0]))
    except BaseException:
        file.close()
        raise
    return EmbeddingIndex(array_path, vectors, paths, manifest_path, meta, sidecars.meta if meta else None, file)


def _snapshot(array_path: Path, manifest: Any, index: EmbeddingIndex | None = None) -> tuple | None:
    """What identifies the set on disk now (None while a publication is under way); with
    `index`, also the array file it opened."""
    sidecars = SidecarPaths.for_output(array_path)
    names = [array_path, sidecars.meta, Path(manifest) if manifest is not None else beside(array_path, ".paths.txt")]
    if os.path.lexists(array_path.with_name(array_path.name + ".partial") / "publish.json"):
        return None
    ids = []
    for name in names:
        try:
            info = os.stat(name)
            ids.append((info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns))
        except OSError:
            ids.append(None)
    if index is not None and index.file is not None:
        info = os.fstat(index.file.fileno())
        if (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns) != ids[0]:
            return None
    return tuple(ids)


def _load_array(path: Path) -> tuple[np.ndarray, BinaryIO]:
    """The array memory-mapped from one open file, and that file (kept open for reads)."""
    if path.is_dir():
        raise UsageError(f"{path}: is a directory; give the .npy file that bit embed wrote")
    if not path.exists():
        raise UsageError(f"{path}: no such file; give the .npy file that bit embed wrote")
    try:
        file = open_regular(path).detach()  # unbuffered; a FIFO or device is refused, never waited on
    except OSError as exc:
        raise UsageError(f"{path}: cannot read ({exc.strerror or exc}); give the .npy file that bit embed wrote") from exc
    try:
        vectors = _map_npy(file)
    except OSError as exc:
        file.close()
        raise UsageError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    except ValueError as exc:  # not a .npy, or an object array (which would need pickle)
        file.close()
        raise UsageError(f"{path}: not a .npy array of embeddings ({exc})") from exc
    _check_array(path, vectors)
    return vectors, file


def _map_npy(file: BinaryIO) -> np.ndarray:
    """`numpy.load(mmap_mode="r")` of an open file (numpy maps only a name, which a rename can
    point elsewhere between mapping and reading)."""
    fmt = np.lib.format
    version = fmt.read_magic(file)
    if version == (1, 0):
        shape, fortran, dtype = fmt.read_array_header_1_0(file)
    elif version == (2, 0):
        shape, fortran, dtype = fmt.read_array_header_2_0(file)
    else:
        raise ValueError(f".npy format version {version} (bitcli reads 1.0 and 2.0)")
    if dtype.hasobject:
        raise ValueError("an object array (it would need pickle)")
    order = "F" if fortran else "C"
    if int(np.prod(shape)) == 0:  # nothing to map
        return np.empty(shape, dtype=dtype, order=order)
    return np.memmap(file, dtype=dtype, mode="r", offset=file.tell(), shape=shape, order=order)


def _check_array(path: Path, vectors: np.ndarray) -> None:
    if not isinstance(vectors, np.ndarray) or vectors.ndim != 2:
        shape = getattr(vectors, "shape", "?")
        raise UsageError(f"{path}: holds an array of shape {shape}, not [rows, dim] embeddings")
    if vectors.dtype.kind != "f" or vectors.dtype.name not in _FLOAT_DTYPES:
        raise UsageError(f"{path}: holds {vectors.dtype} values; embeddings are float16, float32 or float64")
    if vectors.shape[1] == 0:
        raise UsageError(f"{path}: rows of dimension 0 cannot be compared")


def _manifest_path(array_path: Path, manifest: str | os.PathLike[str] | None, meta: EmbeddingMetadata | None, meta_path: Path) -> Path:
    if manifest is not None:
        return Path(manifest)
    if meta is not None and meta.manifest:
        return sidecar_file(meta_path, meta.manifest)
    return beside(array_path, ".paths.txt")


def _read_manifest(path: Path, array_path: Path, rows: int) -> list[str]:
    """Line i = row i's path; split on "\\n" only (bit embed writes non-UTF-8 names as bytes).
    Read up to what `rows` paths can take (a path is at most PATH_MAX bytes)."""
    try:
        text = read_capped(path, (rows + 1) * (PATH_MAX + 1)).decode("utf-8", errors="surrogateescape")
    except FileTooLarge:
        raise UsageError(f"{path} is far longer than {array_path}'s {rows} rows can need; pass the right --manifest FILE") from None
    except FileNotFoundError:
        raise UsageError(f"{array_path}: its manifest {path} (the path of each row) is missing; pass --manifest FILE") from None
    except OSError as exc:
        raise UsageError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    return text.removesuffix("\n").split("\n") if text else []


def _check_consistent(index: EmbeddingIndex) -> None:
    """The manifest and the metadata must describe this very array."""
    again = "; they are not from the same run: embed again with --overwrite"
    if len(index.paths) != index.rows:
        raise UsageError(f"{index.manifest_path} lists {len(index.paths)} paths but {index.array_path} has {index.rows} rows{again}")
    meta = index.meta
    if meta is None:
        return
    if meta.rows != index.rows:
        raise UsageError(f"{index.meta_path} describes {meta.rows} rows but {index.array_path} has {index.rows}{again}")
    if meta.feature_dim != index.dim:
        raise UsageError(f"{index.meta_path} describes {meta.feature_dim}-dimensional rows but {index.array_path} holds {index.dim}{again}")
    if meta.settings.dtype != index.vectors.dtype.name:
        raise UsageError(f"{index.meta_path} describes {meta.settings.dtype} rows but {index.array_path} holds {index.vectors.dtype.name}{again}")
