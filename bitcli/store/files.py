"""The partial run on disk (`OUT.npy.partial/`) and the records a run leaves: `.npy` headers,
staged names, the partial directory's files and lock, the journal of committed batches, each
row's file identity, and the finished run's record (docs/collection.md, "Writing and reading one set").

The partial directory holds only `OWN_PARTIAL_FILES`: how bitcli recognises a folder it may
discard or complete. `LOCK` is an exclusive `flock` held by the one run writing the output (it
goes with a killed process). The journal is read line by line, each line capped, never beyond
the run's input count: a damaged journal ends at its last good line. The run record
(`.OUT.npy.run.json`) lets `--resume` of a finished output check it as strictly as an unfinished one.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Sequence

import numpy as np
from numpy.lib import format as npy_format

from bitcli.collection import blocks
from bitcli.errors import UsageError
from bitcli.store.settings import EmbedSettings
from bitcli.util import fsync_dir, read_capped, write_synced

if TYPE_CHECKING:
    from bitcli.store.paths import EmbedPaths

STATE = "state.json"
DATA = "data.npy"
JOURNAL = "journal.jsonl"
LOCK = "lock"
PUBLISH = "publish.json"  # the commit point of `finish()`: which staged file becomes which output
PUBLISH_TMP = "publish.json.tmp"
SEAL_TMP = "norms.tmp"  # the staged row norms, sealed while the set is published (`publish.py`)
OWN_PARTIAL_FILES = frozenset({STATE, DATA, JOURNAL, LOCK, PUBLISH, PUBLISH_TMP, SEAL_TMP})
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


@dataclass(frozen=True)
class FileIdentity:
    """What a row's file was when it was embedded: size, modification time, optional sha256."""

    size: int
    mtime_ns: int
    sha256: str | None = None

    def to_dict(self, path: str) -> dict[str, Any]:
        record: dict[str, Any] = {"path": path, "size": self.size, "mtime_ns": self.mtime_ns}
        if self.sha256 is not None:
            record["sha256"] = self.sha256
        return record

    def same_stat(self, other: "FileIdentity") -> bool:
        return self.size == other.size and self.mtime_ns == other.mtime_ns


# -- the journal and the run record ------------------------------------------------------------

JOURNAL_LINE_MAX = 64 << 20  # one batch's paths and errors; a longer line is damage
RECORD_VERSION = 1


@dataclass
class Journal:
    """The committed state read back from `journal.jsonl`."""

    paths: list[str] = field(default_factory=list)
    errors: list[tuple[str, str]] = field(default_factory=list)
    identities: list[FileIdentity | None] = field(default_factory=list)  # of each row's file, before it was read
    valid_bytes: int = 0  # length of the journal's well-formed prefix


def inputs_digest(inputs: Sequence[str] | None) -> str | None:
    """sha256 of the expanded, ordered input paths: a resumed run must see the same list."""
    if inputs is None:
        return None
    digest = hashlib.sha256()
    for path in inputs:
        digest.update(path.encode("utf-8", "surrogateescape") + b"\0")
    return digest.hexdigest()


def read_journal(path: Path, max_entries: int | None = None) -> Journal:
    """The well-formed prefix of a journal: complete lines, each a batch, at most `max_entries`
    inputs in all (None: no limit). A torn, malformed or oversized line ends it."""
    journal = Journal()
    if not path.exists():
        return journal
    with open(path, "rb") as fh:
        while raw := fh.readline(JOURNAL_LINE_MAX + 1):
            if not raw.endswith(b"\n"):
                break  # torn last line (the batch was never committed), or far too long
            try:
                entry = json.loads(raw)
                paths = [str(p) for p in entry["rows"]]
                errors = [(str(p), str(r)) for p, r in entry["errors"]]
                identities = [decode_identity(i) for i in entry.get("ids") or []]
            except (ValueError, KeyError, TypeError):
                break
            if len(identities) != len(paths):  # written by a bitcli that recorded none: unknown
                identities = [None] * len(paths)
            count = len(journal.paths) + len(journal.errors) + len(paths) + len(errors)
            if max_entries is not None and count > max_entries:
                break  # more than the run has inputs: not this run's journal
            journal.paths.extend(paths)
            journal.errors.extend(errors)
            journal.identities.extend(identities)
            journal.valid_bytes += len(raw)
    return journal


def encode_identity(identity: FileIdentity | None) -> list | None:
    """A row's identity in a journal line: [size, mtime_ns, sha256 or null], or null."""
    return None if identity is None else [identity.size, identity.mtime_ns, identity.sha256]


def decode_identity(value: list | None) -> FileIdentity | None:
    if value is None:
        return None
    size, mtime_ns, sha256 = value
    return FileIdentity(int(size), int(mtime_ns), None if sha256 is None else str(sha256))


def run_state(
    dim: int, dtype: str, fingerprint: dict[str, Any], inputs: Sequence[str] | None, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """What produced the rows: compared on --resume (JSON round trip: tuples equal lists). The
    run's `fingerprint` is kept as the settings record (`EmbedSettings`) and its runtime keys."""
    settings = EmbedSettings.from_fingerprint({**fingerprint, "dtype": dtype})
    state = {**(extra or {}), "version": RECORD_VERSION, "dim": dim, "dtype": dtype, "settings": settings.to_json(),
             "runtime": EmbedSettings.runtime(fingerprint), "inputs": inputs_digest(inputs)}
    return json.loads(json.dumps(state))


def check_same_update(partial: Path, theirs: str | None, mine: str | None) -> None:
    """An interrupted --update (its plan's digest in `state.json`) resumes only with --update and
    the same plan, and an interrupted plain run only without --update."""
    if theirs == mine:
        return
    if mine is None:
        raise UsageError(f"{partial} is an interrupted --update; pass --update --resume to continue it")
    if theirs is None:
        raise UsageError(
            f"{partial} is an interrupted run, not an --update; pass --resume without --update to finish it, "
            "or --update --overwrite to discard it"
        )
    raise UsageError(
        f"{partial}: the inputs or the output changed since the interrupted --update; "
        "pass --update --overwrite to start it over"
    )


def file_size(path: Path | None) -> int | None:
    try:
        return None if path is None else os.stat(path).st_size
    except OSError:
        return None


def files_problem(paths: "EmbedPaths", record: dict[str, Any], dim: Any, rows_dtype, *, places: bool = True) -> str | None:
    """Why the files of a finished output are not the ones its run record lists (None: they are).

    Every file of the set (`EmbedPaths.set_files`) has the size the record gives, or is absent
    when the record lists none (and, with `places`, the path it gives); the array's header holds
    the recorded rows of `dim` `rows_dtype`. Not the row norms: they say themselves which array
    they describe, and a search (re)computes them when they are missing or stale.
    """
    for role, path in paths.set_files().items():
        if role in ("record", "norms"):
            continue
        want = (record.get("files") or {}).get(role)
        if places and role != "array" and want is not None and os.path.abspath(path) != want.get("path"):
            return f"it was made with its {role} at {want.get('path')}"
        if file_size(path) != (None if want is None else want.get("size")):
            return f"its {role} changed since it was made"
    try:
        with open(paths.out, "rb") as fh:
            shape, _, dtype = blocks.npy_header(fh)
    except (OSError, ValueError, SyntaxError):
        shape = dtype = None
    if shape != (record.get("rows"), dim) or dtype != rows_dtype:
        return "its array changed since it was made"
    return None
