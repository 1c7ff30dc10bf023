"""Every process-wide setting of the `bit` command, here and never in the library: OpenMP's wait
policy (`settle_openmp`, before torch loads), hf_xet off (`before_the_hub`), stdout with every
write checked (`checked_stdout`), torch's threads, malloc and PIL's pixel limit (`before_the_model`)."""

from __future__ import annotations

import io
import os
import sys

from bitcli.errors import BitError


def before_the_hub() -> None:
    """The settings huggingface_hub reads when it is imported."""
    os.environ.setdefault("HF_HUB_DISABLE_XET", "1")


def before_the_model() -> None:
    """The settings made before a model loads and images are decoded (after --threads is applied)."""
    import torch
    from PIL import Image

    from bitcli.engine.allocator import keep_freed_memory
    from bitcli.engine.machine import usable_cpus

    cpus = usable_cpus()  # a CPU quota or affinity mask: torch's threads capped at it, fewer kept
    if torch.get_num_threads() > cpus:
        torch.set_num_threads(cpus)
    keep_freed_memory()
    Image.MAX_IMAGE_PIXELS = None  # bit checks --max-pixels itself, from each image's header


def settle_openmp() -> None:
    """Before torch loads OpenMP: when other work runs now (/proc/stat, sampled three times), idle
    OpenMP threads sleep (OMP_WAIT_POLICY=PASSIVE) rather than spin. A user's value wins."""
    if "torch" in sys.modules or "OMP_WAIT_POLICY" in os.environ:
        return
    import time

    samples = []
    for _ in range(3):
        samples.append(running_now())
        time.sleep(0.004)
    if others_running(samples):
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"


def others_running(samples: list[int | None]) -> bool:
    """Whether the median sample of runnable tasks (this process among them) shows another one."""
    known = sorted(s for s in samples if s is not None)
    return bool(known) and known[len(known) // 2] > 1


def running_now(path: str = "/proc/stat") -> int | None:
    """Tasks running or runnable on the whole machine now (Linux), or None where unknown."""
    try:
        with open(path, "rb") as stat:
            for line in stat.read(1 << 16).splitlines():
                if line.startswith(b"procs_running "):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


# -- stdout for data, every write checked ----------------------------------------------------------


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
    """`sys.stdout` as a BufferedWriter (which retries short writes; Python's unbuffered `-u`
    stdout ignores them) over the checked descriptor; left alone when it has none."""
    for text, errors in ((sys.stdout, "surrogateescape"), (sys.stderr, "backslashreplace")):
        try:  # non-UTF-8 file names: stdout writes their original bytes, stderr escapes them
            text.reconfigure(errors=errors)
        except (AttributeError, ValueError, OSError):
            pass
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
