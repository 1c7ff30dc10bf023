"""Reading an opened embedding's rows: blocks into one reused float32 buffer, exact-length reads.

Every read goes through the file the index holds open (`EmbeddingIndex._reader`), with `preadv`
in chunks of at most 1 GiB (one call reads at most about 2 GiB: rows wider than that take
several), so a row of any width is read whole or reported as a truncated file.
"""

from __future__ import annotations

import mmap
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from bitcli.errors import UsageError


class BlockReader:
    """Reads row ranges of a C-ordered `.npy` into one reused buffer, as float32."""

    def __init__(self, index: Any, max_rows: int):
        vectors = index.vectors
        self.vectors = vectors
        self.dim = index.dim
        self.dtype = vectors.dtype
        self.row_bytes = self.dim * self.dtype.itemsize
        offset = getattr(vectors, "offset", None)
        self.direct = isinstance(vectors, np.memmap) and vectors.flags.c_contiguous and offset is not None
        self.index = index
        self.offset = offset or 0
        self.raw = np.empty(max_rows * self.row_bytes, dtype=np.uint8)
        native32 = self.dtype == np.dtype("<f4") and sys.byteorder == "little"
        self.out = None if native32 else np.empty((max_rows, self.dim), dtype=np.float32)

    def read(self, start: int, stop: int) -> np.ndarray:
        n = stop - start
        if not self.direct:  # e.g. a Fortran-ordered array from elsewhere: let the memory map copy
            return np.asarray(self.vectors[start:stop], dtype=np.float32)
        view = memoryview(self.raw)[: n * self.row_bytes]
        with self.index._reader() as fd:
            read_exactly(fd, view, self.offset + start * self.row_bytes, self.index.array_path)
        rows = self.raw[: n * self.row_bytes].view(self.dtype).reshape(n, self.dim)
        if self.out is None:
            return rows
        out = self.out[:n]
        np.copyto(out, rows, casting="unsafe")
        return out

    def close(self) -> None:
        pass  # the index owns its file


class MappedRows:
    """An opened index's rows as a memory map of the file it holds open (copy-on-write, never
    written: torch can then wrap them without a copy). `release` drops a range's pages from the
    process once it is done with them, so the resident set stays at a block's size."""

    def __init__(self, index: Any):
        self.index = index
        self.count, self.dim = index.rows, index.dim
        self.map = None
        self.offset: int | None = None  # where the rows start in the mapped file (None: not mapped)
        vectors = index.vectors
        offset = getattr(vectors, "offset", None)
        self.row_bytes = self.dim * vectors.dtype.itemsize
        if isinstance(vectors, np.memmap) and vectors.flags.c_contiguous and offset is not None and index.file is not None and vectors.size:
            self.offset = offset
            self.check(self.count)
            self.map = mmap.mmap(index.file.fileno(), 0, access=mmap.ACCESS_COPY)
            self.values = np.frombuffer(self.map, dtype=vectors.dtype, count=vectors.size, offset=offset).reshape(vectors.shape)
        else:  # a caller-built index, or a Fortran-ordered array from elsewhere
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
        """UsageError unless the file still holds rows [0, stop): a page of a map beyond the end
        of a file truncated meanwhile (a tool rewriting it in place) kills the process with
        SIGBUS when touched. Called before each block is touched; a truncation during a block's
        products still cannot be caught."""
        if self.offset is not None and os.fstat(self.index.file.fileno()).st_size < self.offset + stop * self.row_bytes:
            raise UsageError(f"{self.index.array_path}: ended early (truncated while reading?); embed again with --overwrite")

    def populate(self, start: int, stop: int) -> None:
        """Check that rows [start, stop) are still in the file, then map their pages in one call
        (Linux 5.14's MADV_POPULATE_READ), which halved the time a search of a collection in the
        page cache spent faulting them in one by one (elsewhere they fault in as read)."""
        self.check(stop)
        if self.map is None or not self.populating:
            return
        begin, end = self._pages(start, stop)
        try:
            self.map.madvise(_MADV_POPULATE_READ, begin, end - begin)
        except (OSError, ValueError):  # an older kernel: fault them in as they are read
            self.populating = False

    def _pages(self, start: int, stop: int) -> tuple[int, int]:
        begin = self.offset + start * self.row_bytes
        begin -= begin % mmap.PAGESIZE
        return begin, self.offset + stop * self.row_bytes

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


_MADV_POPULATE_READ = getattr(mmap, "MADV_POPULATE_READ", 22)  # Linux's value; Python 3.11 lacks the name
_READ_CHUNK = 1 << 30  # one preadv reads at most about 2 GiB: rows wider than that take several


def read_exactly(fd: int, view: memoryview, position: int, path: Path) -> None:
    """Fill `view` from `fd` at `position`, in reads of at most _READ_CHUNK bytes."""
    filled = 0
    while filled < len(view):
        got = os.preadv(fd, [view[filled : filled + _READ_CHUNK]], position + filled)
        if not got:
            raise UsageError(f"{path}: ended early (truncated while reading?); embed again with --overwrite")
        filled += got
