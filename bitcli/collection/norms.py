"""Row norms of a collection, kept beside it: `OUT.norms.npz` (float64 norms + what they were
computed from).

Exact search scores a block of rows with one matrix product and divides by the rows' norms; with
the norms at hand a search reads each row once. They are float64 Euclidean norms computed from the
stored values as `cosine64` computes them (so a zero or overflowing row is recognised the same way
by both), recorded with the array's size, modification time, inode, change time, rows and
dimension: a file that does not match the array it sits beside is ignored and replaced.

A collection gets them on its first search or dedup, written back atomically when its folder is
writable (`bit embed` does not write them: they are not part of the published set, whose files
the store, the shards and `bit combine` check as one). A failure to write them is never an
error: search computes them as it goes.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np

from bitcli.collection.blocks import MappedRows
from bitcli.collection.index import EmbeddingIndex
from bitcli.store.paths import check_replaceable
from bitcli.util import open_regular, write_atomic

FORMAT_VERSION = 2  # 1 recorded no inode or change time: such files are replaced
_CHUNK_ROWS = 4096  # rows converted to float64 at a time while computing norms


def norms_path(array_path: Path) -> Path:
    array_path = Path(array_path)
    stem = array_path.with_suffix("") if array_path.suffix == ".npy" else array_path
    return stem.with_name(stem.name + ".norms.npz")


def _source(index: EmbeddingIndex) -> np.ndarray:
    """What the norms were computed from: the array's shape, size, modification time and identity
    (inode and change time: another array of the same size published with the same modification
    time, by a filesystem with whole-second times or `cp -p`, is another file or was changed)."""
    info = index.stat()
    fields = [FORMAT_VERSION, index.rows, index.dim, info.st_size, info.st_mtime_ns, info.st_ino, info.st_ctime_ns]
    return np.array(fields, dtype=np.int64)


def load(index: EmbeddingIndex) -> np.ndarray | None:
    """The stored norms when they were computed from this very array; None otherwise."""
    found = _read(norms_path(index.array_path), _max_bytes(index), index.rows)
    if found is None or not np.array_equal(found[0], _source(index)):
        return None
    return found[1]


def _max_bytes(index: EmbeddingIndex) -> int:
    return 8 * index.rows + (1 << 16)


def _read(path: Path, max_bytes: int, rows: int | None) -> tuple[np.ndarray, np.ndarray | None] | None:
    """(source, norms) of a norms file that bitcli wrote (norms only when `rows` is given and they
    are that many); None for anything else: a FIFO or device (never opened for reading), a file
    over `max_bytes`, not a zip, a member whose header claims another shape (never allocated:
    a header claiming terabytes or a member that would inflate costs nothing), a plain .npy."""
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
        version = np.lib.format.read_magic(member)
        if version == (1, 0):
            found_shape, fortran, found_dtype = np.lib.format.read_array_header_1_0(member)
        elif version == (2, 0):
            found_shape, fortran, found_dtype = np.lib.format.read_array_header_2_0(member)
        else:
            return None
        if shape is None and len(found_shape) == 1 and found_shape[0] <= 16:
            shape = found_shape
        if found_shape != shape or found_dtype != np.dtype(dtype) or fortran:
            return None
        size = int(np.prod(shape)) * np.dtype(dtype).itemsize
        data = member.read(size + 1)
    return np.frombuffer(data, dtype=dtype).reshape(shape) if len(data) == size else None


def compute(index: EmbeddingIndex) -> np.ndarray:
    """float64 norms of every row, from the stored values (mapped a chunk at a time and released:
    the resident set does not grow with the collection)."""
    norms = np.empty(index.rows, dtype=np.float64)
    with MappedRows(index) as rows:
        for first in range(0, index.rows, _CHUNK_ROWS):
            stop = min(first + _CHUNK_ROWS, index.rows)
            rows.check(stop)
            norms[first:stop] = row_norms64(rows.values[first:stop])
            rows.release(first, stop)
    return norms


def row_norms64(rows: np.ndarray) -> np.ndarray:
    """float64 Euclidean norms, summed as `scoring.cosine64` sums them."""
    rows = np.ascontiguousarray(rows, dtype=np.float64)
    return np.sqrt(np.einsum("ij,ij->i", rows, rows))


def save(index: EmbeddingIndex, norms: np.ndarray) -> bool:
    """Write `norms` beside the array (atomically); False when that cannot be done (no error)."""
    path = norms_path(index.array_path)
    try:
        check_replaceable(path, "row norms")  # only a regular file (ours) is ever replaced
        if path.exists() and _read(path, _max_bytes(index), None) is None:
            return False  # a file of that name that bitcli did not write
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
