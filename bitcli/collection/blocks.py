"""The raw `.npy` file: its header, its rows as a memory map of the open file, exact-length reads."""

from __future__ import annotations

import mmap
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from bitcli.errors import UsageError

_MADV_POPULATE_READ = getattr(mmap, "MADV_POPULATE_READ", 22)  # Linux's value; Python 3.11 lacks the name
_READ_CHUNK = 1 << 30  # one preadv reads at most about 2 GiB: rows wider than that take several


def npy_header(file: Any) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, fortran order, dtype) of the `.npy` header at `file`'s position (ValueError if none)."""
    fmt = np.lib.format
    version = fmt.read_magic(file)
    if version not in ((1, 0), (2, 0)):
        raise ValueError(f".npy format version {version} (bitcli reads 1.0 and 2.0)")
    shape, fortran, dtype = (fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0)(file)
    if dtype.hasobject:
        raise ValueError("an object array (it would need pickle)")
    return shape, fortran, dtype


class MappedRows:
    """The rows mapped copy-on-write, never written (torch can then wrap them without a copy).
    `release` drops a range's pages from the process once done with them, so the resident set
    stays at a block's size."""

    def __init__(self, index: Any):
        self.index = index
        self.count, self.dim = index.rows, index.dim
        self.map = None
        self.offset: int | None = None  # where the rows start in the mapped file (None: not mapped)
        vectors = index.vectors
        self.row_bytes = self.dim * vectors.dtype.itemsize
        if isinstance(vectors, np.memmap) and vectors.flags.c_contiguous and vectors.size:
            self.offset = vectors.offset
            self.check(self.count)
            self.map = mmap.mmap(index.file.fileno(), 0, access=mmap.ACCESS_COPY)
            self.values = np.frombuffer(self.map, dtype=vectors.dtype, count=vectors.size, offset=self.offset).reshape(vectors.shape)
        else:  # a Fortran-ordered array from elsewhere, or no rows
            self.values = np.asarray(vectors)
        self.populating = sys.platform == "linux"

    def __enter__(self) -> "MappedRows":
        return self

    def __exit__(self, *exc: object) -> None:
        self.values = None
        if self.map is not None:
            try:
                self.map.close()
            except BufferError:  # a view is still alive somewhere: the map goes with it
                pass

    def check(self, stop: int) -> None:
        """UsageError unless the file still holds rows [0, stop): touching a page beyond the end
        of a file truncated meanwhile kills the process with SIGBUS. Called before each block."""
        if self.offset is not None and os.fstat(self.index.file.fileno()).st_size < self.offset + stop * self.row_bytes:
            raise UsageError(f"{self.index.array_path}: ended early (truncated while reading?); embed again with --overwrite")

    def populate(self, start: int, stop: int) -> None:
        """`check`, then map the pages of rows [start, stop) in one call (MADV_POPULATE_READ,
        Linux 5.14) rather than faulting them in one by one."""
        self.check(stop)
        if self.map is None or not self.populating:
            return
        begin = self.offset + start * self.row_bytes
        begin -= begin % mmap.PAGESIZE
        try:
            self.map.madvise(_MADV_POPULATE_READ, begin, self.offset + stop * self.row_bytes - begin)
        except (OSError, ValueError):  # an older kernel: fault them in as they are read
            self.populating = False

    def release(self, start: int, stop: int) -> None:
        """Drop the pages of rows [start, stop) from this process (they stay in the page cache)."""
        if self.map is None or not hasattr(mmap, "MADV_DONTNEED"):
            return
        begin = self.offset + start * self.row_bytes
        end = self.offset + stop * self.row_bytes
        begin -= begin % mmap.PAGESIZE
        end -= end % mmap.PAGESIZE  # the page holding the next block's first row stays
        if end > begin:
            self.map.madvise(mmap.MADV_DONTNEED, begin, end - begin)


def read_exactly(fd: int, view: memoryview, position: int, path: Path) -> None:
    """Fill `view` from `fd` at `position`, in reads of at most _READ_CHUNK bytes."""
    filled = 0
    while filled < len(view):
        got = os.preadv(fd, [view[filled : filled + _READ_CHUNK]], position + filled)
        if not got:
            raise UsageError(f"{path}: ended early (truncated while reading?); embed again with --overwrite")
        filled += got
