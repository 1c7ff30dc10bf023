"""`bit dedup --keep`: the files one would delete to keep one per group, and with `--link DIR`
or `--move DIR` those files set aside.

Nothing is deleted or overwritten: link puts a symbolic link in DIR; move hard-links into DIR then
unlinks (across file systems: an exclusive copy, synced, then removed), so an interruption leaves
a file in both places, never neither. A taken name gets a suffix (`photo-2.jpg`, ...).
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
from dataclasses import dataclass, field
from pathlib import Path

from bitcli.collection.dedup import DuplicateGroup
from bitcli.collection.index import EmbeddingIndex
from bitcli.errors import UsageError
from bitcli.store.metadata import FileIdentity, still_embedded
from bitcli.util import file_kind, open_regular, os_error_reason

KEEP_POLICIES = ("first", "largest", "newest")


@dataclass
class Deletions:
    """What `--keep` would delete, and the members whose file is no longer the one embedded."""

    delete: list[str]
    changed: list[str]
    kept: list[str] = field(default_factory=list)  # the member kept in each group that lists any
    files: dict[str, str] = field(default_factory=dict)  # each listed path -> the file it names (resolved as recorded)


def paths_to_delete(index: EmbeddingIndex, groups: list[DuplicateGroup], keep: str) -> Deletions:
    """The files one would delete to keep one file per group (first in the index, largest in
    pixels then bytes, newest; ties: the earliest). A member counts only while its file is still
    the one embedded: gone, it is skipped; changed, it is in `changed`, never listed nor kept. The
    very file kept (the same path twice, a link) is never listed."""
    if keep not in KEEP_POLICIES:
        raise UsageError(f"--keep {keep}: choose one of {', '.join(KEEP_POLICIES)}")
    identities = index.identities({row for group in groups for row in group.rows})
    out: list[str] = []
    changed: list[str] = []
    kept_paths: list[str] = []
    seen: set[str] = set()
    for group in groups:
        present = _present(index, group, identities, changed)
        if len(present) < 2:
            continue
        kept = max(present, key=lambda m: (_rank(m, keep), -m[0]))
        kept_paths.append(kept[1])
        for member in present:
            if member is kept or os.path.samestat(member[2], kept[2]) or member[1] in seen:
                continue
            seen.add(member[1])
            out.append(member[1])
    return Deletions(out, list(dict.fromkeys(changed)), kept_paths, {p: index.locate(p) or p for p in out})


def _present(
    index: EmbeddingIndex, group: DuplicateGroup, identities: dict[int, FileIdentity | None] | None, changed: list[str]
) -> list[tuple[int, str, os.stat_result]]:
    """(row, path, stat) of the members still the embedded file (`changed` collects the others that exist)."""
    present = []
    for row, path in zip(group.rows, group.paths):
        found = index.locate(path)
        if found is None:
            continue
        try:
            info = os.stat(found)
            if not stat.S_ISREG(info.st_mode):  # a FIFO or device now: never the embedded image
                changed.append(path)
                continue
            if identities is not None and not still_embedded(found, identities.get(row)):
                changed.append(path)
                continue
        except OSError:
            continue
        present.append((row, path, info))  # as every command prints it: it resolves from here
    return present


def _rank(member: tuple[int, str, os.stat_result], keep: str) -> tuple:
    row, path, info = member
    if keep == "newest":
        return (info.st_mtime_ns,)
    if keep != "largest":
        return ()
    try:  # the most pixels, from the image header (no decoding), then the most bytes
        from PIL import Image

        with open_regular(path) as fh, Image.open(fh) as image:  # a FIFO swapped in never blocks
            return (image.size[0] * image.size[1], info.st_size)
    except Exception:  # any unreadable header just ranks lowest
        return (0, info.st_size)


MODES = ("link", "move")
MAX_SUFFIX = 10_000  # names tried in DIR for one file before giving up on it


@dataclass
class Relocation:
    """What was set aside: (source as listed, its name in DIR), and (source, why not)."""

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
    out = Relocation()
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
        try:  # remove the source now that the candidate holds it; when that fails, the candidate instead
            os.unlink(source)
        except OSError:
            candidate.unlink(missing_ok=True)
            raise
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
