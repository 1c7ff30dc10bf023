"""stdout for data, with every write checked, whatever Python's buffering.

Started with `-u` or `PYTHONUNBUFFERED=1`, Python gives stdout no buffer: its text layer writes
straight to the file descriptor and ignores short writes, so bytes are lost without an error
when the disk fills or the reader goes away. `checked_stdout()` puts a `BufferedWriter` (which
retries short writes until every byte is written or an error is raised) over a raw stream whose
errors are bitcli's: `StdoutError` (one line, exit 1) for a full disk or a broken device, and
`BrokenPipeError` (exit 141) for a reader that went away. After the first failure the stream
drops what is written to it, so flushing at exit cannot fail a second time.
"""

from __future__ import annotations

import io
import os
import sys

from bitcli.errors import BitError


class StdoutError(BitError):
    """Writing the data to stdout failed (full disk, I/O error): exit 1, one line."""

    def __init__(self, error: OSError):
        super().__init__(f"cannot write to stdout ({error.strerror or error})")


class _CheckedRaw(io.RawIOBase):
    """File descriptor 1 as a raw stream whose failures are typed, and silent once reported."""

    def __init__(self, fd: int):
        super().__init__()
        self._fd = fd
        self._failed = False

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._fd

    def isatty(self) -> bool:
        return os.isatty(self._fd)

    def write(self, data) -> int:
        if self._failed:
            return len(data)
        try:
            return os.write(self._fd, data)
        except BrokenPipeError:
            self._failed = True
            raise
        except OSError as exc:
            self._failed = True
            raise StdoutError(exc) from exc


def checked_stdout() -> None:
    """Replace `sys.stdout` with a buffered, checked stream on the same descriptor.

    Left alone when stdout is not a file descriptor (closed, or captured by a test runner)."""
    stream = sys.stdout
    try:
        fd = stream.fileno()
        stream.flush()
    except (AttributeError, ValueError, OSError):
        return
    binary = io.BufferedWriter(_CheckedRaw(fd))
    sys.stdout = io.TextIOWrapper(
        binary,
        encoding=getattr(stream, "encoding", None) or "utf-8",
        errors="surrogateescape",  # non-UTF-8 file names come out as their original bytes
        line_buffering=bool(getattr(stream, "line_buffering", False)),
    )
