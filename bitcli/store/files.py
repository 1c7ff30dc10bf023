"""Low-level file writing for the store: `.npy` headers, fsync, atomic text files."""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path
from typing import Iterable

import numpy as np
from numpy.lib import format as npy_format


def read_lines(path: Path) -> list[str]:
    """The lines `write_atomic` wrote (split on "\\n" only: a path may hold other separators)."""
    text = path.read_text(encoding="utf-8", errors="surrogateescape")
    return text.removesuffix("\n").split("\n") if text else []


def npy_header(dtype: np.dtype, rows: int, dim: int) -> bytes:
    """The `.npy` header numpy.save writes for a C-ordered [rows, dim] array of `dtype`."""
    buf = io.BytesIO()
    header = {"descr": npy_format.dtype_to_descr(dtype), "fortran_order": False, "shape": (rows, dim)}
    npy_format.write_array_header_1_0(buf, header)
    return buf.getvalue()


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(path: Path, lines: Iterable[str]) -> None:
    """Write text lines to `path` through a temporary file in the same directory and rename.

    Non-UTF-8 file names (surrogates, as `os` decodes them) are written as their original bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        with os.fdopen(fd, "w", encoding="utf-8", errors="surrogateescape", newline="\n") as fh:
            for line in lines:
                fh.write(line)
                fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
