"""Row norms of a collection, kept beside it: `OUT.norms.npz` (float64 norms, and the array's
shape and identity they were computed from; one that does not match its array is replaced).

Exact search divides a block's products by them, reading each row once. The store publishes them
with the rows: `stage`d from the finished array, `seal`ed with the published array's identity.
A collection without them gets them on its first search or dedup, written back when it can be.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bitcli.collection.blocks import MappedRows, npy_header
from bitcli.store.files import is_regular
from bitcli.util import beside, open_regular, write_atomic, write_synced

if TYPE_CHECKING:
    from bitcli.collection.index import EmbeddingIndex

FORMAT_VERSION = 2  # 1 recorded no inode or change time: such files are replaced
UNSEALED = -1  # the change time a staged norms file records: its array is not published yet
_CHUNK_ROWS = 512  # rows converted to float64 at a time while computing norms (cache-sized)


def norms_path(array_path: Path) -> Path:
    return beside(array_path, ".norms.npz")


def _source(index: EmbeddingIndex) -> np.ndarray:
    return source_of(index.stat(), index.rows, index.dim)


def source_of(info: os.stat_result, rows: int, dim: int, ctime_ns: int | None = None) -> np.ndarray:
    """What the norms were computed from: the array's shape, size, modification time and identity
    (inode and change time: `cp -p` or whole-second times can repeat the rest)."""
    ctime_ns = info.st_ctime_ns if ctime_ns is None else ctime_ns
    fields = [FORMAT_VERSION, rows, dim, info.st_size, info.st_mtime_ns, info.st_ino, ctime_ns]
    return np.array(fields, dtype=np.int64)


def load(index: EmbeddingIndex) -> np.ndarray | None:
    """The stored norms when they were computed from this very array; None otherwise."""
    found = _read(norms_path(index.array_path), _max_bytes(index.rows), index.rows)
    if found is None or not np.array_equal(found[0], _source(index)):
        return None
    return found[1]


def _max_bytes(rows: int | None) -> int:
    """The most a norms file of `rows` rows takes (None: any number)."""
    return (1 << 62) if rows is None else 8 * rows + (1 << 16)


def _read(path: Path, max_bytes: int, rows: int | None) -> tuple[np.ndarray, np.ndarray | None] | None:
    """(source, norms) of a norms file that bitcli wrote (norms only when `rows` is given and they
    are that many); None for anything else, never allocated from a hostile header."""
    try:
        with open_regular(path) as file:
            if os.fstat(file.fileno()).st_size > max_bytes:
                return None
            with zipfile.ZipFile(file) as archive:
                source = _member(archive, "source", np.int64, None)
                norms = _member(archive, "norms", np.float64, (rows,)) if rows is not None and source is not None else None
    except Exception:  # whatever is wrong with the file (not a zip, a bad header, corrupt data): not ours
        return None
    return None if source is None else (source, norms)


def _member(archive: zipfile.ZipFile, name: str, dtype: type, shape: tuple[int, ...] | None) -> np.ndarray | None:
    """Array member `name` when its header says exactly `dtype` and `shape` (None: a `source`
    record, up to 16 numbers); its data read whole."""
    with archive.open(name + ".npy") as member:
        found_shape, fortran, found_dtype = npy_header(member)
        if shape is None and len(found_shape) == 1 and found_shape[0] <= 16:
            shape = found_shape
        if found_shape != shape or found_dtype != np.dtype(dtype) or fortran:
            return None
        size = int(np.prod(shape)) * np.dtype(dtype).itemsize
        data = member.read(size + 1)
    return np.frombuffer(data, dtype=dtype).reshape(shape) if len(data) == size else None


def compute(index: EmbeddingIndex) -> np.ndarray:
    """float64 norms of every row, mapped a chunk at a time and released."""
    with MappedRows(index) as rows:

        def chunk(first: int, stop: int) -> np.ndarray:
            rows.check(stop)
            return rows.values[first:stop]

        return _chunked(index.rows, chunk, rows.release)


def _chunked(count: int, chunk: Any, done: Any = None) -> np.ndarray:
    """`row_norms64` of rows [0, count), `chunk(first, stop)` at a time, on a few threads."""
    from concurrent.futures import ThreadPoolExecutor

    norms = np.empty(count, dtype=np.float64)

    def one(first: int) -> None:
        stop = min(first + _CHUNK_ROWS, count)
        norms[first:stop] = row_norms64(chunk(first, stop))
        if done is not None:
            done(first, stop)

    from bitcli.engine.machine import usable_cpus

    pool = ThreadPoolExecutor(min(8, usable_cpus()), thread_name_prefix="bit-norms")
    try:
        for finished in [pool.submit(one, first) for first in range(0, count, _CHUNK_ROWS)]:
            finished.result()
    finally:  # an error or Ctrl-C: the chunks not started are dropped
        pool.shutdown(wait=True, cancel_futures=True)
    return norms


def row_norms64(rows: np.ndarray) -> np.ndarray:
    """float64 Euclidean norms, summed as `scoring.cosine64` sums them."""
    rows = np.ascontiguousarray(rows, dtype=np.float64)
    return np.sqrt(np.einsum("ij,ij->i", rows, rows))


def save(index: EmbeddingIndex, norms: np.ndarray) -> bool:
    """Write `norms` beside the array (atomically); False when that cannot be done (no error)."""
    path = norms_path(index.array_path)
    try:
        if not np.array_equal(source_of(os.stat(index.array_path), index.rows, index.dim), _source(index)):
            return False  # another array was published under the name since it was opened: its norms are its own
        if os.path.lexists(path) and (not is_regular(path) or not is_ours(path, index.rows)):
            return False  # only a regular file that bitcli wrote is ever replaced
        write_atomic(path, lambda fh: np.savez(fh, source=_source(index), norms=np.asarray(norms, np.float64)))
    except Exception:  # a read-only folder, a full disk, a link: search goes on without
        return False
    return True


def ensure(index: EmbeddingIndex) -> np.ndarray:
    """The array's norms: stored ones when fresh, else computed now and written back."""
    norms = load(index)
    if norms is None:
        norms = compute(index)
        save(index, norms)
    return norms


def is_ours(path: Path, rows: int | None = None) -> bool:
    """Whether `path` is a norms file bitcli wrote (of at most `rows` rows, when given: the read
    is capped accordingly)."""
    return _read(path, _max_bytes(rows), None) is not None


def stage(array: Path, staged: Path) -> int:
    """The norms of the finished `.npy` at `array` into `staged`, unsealed; the staged file's size."""
    with open(array, "rb", buffering=0) as file:
        (rows, dim), _, dtype = npy_header(file)
        offset, row_bytes = file.tell(), dim * dtype.itemsize

        def chunk(first: int, stop: int) -> np.ndarray:
            data = os.pread(file.fileno(), (stop - first) * row_bytes, offset + first * row_bytes)
            if len(data) != (stop - first) * row_bytes:
                raise OSError(f"{array}: shorter than its header says")
            return np.frombuffer(data, dtype=dtype).reshape(stop - first, dim)

        norms = _chunked(rows, chunk)
        source = source_of(os.fstat(file.fileno()), rows, dim, UNSEALED)
    return write_synced(staged, lambda fh: np.savez(fh, source=source, norms=norms))


def seal(staged: Path, array: Path, temporary: Path) -> bool:
    """Record the published array's change time in the staged norms file (through `temporary`)
    when it was computed from that very array; else remove it (False)."""
    found = _read(staged, _max_bytes(None), None)
    try:
        info = os.stat(array)
    except OSError:
        info = None
    if found is None or info is None or len(found[0]) != 7:
        staged.unlink(missing_ok=True)
        return False
    source = found[0]
    rows, dim = int(source[1]), int(source[2])
    if np.array_equal(source, source_of(info, rows, dim)):
        return True  # sealed before a kill interrupted the publication
    norms = _read(staged, _max_bytes(rows), rows)
    if norms is None or norms[1] is None or not np.array_equal(source, source_of(info, rows, dim, UNSEALED)):
        staged.unlink(missing_ok=True)
        return False
    norms = norms[1]
    write_atomic(staged, lambda fh: np.savez(fh, source=source_of(info, rows, dim), norms=norms), temporary=temporary)
    return True
