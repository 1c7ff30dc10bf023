"""Small helpers every stage uses, each written once (no torch, numpy or PIL): errors as short
reasons, byte counts, reads with a cap, atomic writes (the one way bitcli writes a file), the
files beside an embedding, lazy package exports, a block Ctrl-C does not cut."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import stat
import threading
from pathlib import Path
from typing import IO, Any, Callable, Iterable, Iterator, Union

from bitcli.errors import BitError, ConfigError, UsageError

# Images over this many pixels (width x height) fail before decoding unless --max-pixels says otherwise.
DEFAULT_MAX_PIXELS = 100_000_000

# PIL resampling filters: name -> `PIL.Image.Resampling` value (the numbers config files store).
RESAMPLE_FILTERS = {"nearest": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3, "box": 4, "hamming": 5}

SHOW_AT_MOST = 5  # items `name_some` lists before "and N more"

# The most bitcli reads of a config file (config.json, preprocessor_config.json, an index). The
# largest real ones (a 21,843-class id2label) are about 1.5 MB.
CONFIG_MAX_BYTES = 16 << 20


class FileTooLarge(ValueError):
    """A file (or device, or pipe) holds more than bitcli reads of it."""

    def __init__(self, path: str | Path, max_bytes: int):
        super().__init__(f"{path}: larger than {human_bytes(max_bytes)}")
        self.path = path
        self.max_bytes = max_bytes


def cache_dir() -> Path:
    """bitcli's one cache folder: `$BITCLI_CACHE_DIR`, else `$XDG_CACHE_HOME/bitcli`, else `~/.cache/bitcli`."""
    explicit = os.environ.get("BITCLI_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "bitcli"


def first_line(exc: BaseException) -> str:
    """The first line of `exc`'s message, or its class name when the message is empty."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def os_error_reason(error: OSError, fallback: str | None = None) -> str:
    """A short reason for an OSError ("no such file or directory", "permission denied", "symlink loop",
    else its strerror in lower case); `fallback` (else the message) when it carries no errno."""
    if isinstance(error, FileNotFoundError):
        return "no such file or directory"
    if isinstance(error, PermissionError):
        return "permission denied"
    if error.errno == errno.ELOOP:
        return "symlink loop"
    if error.errno is not None and error.strerror:
        return error.strerror.lower()
    return fallback if fallback is not None else str(error).lower()


def human_bytes(num_bytes: int, *, three_digits: bool = False) -> str:
    """Bytes with decimal units, one decimal ("97.8 MB"), or three significant digits ("102 MB")."""
    if num_bytes < 1000:
        return f"{num_bytes} B"
    size = float(num_bytes)
    for unit in ("kB", "MB", "GB"):
        size /= 1000
        if not three_digits:
            if size < 1000 or unit == "GB":
                return f"{size:.1f} {unit}"
            continue
        digits = 2 if size < 9.995 else 1 if size < 99.95 else 0
        text = f"{size:.{digits}f}"
        if float(text) < 1000 or unit == "GB":
            return f"{text} {unit}"
    raise AssertionError("unreachable")


def name_some(items: Iterable[Any], most: int = SHOW_AT_MOST) -> str:
    """The first `most` items joined by commas, then " and N more" for the rest."""
    items = [str(item) for item in items]
    shown = ", ".join(items[:most])
    return shown + (f" and {len(items) - most} more" if len(items) > most else "")


class NotRegularFile(OSError):
    """A path that names a FIFO, a device, a socket or a directory where bitcli reads a file."""

    def __init__(self, path: str | Path, kind: str):
        super().__init__(errno.EINVAL, f"not a regular file (a {kind})", str(path))
        self.kind = kind

    def __str__(self) -> str:
        return f"{self.filename}: {self.strerror}"


def file_kind(mode: int) -> str:
    """What `st_mode` names, in words ("regular file", "symbolic link", "FIFO", "directory", ...)."""
    for test, name in ((stat.S_ISREG, "regular file"), (stat.S_ISLNK, "symbolic link"), (stat.S_ISFIFO, "FIFO"),
                       (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"),
                       (stat.S_ISSOCK, "socket"), (stat.S_ISDIR, "directory")):
        if test(mode):
            return name
    return "special file"


def check_replaceable(path: str | Path, label: str | None = None) -> bool:
    """Whether `path` exists; a UsageError (named `label`, default the path) when it is a link or
    not a regular file: bitcli replaces only regular files, each writer then asks whether it wrote it."""
    label = label or str(path)
    try:
        info = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError as exc:
        raise UsageError(f"{label}: cannot use this name ({exc.strerror or exc})") from None
    if stat.S_ISLNK(info.st_mode):
        raise UsageError(
            f"{label}: is a symbolic link (to {os.readlink(path)}); bitcli does not write through links: "
            "give the file it points to, or another name"
        )
    if not stat.S_ISREG(info.st_mode):
        raise UsageError(
            f"{label}: is a {file_kind(info.st_mode)}, not a regular file; bitcli only replaces regular files "
            "it could have written: choose another name"
        )
    return True


def open_regular(path: str | Path):
    """`open(path, "rb")` for a regular file only; anything else raises NotRegularFile, without blocking."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFile(path, file_kind(mode))
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_capped(path: str | Path, max_bytes: int) -> bytes:
    """The bytes of regular file `path`, at most `max_bytes` (FileTooLarge past it, whatever size it claims)."""
    with open_regular(path) as fh:
        data = fh.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise FileTooLarge(path, max_bytes)
    return data


def sha256_file(fh: IO[bytes], size: int) -> str:
    """The sha256 of an open file's first `size` bytes (its size when opened: a file growing
    meanwhile is not read forever)."""
    import hashlib

    sha = hashlib.sha256()
    while size > 0 and (chunk := fh.read(min(1 << 20, size))):
        sha.update(chunk)
        size -= len(chunk)
    return sha.hexdigest()


def read_json_file(
    path: str | Path, *, error: type[BitError] = ConfigError, max_bytes: int = CONFIG_MAX_BYTES
) -> dict[str, Any]:
    """A JSON object from `path` (at most `max_bytes`); any failure raises `error`, one line naming the file."""
    path = Path(path)
    try:
        data = json.loads(read_capped(path, max_bytes).decode("utf-8"))
    except FileNotFoundError:
        raise error(f"{path}: file not found") from None
    except FileTooLarge:
        raise error(f"{path}: larger than {human_bytes(max_bytes)}, too large for a JSON config") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise error(f"{path}: not valid JSON ({first_line(exc)})") from None
    if not isinstance(data, dict):
        raise error(f"{path}: expected a JSON object")
    return data


def beside(array_path: str | os.PathLike[str], suffix: str) -> Path:
    """The file named `suffix` beside an embedding: `photos.npy` (or `photos`) -> `photos<suffix>`."""
    array_path = Path(array_path)
    stem = array_path.with_suffix("") if array_path.suffix == ".npy" else array_path
    return stem.with_name(stem.name + suffix)


def npy_name(index: str | os.PathLike[str]) -> Path:
    """An embedding's array as named, or with `.npy` added when that is the file (`photos` -> photos.npy)."""
    index = Path(index)
    with_npy = index.with_name(index.name + ".npy")
    return with_npy if not index.is_file() and index.suffix != ".npy" and with_npy.is_file() else index


def lazy_table(modules: dict[str, str]) -> dict[str, str]:
    """{module: "name name ..."} -> {name: module}: a package's lazy exports, listed by module."""
    return {name: module for module, names in modules.items() for name in names.split()}


def lazy_attributes(package: str, table: dict[str, str]) -> Callable[[str], Any]:
    """A module `__getattr__` importing `table[name]`'s module on first use (no torch for `bit --help`)."""
    import importlib
    import sys

    def __getattr__(name: str) -> Any:
        module_name = table.get(name)
        if module_name is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module_name), name)
        setattr(sys.modules[package], name, value)  # cache: later lookups skip __getattr__
        return value

    return __getattr__


@contextlib.contextmanager
def held_interrupt() -> Iterator[None]:
    """Hold a Ctrl-C that arrives inside the block, raise it after (main thread, default handler only)."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return
    received: list[int] = []
    signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if received:
        raise KeyboardInterrupt


# What `write_synced` writes: bytes, an iterable of bytes, or `write(fh)` given the open,
# unbuffered file (whose `.name` is its path, for libraries that write to a path: faiss, safetensors).
Content = Union[bytes, Iterable[bytes], Callable[[IO[bytes]], Any]]


def write_synced(path: str | Path, content: Content) -> int:
    """`content` into `path` (replaced, never through a link), fsync'ed, mode 0o666 less the umask; its size."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o666)
    with open(fd, "wb", buffering=0 if callable(content) else 1 << 20) as fh:
        if callable(content):
            fh.name = str(path)
            content(fh)
        else:
            for chunk in [content] if isinstance(content, bytes) else content:
                fh.write(chunk)
            fh.flush()
        os.fsync(fh.fileno())
        return os.fstat(fh.fileno()).st_size


def write_atomic(path: str | Path, content: Content, *, temporary: str | Path | None = None) -> int:
    """`content` at `path` through a temporary name, fsync, rename, the folder synced: whole or absent; its size."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(temporary) if temporary is not None else path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        size = write_synced(tmp, content)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)
    return size


def encode_lines(lines: Iterable[str]) -> Iterable[bytes]:
    """Text lines as UTF-8, one "\\n" each; surrogates (non-UTF-8 file names) as their original bytes."""
    for line in lines:
        yield (line + "\n").encode("utf-8", "surrogateescape")


def fsync_dir(path: str | Path) -> None:
    """Make a rename in `path` durable (best effort: some file systems refuse)."""
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
