"""Helpers for the reliability tests: the real `bit` in a subprocess, special files, a small tmpfs,
and the kill switch of the property tests (a kill at any file-system step leaves one set).

Everything here works through the command line or the public library API, so the tests survive a
reorganisation of the package. Special files are made inside the test's own temporary folder
(never /dev): a FIFO with `os.mkfifo`, character devices with `os.mknod` (we run as root in CI;
a test skips when it cannot make one).
"""

from __future__ import annotations

import contextlib
import gc
import os
import resource
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Linux character devices (major 1): what /dev/null, /dev/zero and /dev/full are.
NULL_DEVICE = (1, 3)
ZERO_DEVICE = (1, 5)
FULL_DEVICE = (1, 7)

# An address-space cap for a child that must not be able to take the machine's memory: a bitcli
# run with torch loaded peaks near 1 GiB of virtual memory; a runaway allocation stops at the cap
# (MemoryError) instead of meeting the system's out-of-memory killer.
MEMORY_CAP = 4 << 30


def bit_env(**extra: str) -> dict[str, str]:
    """The environment for a child `bit`: this process's (HF_HOME etc. from conftest) plus the repo."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env.setdefault("MALLOC_ARENA_MAX", "2")  # keep the child's virtual size small and predictable
    env.update(extra)
    return env


def _limits(memory: int | None, file_size: int | None):
    def apply() -> None:
        if memory is not None:
            resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        if file_size is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the cap fails (EFBIG)
            resource.setrlimit(resource.RLIMIT_FSIZE, (file_size, file_size))

    return apply


def bit(
    *args: object,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    input: bytes | None = None,
    stdin=None,
    stdout=None,
    timeout: float = 180,
    memory: int | None = MEMORY_CAP,
    file_size: int | None = None,
) -> subprocess.CompletedProcess:
    """Run `python -m bitcli ARGS`; stdout/stderr captured (bytes) unless `stdout` is given.

    `timeout` bounds every test: a hang fails the test (TimeoutExpired) instead of the suite.
    """
    command = [sys.executable, "-m", "bitcli", *map(str, args)]
    try:
        return subprocess.run(
            command,
            cwd=cwd,
            env=env or bit_env(),
            input=input,
            stdin=stdin,
            stdout=subprocess.PIPE if stdout is None else stdout,
            stderr=subprocess.PIPE,
            timeout=timeout,
            preexec_fn=_limits(memory, file_size),
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"`bit {' '.join(map(str, args))}` did not finish within {timeout} s: {exc.stderr!r}")


def text(data: bytes | None) -> str:
    return (data or b"").decode("utf-8", "replace")


def error_lines(result: subprocess.CompletedProcess) -> list[str]:
    """The non-empty lines on stderr."""
    return [line for line in text(result.stderr).splitlines() if line.strip()]


def short(lines: list[str]) -> list[str]:
    """Lines cut to 300 characters, for assertion messages."""
    return [line if len(line) <= 300 else line[:300] + "..." for line in lines]


def assert_one_error_line(result: subprocess.CompletedProcess, code: int, *fragments: str) -> str:
    """Exit `code`, exactly one line on stderr, starting `error:`, no traceback, naming `fragments`."""
    lines = error_lines(result)
    assert result.returncode == code, (result.returncode, short(lines))
    assert len(lines) == 1, short(lines)
    line = lines[0]
    assert line.startswith("error: "), short(lines)
    assert "Traceback" not in line and "unexpected" not in line, short(lines)
    for fragment in fragments:
        assert fragment in line, (fragment, short(lines))
    return line


def make_device(path: Path, device: tuple[int, int] = NULL_DEVICE) -> Path:
    """A character device node at `path` (inside the test's temp dir), or skip when not allowed."""
    try:
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(*device))
        os.close(os.open(path, os.O_RDWR))
    except (PermissionError, OSError) as exc:
        with contextlib.suppress(OSError):
            os.unlink(path)
        pytest.skip(f"cannot make or open a device node here ({exc}); needs root and CAP_MKNOD")
    return path


def kind_of(path: Path) -> str:
    """What is at `path` (not following a final symlink)."""
    mode = os.lstat(path).st_mode
    for kind, test in (("symlink", stat.S_ISLNK), ("fifo", stat.S_ISFIFO), ("chardev", stat.S_ISCHR),
                       ("dir", stat.S_ISDIR), ("file", stat.S_ISREG)):
        if test(mode):
            return kind
    return "other"


@contextlib.contextmanager
def small_tmpfs(where: Path, size: str = "64k"):
    """Mount a tmpfs of `size` at `where` for the block; skip (with the reason) when mounting fails."""
    where.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs at {where}: {done.stderr.strip() or done.returncode} (needs root)")
    try:
        yield where
    finally:
        if subprocess.run(["umount", str(where)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(where)], capture_output=True)


def fill_leaving(directory: Path, free_bytes: int) -> None:
    """Fill the file system of `directory` until about `free_bytes` are left."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError:
        pass
    finally:
        os.close(fd)
    os.truncate(filler, max(0, filler.stat().st_size - free_bytes))


def sparse_file(path: Path, size: int) -> Path:
    """A file that claims `size` bytes without using the disk (reading it whole would need them)."""
    with open(path, "wb") as fh:
        fh.truncate(size)
    return path


# -- kills at every file-system step (the property tests of issue 12) -------------------------


class Killed(BaseException):
    """What a SIGKILL at this point would have left: nothing after it runs."""


MUTATIONS = ("replace", "rename", "unlink", "remove", "rmdir", "mkdir")


class KillSwitch:
    """Counts file-system mutations (os.replace/rename/unlink/remove/rmdir/mkdir, shutil.rmtree's
    steps included) while active, and raises Killed before the `at`-th one (None: never)."""

    def __init__(self, at: int | None = None):
        self.at = at
        self.count = 0

    def __enter__(self) -> "KillSwitch":
        self._patch = pytest.MonkeyPatch()
        for name in MUTATIONS:
            self._patch.setattr(os, name, self._wrap(getattr(os, name)))
        return self

    def __exit__(self, *exc) -> None:
        self._patch.undo()

    def _wrap(self, real):
        def step(*args, **kwargs):
            if self.at is not None and self.count == self.at:
                raise Killed(f"killed before {real.__name__}{args}")
            self.count += 1
            return real(*args, **kwargs)

        step.__name__ = real.__name__
        return step


def killed(action) -> bool:
    """Run `action`; True when the kill switch stopped it. Either way its files are closed and
    its locks released afterwards, as a killed process's are."""
    try:
        action()
    except Killed:
        gc.collect()
        return True
    gc.collect()
    return False


OUT_FILES = ("out.npy", "out.paths.txt", "out.errors.txt", "out.meta.json", "out.files.jsonl", "out.norms.npz")


def files_state(directory: Path, names=OUT_FILES) -> tuple:
    """The bytes of each of `names` in `directory` (None: absent); the row norms as `norms_state`."""
    return tuple(norms_state(directory / name) if name.endswith(".norms.npz") else
                 (directory / name).read_bytes() if (directory / name).exists() else None for name in names)


def norms_state(path: Path, *, valid: bool = True) -> tuple | None:
    """A norms file (`OUT.norms.npz`) as a state to compare between runs (None: absent): its values
    and whether it was computed from the array beside it now (`valid`; else: whether it is sealed;
    the identity it records differs from run to run)."""
    import numpy as np

    from bitcli.collection import norms

    if not path.exists():
        return None
    with np.load(path) as stored:
        values, source = stored["norms"].tobytes(), stored["source"]
    if not valid:
        return values, bool(source[6] != norms.UNSEALED)
    array = path.with_name(path.name.removesuffix(".norms.npz") + ".npy")
    try:
        info = os.stat(array)
    except OSError:
        return values, False
    return values, bool(np.array_equal(source, norms.source_of(info, int(source[1]), int(source[2]))))


def assert_one_set(directory: Path, old: tuple, new: tuple, where: str, touch, names=OUT_FILES) -> None:
    """The files are the old set or the new one, at once or after `touch()` (what the next run on
    the output does first: complete a publication that was committed)."""
    state = files_state(directory, names)
    if state not in (old, new):
        touch()
        state = files_state(directory, names)
    assert state in (old, new), f"{where}: the files on disk mix two runs: " + ", ".join(
        f"{name}={'old' if s == o else 'new' if s == n else 'other'}" for name, s, o, n in zip(names, state, old, new))


def assert_no_litter(directory: Path) -> None:
    """No partial folder, staged or temporary file left beside the outputs."""
    litter = [p.name for p in directory.iterdir() if "partial" in p.name or p.name.endswith(".tmp")]
    assert litter == [], litter
