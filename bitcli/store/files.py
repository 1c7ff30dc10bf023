"""Low-level file work for the store: `.npy` headers, fsync, staged files, capped reads, the lock.

The partial directory holds only the files named in `OWN_PARTIAL_FILES`; that is how bitcli
recognises a folder it may discard or complete. `LOCK` is held (`fcntl.flock`, exclusive) by the
one run writing the output: a second run is told another run holds it, instead of being sent to
--resume. flock locks belong to the open file, so a killed run's lock disappears with it.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import stat
from pathlib import Path
from typing import IO, Any

import numpy as np
from numpy.lib import format as npy_format

from bitcli.util import fsync_dir, read_capped, write_synced

STATE = "state.json"
DATA = "data.npy"
JOURNAL = "journal.jsonl"
LOCK = "lock"
PUBLISH = "publish.json"  # the commit point of `finish()`: which staged file becomes which output
PUBLISH_TMP = "publish.json.tmp"
OWN_PARTIAL_FILES = frozenset({STATE, DATA, JOURNAL, LOCK, PUBLISH, PUBLISH_TMP})
REQUIRED_PARTIAL_FILES = (STATE, DATA, JOURNAL)
RECORD_MAX_BYTES = 1 << 20  # state.json, publish.json and the run record are a few hundred bytes
COPY_CHUNK = 1 << 22  # bytes per read when streaming a finished array
STAGED_SUFFIX = ".bitcli.tmp"  # `.NAME.bitcli.tmp`: where a file is written before it is renamed


def npy_header(dtype: np.dtype, rows: int, dim: int) -> bytes:
    """The `.npy` header numpy.save writes for a C-ordered [rows, dim] array of `dtype`."""
    buf = io.BytesIO()
    header = {"descr": npy_format.dtype_to_descr(dtype), "fortran_order": False, "shape": (rows, dim)}
    npy_format.write_array_header_1_0(buf, header)
    return buf.getvalue()


def read_npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype] | None:
    """(shape, dtype) from a `.npy` file's header; None when it is not one."""
    try:
        with open(path, "rb") as fh:
            version = npy_format.read_magic(fh)
            read = npy_format.read_array_header_1_0 if version == (1, 0) else npy_format.read_array_header_2_0
            shape, _, dtype = read(fh)
    except (OSError, ValueError, SyntaxError):
        return None
    return tuple(shape), dtype


def copy_to_stream(source: IO[bytes], stream: IO[bytes]) -> None:
    """Copy `source` from its start to `stream`, every byte: a raw stream's short writes are retried."""
    source.seek(0)
    while chunk := source.read(COPY_CHUNK):
        view = memoryview(chunk)
        while view:
            written = stream.write(view)
            if written is None:  # a non-blocking stream that is full
                raise BlockingIOError(errno.EAGAIN, "stdout is non-blocking and full")
            if written <= 0:
                raise OSError(errno.EIO, "the stream accepted nothing")
            view = view[written:]
    stream.flush()


def staged_name(path: Path) -> Path:
    """Where `path` is written before the rename that publishes it (`.NAME.bitcli.tmp`)."""
    return path.with_name(f".{path.name}{STAGED_SUFFIX}")


def read_json_record(path: Path) -> dict[str, Any] | None:
    """A small JSON object written by the store (None when missing, unreadable or malformed)."""
    try:
        data = json.loads(read_capped(path, RECORD_MAX_BYTES))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def read_lines(path: Path) -> list[str]:
    """The lines `encode_lines` wrote (split on "\\n" only: a path may hold other separators)."""
    text = path.read_text(encoding="utf-8", errors="surrogateescape")
    return text.removesuffix("\n").split("\n") if text else []


def is_regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def partial_problem(partial: Path) -> str | None:
    """What makes a partial directory unusable for --resume (a missing file...), or None."""
    for name in REQUIRED_PARTIAL_FILES:
        path = partial / name
        if not os.path.lexists(path):
            return f"{name} is missing"
        if not is_regular(path):
            return f"{name} is not a regular file"
    if read_json_record(partial / STATE) is None:
        return f"{STATE} is unreadable"
    return None


def take_lock(partial: Path) -> IO[bytes] | None:
    """Hold the partial directory's lock (the open file), or None when another process holds it."""
    import fcntl

    fh = open(partial / LOCK, "a+b")
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        return None
    except OSError:
        return fh  # no locking on this file system: go on without it
    fh.seek(0)
    fh.truncate()
    fh.write(f"{os.getpid()}\n".encode())
    fh.flush()
    return fh


def lock_holder(partial: Path) -> str | None:
    """"pid N" of the process holding the partial directory's lock, or None when it is free."""
    import fcntl

    if not is_regular(partial / LOCK):
        return None
    try:
        with open(partial / LOCK, "rb") as fh:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                pid = fh.read(32).decode("ascii", "replace").strip()
                return f"pid {pid}" if pid.isdigit() else "another process"
            except OSError:
                return None
    except OSError:
        return None
    return None


def make_partial(partial: Path, tmp: Path, state: dict[str, Any], header: bytes) -> IO[bytes] | None:
    """Assemble a partial directory under `tmp` (state.json, data.npy holding `header`, an empty
    journal), holding its lock, then rename it to `partial`: it appears complete or not at all.

    Returns the lock (the open file), or None when another run got there first."""
    partial.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.mkdir(tmp)
    except FileExistsError:
        return None
    lock = take_lock(tmp)
    if lock is None:
        return None
    try:
        write_synced(tmp / STATE, (json.dumps(state, indent=1, sort_keys=True) + "\n").encode("utf-8"))
        write_synced(tmp / DATA, header)
        write_synced(tmp / JOURNAL, b"")
        fsync_dir(tmp)
        try:
            os.rename(tmp, partial)
        except OSError as exc:
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
            remove_partial(tmp)
            lock.close()
            return None
    except BaseException:
        lock.close()  # what is left in `tmp` is cleared by the next run (`publish.discard_tmp`)
        raise
    fsync_dir(partial.parent)
    return lock


def remove_partial(partial: Path) -> None:
    """Remove bitcli's own partial directory: its files, the commit record last, then the folder."""
    names = sorted(OWN_PARTIAL_FILES - {PUBLISH}, key=lambda n: n == LOCK) + [PUBLISH]
    for name in names:
        with contextlib.suppress(FileNotFoundError):
            (partial / name).unlink()
    with contextlib.suppress(FileNotFoundError):
        partial.rmdir()
    fsync_dir(partial.parent)
