"""Open an embedding written by `bit embed` (the `.npy`, its manifest, its metadata) for reading.

The array is opened with `numpy.load(mmap_mode="r")`: nothing is read until asked for. Exact
search and dedup stream it in blocks through `iter_blocks`, which reads each block with a plain
`readinto` into one reused buffer: the process's memory then stays at the size of a block,
whatever the size of the index (pages of a memory map would count towards the resident set
until the kernel reclaims them; the page cache still keeps the file for the next run).

Everything that makes an index unusable is a `UsageError` naming the file and what to do: a
missing or malformed `.npy`, a manifest whose line count differs from the row count, metadata
that disagrees with the array, an empty index (unless `allow_empty`). A plain `.npy` from
elsewhere (no `OUT.meta.json`) opens with `meta = None`: its rows can be searched, but a query
image can only be embedded with an explicitly chosen model.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from bitcli.errors import UsageError
from bitcli.inputs import STDIN_PATH_MAX as PATH_MAX
from bitcli.store.metadata import EmbeddingMetadata, SidecarPaths, read_metadata, sidecar_file
from bitcli.util import FileTooLarge, read_capped

# A block of float32 rows is at most this big (the raw rows read from disk add at most as much).
DEFAULT_BLOCK_BYTES = 64 << 20
_FLOAT_DTYPES = ("float16", "float32", "float64")
# A float16 index with more elements than this converts blocks with torch (about 6x faster than
# numpy's float16 cast), which pays for torch's import (about 2 s); smaller ones stay numpy-only.
_TORCH_CAST_ELEMENTS = 1 << 28


@dataclass
class EmbeddingIndex:
    """An opened embedding: `vectors` [N, D] (read-only memory map), `paths[i]` = row i's file."""

    array_path: Path
    vectors: np.ndarray
    paths: list[str]
    manifest_path: Path
    meta: EmbeddingMetadata | None = None
    meta_path: Path | None = None

    @property
    def rows(self) -> int:
        return int(self.vectors.shape[0])

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    @property
    def base_dir(self) -> str | None:
        """The directory `bit embed` ran in: relative row paths are relative to it."""
        return self.meta.cwd if self.meta is not None else None

    def block_rows(self, block_bytes: int = DEFAULT_BLOCK_BYTES) -> int:
        """Rows per block so that one float32 block takes about `block_bytes`."""
        return max(1, block_bytes // max(1, self.dim * 4))

    def iter_blocks(
        self, block_rows: int | None = None, start: int = 0, stop: int | None = None, *, torch_cast: bool = True
    ) -> Iterator[tuple[int, np.ndarray]]:
        """(first row, float32 [n, D] block) over rows [start, stop), in order.

        The yielded array is reused for the next block: copy it to keep it. `torch_cast=False`
        keeps torch's thread pool out (for callers running their own, such as faiss)."""
        stop = self.rows if stop is None else min(stop, self.rows)
        block_rows = block_rows or self.block_rows()
        if stop <= start:
            return
        reader = _BlockReader(self, min(block_rows, stop - start), torch_cast=torch_cast)
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
        fd = os.open(self.array_path, os.O_RDONLY)
        try:
            for i, row in enumerate(rows.tolist()):
                if os.preadv(fd, [raw[i]], offset + row * row_bytes) != row_bytes:
                    raise UsageError(f"{self.array_path}: ended early (truncated while reading?); embed again with --overwrite")
        finally:
            os.close(fd)
        return raw.view(self.vectors.dtype).reshape(rows.size, self.dim).astype(np.float32)

    def find_rows(self, queries: Iterable[str]) -> dict[str, int]:
        """For each query path that names a row, the first such row (one pass over the paths).

        A query matches a row when the strings are equal, or when both name the same file: the
        row's path taken relative to the directory `bit embed` ran in (`meta.cwd`), the query's
        relative to the current directory."""
        wanted = {q: _absolute(q, None) for q in queries}
        by_abs: dict[str, list[str]] = {}
        for query, absolute in wanted.items():
            by_abs.setdefault(absolute, []).append(query)
        names = {os.path.basename(a) for a in by_abs}  # cheap filter before abspath
        found: dict[str, int] = {}
        base = self.base_dir
        for row, path in enumerate(self.paths):
            if path in wanted and path not in found:
                found[path] = row
            if os.path.basename(path) in names:
                for query in by_abs.get(_absolute(path, base), ()):
                    found.setdefault(query, row)
            if len(found) == len(wanted):
                break
        return found

    def locate(self, path: str) -> str | None:
        """An existing file for a row's path: as stored when it exists from here, else resolved
        against the directory `bit embed` ran in; None when neither exists."""
        if os.path.exists(path):
            return path
        base = self.base_dir
        if base and not os.path.isabs(path):
            candidate = os.path.join(base, path)
            if os.path.exists(candidate):
                return candidate
        return None


def _absolute(path: str, base: str | None) -> str:
    if base and not os.path.isabs(path):
        path = os.path.join(base, path)
    return os.path.normpath(os.path.abspath(path))


def open_index(array_path: str | os.PathLike[str], *, manifest: str | os.PathLike[str] | None = None, allow_empty: bool = False) -> EmbeddingIndex:
    """Open and validate an embedding. `manifest` overrides where the row paths are read from."""
    array_path = Path(array_path)
    vectors = _load_array(array_path)
    sidecars = SidecarPaths.for_output(array_path)
    meta = read_metadata(sidecars.meta) if sidecars.meta.is_file() else None
    manifest_path = _manifest_path(array_path, manifest, meta, sidecars.meta)
    paths = _read_manifest(manifest_path, array_path, int(vectors.shape[0]))
    index = EmbeddingIndex(array_path, vectors, paths, manifest_path, meta, sidecars.meta if meta else None)
    _check_consistent(index)
    if index.rows == 0 and not allow_empty:
        raise UsageError(f"{array_path} has no rows (every input failed or none was given); nothing to search")
    return index


def _load_array(path: Path) -> np.ndarray:
    if path.is_dir():
        raise UsageError(f"{path}: is a directory; give the .npy file that bit embed wrote")
    if not path.exists():
        raise UsageError(f"{path}: no such file; give the .npy file that bit embed wrote")
    try:
        vectors = np.load(path, mmap_mode="r", allow_pickle=False)
    except OSError as exc:
        raise UsageError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    except ValueError as exc:  # not a .npy, or an object array (which would need pickle)
        raise UsageError(f"{path}: not a .npy array of embeddings ({exc})") from exc
    if not isinstance(vectors, np.ndarray) or vectors.ndim != 2:
        shape = getattr(vectors, "shape", "?")
        raise UsageError(f"{path}: holds an array of shape {shape}, not [rows, dim] embeddings")
    if vectors.dtype.kind != "f" or vectors.dtype.name not in _FLOAT_DTYPES:
        raise UsageError(f"{path}: holds {vectors.dtype} values; embeddings are float16, float32 or float64")
    if vectors.shape[1] == 0:
        raise UsageError(f"{path}: rows of dimension 0 cannot be compared")
    return vectors


def _manifest_path(array_path: Path, manifest: str | os.PathLike[str] | None, meta: EmbeddingMetadata | None, meta_path: Path) -> Path:
    if manifest is not None:
        return Path(manifest)
    if meta is not None and meta.manifest:
        return sidecar_file(meta_path, meta.manifest)
    stem = array_path.with_suffix("") if array_path.suffix == ".npy" else array_path
    return stem.with_name(stem.name + ".paths.txt")


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
    if meta.dtype != index.vectors.dtype.name:
        raise UsageError(f"{index.meta_path} describes {meta.dtype} rows but {index.array_path} holds {index.vectors.dtype.name}{again}")


class _BlockReader:
    """Reads row ranges of a C-ordered `.npy` into one reused buffer, as float32."""

    def __init__(self, index: EmbeddingIndex, max_rows: int, *, torch_cast: bool = True):
        vectors = index.vectors
        self.vectors = vectors
        self.dim = index.dim
        self.dtype = vectors.dtype
        self.row_bytes = self.dim * self.dtype.itemsize
        offset = getattr(vectors, "offset", None)
        self.direct = isinstance(vectors, np.memmap) and vectors.flags.c_contiguous and offset is not None
        self.file = open(index.array_path, "rb", buffering=0) if self.direct else None
        self.offset = offset or 0
        self.raw = np.empty(max_rows * self.row_bytes, dtype=np.uint8)
        native32 = self.dtype == np.dtype("<f4") and sys.byteorder == "little"
        self.out = None if native32 else np.empty((max_rows, self.dim), dtype=np.float32)
        self.cast = _caster(self.dtype, vectors.size if torch_cast else 0)

    def read(self, start: int, stop: int) -> np.ndarray:
        n = stop - start
        if not self.direct:  # e.g. a Fortran-ordered array from elsewhere: let the memory map copy
            return np.asarray(self.vectors[start:stop], dtype=np.float32)
        view = memoryview(self.raw)[: n * self.row_bytes]
        self.file.seek(self.offset + start * self.row_bytes)
        filled = 0
        while filled < len(view):
            got = self.file.readinto(view[filled:])
            if not got:
                raise UsageError(f"{self.file.name}: ended early (truncated while reading?); embed again with --overwrite")
            filled += got
        rows = self.raw[: n * self.row_bytes].view(self.dtype).reshape(n, self.dim)
        if self.out is None:
            return rows
        out = self.out[:n]
        self.cast(rows, out)
        return out

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


def _caster(dtype: np.dtype, elements: int):
    """A function copying rows of `dtype` into a float32 array of the same shape."""
    if dtype.name == "float16" and elements and (elements > _TORCH_CAST_ELEMENTS or "torch" in sys.modules):
        try:
            import torch
        except ImportError:
            torch = None
        if torch is not None and dtype.isnative:

            def torch_cast(src: np.ndarray, dst: np.ndarray) -> None:
                torch.from_numpy(dst).copy_(torch.from_numpy(src))

            return torch_cast
    return lambda src, dst: np.copyto(dst, src, casting="unsafe")
