"""`bit dedup --keep POLICY --link DIR | --move DIR`: the files `--keep` would not keep, set aside.

Only what `paths_to_delete` lists is touched: members still the files that were embedded (the
identity check of `keep.py`), never the kept one. Nothing is deleted and nothing is overwritten:

- link: DIR gets a symbolic link to each file (absolute target); the files stay where they are.
- move: each file is moved into DIR. Within one file system it is hard-linked into DIR first and
  only then unlinked from its folder, so the name in DIR never replaces anything (a rename would)
  and an interruption leaves the file in both places, never in neither. Across file systems it is
  copied into a new file (created exclusively), synced, and the original removed after.

A name taken in DIR gets a suffix: `photo.jpg`, then `photo-2.jpg`, `photo-3.jpg`... (a link
already pointing at the same file counts as done: `--link` run twice adds nothing). A source that
is a symbolic link or not a regular file is refused. Library code: nothing is printed; the
caller reports `Relocation.failed`.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
from dataclasses import dataclass, field
from pathlib import Path

from bitcli.errors import UsageError
from bitcli.util import file_kind, open_regular, os_error_reason

MODES = ("link", "move")
MAX_SUFFIX = 10_000  # names tried in DIR for one file before giving up on it


@dataclass
class Relocation:
    """What was set aside: (source as listed, its name in DIR), and (source, why not)."""

    mode: str
    directory: Path
    done: list[tuple[str, str]] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)


def check_directory(directory: str | os.PathLike[str], option: str) -> Path:
    """DIR as given, when it is a folder or can be made one (UsageError otherwise); nothing is created."""
    path = Path(directory)
    if path.exists() and not path.is_dir():
        raise UsageError(f"{option} {path}: exists and is not a folder; give a folder (it is created if missing)")
    parent = next((p for p in path.absolute().parents if p.exists()), None)
    if not path.exists() and parent is not None and not parent.is_dir():
        raise UsageError(f"{option} {path}: {parent} is not a folder")
    return path


def relocate(paths: list[str], files: dict[str, str], directory: str | os.PathLike[str], mode: str) -> Relocation:
    """Link or move each of `paths` (as listed; `files` maps each to the file it names) into
    `directory`, created if missing. Every file is tried; failures are collected, never raised."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    target = Path(directory)
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"--{mode} {target}: cannot create the folder ({os_error_reason(exc)})") from exc
    out = Relocation(mode, target)
    for path in paths:
        source = files.get(path, path)
        try:
            info = os.lstat(source)
            if stat.S_ISLNK(info.st_mode):
                raise _Refused("is a symbolic link; only the files themselves are linked or moved")
            if not stat.S_ISREG(info.st_mode):
                raise _Refused(f"is not a regular file (a {file_kind(info.st_mode)})")
            placed = _link(source, target) if mode == "link" else _move(source, target, info)
            out.done.append((path, placed))
        except _Refused as exc:
            out.failed.append((path, str(exc)))
        except OSError as exc:
            out.failed.append((path, os_error_reason(exc)))
    return out


class _Refused(Exception):
    pass


def _names(source: str, directory: Path):
    """DIR/name, then DIR/stem-2.ext, DIR/stem-3.ext, ..."""
    name = os.path.basename(source)
    stem, ext = os.path.splitext(name)
    yield directory / name
    for n in range(2, MAX_SUFFIX + 1):
        yield directory / f"{stem}-{n}{ext}"


def _link(source: str, directory: Path) -> str:
    pointee = os.path.abspath(source)
    for candidate in _names(source, directory):
        try:
            os.symlink(pointee, candidate)
            return str(candidate)
        except FileExistsError:
            if candidate.is_symlink() and os.readlink(candidate) == pointee:
                return str(candidate)  # linked by an earlier run
    raise _Refused(f"{MAX_SUFFIX} names like it are taken in {directory}")


def _move(source: str, directory: Path, info: os.stat_result) -> str:
    for candidate in _names(source, directory):
        try:
            os.link(source, candidate, follow_symlinks=False)
        except FileExistsError:
            continue
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK):
                raise
            made = _copy(source, candidate, info)
            if made is None:
                continue
        _unlink_source(source, candidate)
        return str(candidate)
    raise _Refused(f"{MAX_SUFFIX} names like it are taken in {directory}")


def _copy(source: str, candidate: Path, info: os.stat_result) -> Path | None:
    """A copy of `source` at `candidate`, created exclusively (None when the name is taken)."""
    try:
        fd = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), 0o600)
    except FileExistsError:
        return None
    try:
        with os.fdopen(fd, "wb") as dst, open_regular(source) as src:
            shutil.copyfileobj(src, dst, 1 << 20)
            dst.flush()
            os.fsync(dst.fileno())
        os.chmod(candidate, stat.S_IMODE(info.st_mode))
        os.utime(candidate, ns=(info.st_atime_ns, info.st_mtime_ns))
    except BaseException:
        candidate.unlink(missing_ok=True)
        raise
    return candidate


def _unlink_source(source: str, placed: Path) -> None:
    """Remove `source` now that `placed` holds it; when that fails, remove `placed` instead."""
    try:
        os.unlink(source)
    except OSError:
        placed.unlink(missing_ok=True)
        raise
