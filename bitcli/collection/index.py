"""Open an embedding written by `bit embed` (the `.npy`, its manifest, its metadata) for reading.

The array is opened once and memory-mapped; every later read goes through that open file, so an
index whose `.npy` is replaced meanwhile (`--update`, `--overwrite`) keeps reading the very rows
its manifest describes. A plain `.npy` from elsewhere (no `OUT.meta.json`) opens with
`meta = None`: its rows can be searched, but query images need an explicit `--model`.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, BinaryIO, Iterable, Iterator

import numpy as np

from bitcli.collection.blocks import MappedRows, npy_header, read_exactly
from bitcli.errors import UsageError
from bitcli.inputs import STDIN_PATH_MAX as PATH_MAX
from bitcli.store.metadata import EmbeddingMetadata, SidecarPaths, read_file_rows, read_metadata, sidecar_file
from bitcli.util import FileTooLarge, beside, open_regular, read_capped

_CONSISTENT_TRIES = 1000


@dataclass
class EmbeddingIndex:
    """An opened embedding: `vectors` [N, D] (read-only memory map), `paths[i]` = row i's file as
    it resolves from here; `recorded[i]`: as the manifest stores it (relative to the header's `cwd`)."""

    array_path: Path
    vectors: np.ndarray
    recorded: list[str]
    manifest_path: Path
    meta: EmbeddingMetadata | None
    meta_path: Path | None
    file: BinaryIO  # the array file as opened: every read goes through it

    def close(self) -> None:
        self.file.close()

    def stat(self) -> os.stat_result:
        """The opened array file's status (not whatever the name points at now)."""
        return os.fstat(self.file.fileno())

    @property
    def rows(self) -> int:
        return int(self.vectors.shape[0])

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    @cached_property
    def base_dir(self) -> str | None:
        """The directory `bit embed` ran in: relative row paths are relative to it."""
        sample = next((p for p in self.recorded if not os.path.isabs(p)), None)
        return self.meta.base_dir(self.meta_path, sample) if self.meta is not None else None

    @cached_property
    def paths(self) -> list[str]:
        """The recorded paths as they resolve from here (as stored when they already do)."""
        base = self.base_dir
        if not base or os.path.abspath(base) == os.path.abspath(os.getcwd()):
            return self.recorded
        return [p if os.path.isabs(p) else os.path.join(base, p) for p in self.recorded]

    def iter_blocks(self, block_rows: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """(first row, float32 [n, D] copy) over every row, in order (blocks of 64 MB unless
        `block_rows`); each block's pages are released once read."""
        block_rows = block_rows or max(1, (64 << 20) // (self.dim * 4))
        with MappedRows(self) as rows:
            for first in range(0, self.rows, block_rows):
                stop = min(first + block_rows, self.rows)
                rows.check(stop)
                block = np.array(rows.values[first:stop], dtype=np.float32)
                rows.release(first, stop)
                yield first, block

    def take(self, rows: Iterable[int]) -> np.ndarray:
        """float32 copies of the given rows, in order, read with `preadv`: scattered rows touched
        through the map would map their neighbours too (fault-around)."""
        rows = np.asarray(list(rows), dtype=np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= self.rows):
            raise IndexError(f"row out of range for {self.rows} rows")
        offset = getattr(self.vectors, "offset", None)
        if rows.size == 0 or offset is None or not self.vectors.flags.c_contiguous:
            return np.asarray(self.vectors[rows], dtype=np.float32).reshape(rows.size, self.dim)
        row_bytes = self.dim * self.vectors.dtype.itemsize
        raw = np.empty((rows.size, row_bytes), dtype=np.uint8)
        for i, row in enumerate(rows.tolist()):
            read_exactly(self.file.fileno(), memoryview(raw[i]), offset + row * row_bytes, self.array_path)
        return raw.view(self.vectors.dtype).reshape(rows.size, self.dim).astype(np.float32)

    def describe(self) -> dict[str, Any]:
        """What the collection holds (`bit info`): JSON-ready, without reading any row."""
        from datetime import datetime, timezone

        info = self.stat()
        report: dict[str, Any] = {
            "path": str(self.array_path),
            "rows": self.rows,
            "feature_dim": self.dim,
            "dtype": self.vectors.dtype.name,
            "bytes": info.st_size,
            "manifest": str(self.manifest_path),
            "metadata": str(self.meta_path) if self.meta_path is not None else None,
            "modified": datetime.fromtimestamp(info.st_mtime_ns / 1e9, tz=timezone.utc).isoformat(timespec="seconds"),
        }
        if self.meta is None:
            return {**report, "made_by": None}
        meta, settings = self.meta, self.meta.settings.to_json()
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
        """For each query path that names a row, the first such row: the strings are equal, or
        both name the same file. The paths are searched as one NUL-separated string: a million
        rows in milliseconds."""
        found: dict[str, int] = {}
        for query in dict.fromkeys(queries):
            absolute = _absolute(query, None)
            rows = [r for r in (_first_line(self._joined_recorded, query), self._same_file(absolute)) if r is not None]
            if rows:
                found[query] = min(rows)
        return found

    @cached_property
    def _joined_recorded(self) -> tuple[str, list[str]]:
        return "\0" + "\0".join(self.recorded) + "\0", self.recorded

    @cached_property
    def _joined_paths(self) -> tuple[str, list[str]]:
        return self._joined_recorded if self.paths is self.recorded else ("\0" + "\0".join(self.paths) + "\0", self.paths)

    def _same_file(self, absolute: str) -> int | None:
        """The first row whose path ends in `absolute`'s file name and names that file."""
        (text, lines), base = self._joined_paths, self.base_dir
        name = os.path.basename(absolute)
        if not name:
            return None
        counted, row, at = 0, 0, 0
        while (at := text.find(name + "\0", at)) >= 0:
            if text[at - 1] in ("\0", "/"):
                row += text.count("\0", counted, at)
                counted = at
                start = text.rfind("\0", 0, at)
                if _absolute(lines[row - 1], base) == absolute and text[start + 1 : at + len(name)] == lines[row - 1]:
                    return row - 1
            at += len(name)
        return None

    def identities(self, rows: set[int]) -> dict[int, Any] | None:
        """The recorded `FileIdentity` of each of `rows` (None: not identified, or `--manifest`
        names another file); None without metadata. UsageError when the row file is unreadable."""
        if self.meta is None or self.meta_path is None:
            return None
        try:
            found = read_file_rows(self.meta_path, self.meta, only=rows)
        except UsageError:
            try:
                republished = read_metadata(self.meta_path).files_sha256 != self.meta.files_sha256
            except UsageError:
                republished = False
            if republished:
                raise UsageError(f"{self.array_path} was updated while this ran (a bit embed --update?); run it again") from None
            raise
        base = self.base_dir or ""
        same = lambda a, b: a == b or os.path.normpath(os.path.join(base, a)) == os.path.normpath(os.path.join(base, b))  # noqa: E731
        return {row: found[row][1] if same(found[row][0], self.recorded[row]) else None for row in rows}

    def locate(self, path: str) -> str | None:
        """A row's file as recorded (relative to the directory `bit embed` ran in), when it exists."""
        base = self.base_dir
        full = path if os.path.isabs(path) or not base else os.path.join(base, path)
        return full if os.path.exists(full) else None


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
    """Open and validate an embedding (`manifest`: where the row paths are, when not beside it).
    A publication renames file by file: the read is repeated until the files' identities before
    and after it agree."""
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


def _open_once(array_path: Path, manifest: str | os.PathLike[str] | None) -> EmbeddingIndex:
    vectors, file = _load_array(array_path)
    try:
        meta_path = SidecarPaths.for_output(array_path).meta
        meta = read_metadata(meta_path) if os.path.lexists(meta_path) else None
        if manifest is not None:
            manifest_path = Path(manifest)
        elif meta is not None and meta.manifest:
            manifest_path = sidecar_file(meta_path, meta.manifest)
        else:
            manifest_path = beside(array_path, ".paths.txt")
        paths = _read_manifest(manifest_path, array_path, int(vectors.shape[0]))
    except BaseException:
        file.close()
        raise
    return EmbeddingIndex(array_path, vectors, paths, manifest_path, meta, meta_path if meta else None, file)


def _identity(info: os.stat_result) -> tuple:
    return info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns


def _snapshot(array_path: Path, manifest: Any, index: EmbeddingIndex | None = None) -> tuple | None:
    """What identifies the set on disk now (None while a publication is under way); with
    `index`, also the array file it opened."""
    if os.path.lexists(array_path.with_name(array_path.name + ".partial") / "publish.json"):
        return None
    ids = []
    for name in (array_path, SidecarPaths.for_output(array_path).meta, manifest or beside(array_path, ".paths.txt")):
        try:
            ids.append(_identity(os.stat(name)))
        except OSError:
            ids.append(None)
    if index is not None and _identity(index.stat()) != ids[0]:
        return None
    return tuple(ids)


def _load_array(path: Path) -> tuple[np.ndarray, BinaryIO]:
    """The array memory-mapped from one open file, and that file (kept open for reads)."""
    give = "give the .npy file that bit embed wrote"
    if path.is_dir():
        raise UsageError(f"{path}: is a directory; {give}")
    if not path.exists():
        raise UsageError(f"{path}: no such file; {give}")
    try:
        file = open_regular(path).detach()  # unbuffered; a FIFO or device is refused, never waited on
    except OSError as exc:
        raise UsageError(f"{path}: cannot read ({exc.strerror or exc}); {give}") from exc
    try:
        shape, fortran, dtype = npy_header(file)
        order = "F" if fortran else "C"
        if int(np.prod(shape)) == 0:  # nothing to map
            vectors = np.empty(shape, dtype=dtype, order=order)
        else:  # numpy.load maps only a name, which a rename can point elsewhere meanwhile
            vectors = np.memmap(file, dtype=dtype, mode="r", offset=file.tell(), shape=shape, order=order)
    except OSError as exc:
        file.close()
        raise UsageError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    except ValueError as exc:  # not a .npy, or an object array (which would need pickle)
        file.close()
        raise UsageError(f"{path}: not a .npy array of embeddings ({exc})") from exc
    if vectors.ndim != 2:
        raise UsageError(f"{path}: holds an array of shape {vectors.shape}, not [rows, dim] embeddings")
    if vectors.dtype.name not in ("float16", "float32", "float64"):
        raise UsageError(f"{path}: holds {vectors.dtype} values; embeddings are float16, float32 or float64")
    if vectors.shape[1] == 0:
        raise UsageError(f"{path}: rows of dimension 0 cannot be compared")
    return vectors, file


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
    array, meta = index.array_path, index.meta
    if len(index.recorded) != index.rows:
        raise UsageError(f"{index.manifest_path} lists {len(index.recorded)} paths but {array} has {index.rows} rows{again}")
    if meta is None:
        return
    if meta.rows != index.rows:
        raise UsageError(f"{index.meta_path} describes {meta.rows} rows but {array} has {index.rows}{again}")
    if meta.feature_dim != index.dim:
        raise UsageError(f"{index.meta_path} describes {meta.feature_dim}-dimensional rows but {array} holds {index.dim}{again}")
    if meta.settings.dtype != index.vectors.dtype.name:
        raise UsageError(f"{index.meta_path} describes {meta.settings.dtype} rows but {array} holds {index.vectors.dtype.name}{again}")
