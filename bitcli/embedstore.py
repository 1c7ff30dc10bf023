"""Streaming, resumable, atomic writer for embedding matrices (`.npy`) and their manifests.

Layout while a run is in progress, next to the output `OUT.npy`:

    OUT.npy.partial/
        state.json      what produced the rows (model, dtype, options, a sha256 of the ordered
                        input paths); checked by --resume
        data.npy        a `.npy` header sized for any row count, then the rows appended so far
        journal.jsonl   one line per committed batch: the paths whose rows were appended
                        (in row order) and the inputs that failed

Each batch is committed in two steps: the rows are appended to `data.npy` and flushed to disk,
then one journal line is appended and flushed. The journal is the truth: on resume, rows beyond
what the journal accounts for (a kill between the two steps) are truncated away, and a torn last
journal line is ignored. Memory never holds more than one batch of rows.

`finish()` rewrites the header with the final row count (numpy pads the header so its length
does not depend on the count: it is byte-identical to `numpy.save`), writes the manifest and
the error list under temporary names, renames them into place, renames `data.npy` to `OUT.npy`
and removes the partial directory. An interrupted run leaves the partial directory and never a
truncated `OUT.npy`; because commits happen at batch boundaries and the caller batches the
remaining inputs the same way, a resumed run produces the same bytes as an uninterrupted one.

`-o -` (stdout) keeps the rows in an anonymous temporary file and streams the finished array to
the given binary stream; it cannot be resumed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from collections import Counter
from typing import IO, Any, Iterable, Iterator, Sequence

import numpy as np
from numpy.lib import format as npy_format

from bitcli.errors import UsageError
from bitcli.inputs import path_problem

STATE_VERSION = 1
INPUTS_CHANGED = "inputs changed since the interrupted run; pass --overwrite to start again"
_COPY_CHUNK = 1 << 22  # bytes per read when streaming a finished array


@dataclass(frozen=True)
class EmbedPaths:
    """Every file an embed run writes; `out` is None when the array goes to a stream (`-o -`)."""

    out: Path | None
    manifest: Path
    errors: Path

    @property
    def partial(self) -> Path | None:
        return None if self.out is None else self.out.with_name(self.out.name + ".partial")

    @classmethod
    def for_output(cls, out: Path | None, manifest: Path | None = None, errors: Path | None = None) -> "EmbedPaths":
        """Defaults: `OUT.paths.txt` and `OUT.errors.txt` (`OUT` without `.npy`).

        With `out=None` (stdout) the manifest must be given; errors go next to it, in
        `MANIFEST.errors.txt` (`MANIFEST` without its `.txt`).
        """
        if out is None:
            if manifest is None:
                raise UsageError("-o - writes the array to stdout: give --manifest FILE for the row paths")
            base = manifest.with_suffix("") if manifest.suffix == ".txt" else manifest
            return cls(out=None, manifest=manifest, errors=errors or base.with_name(base.name + ".errors.txt"))
        stem = out.with_suffix("") if out.suffix == ".npy" else out
        return cls(
            out=out,
            manifest=manifest if manifest is not None else stem.with_name(stem.name + ".paths.txt"),
            errors=errors if errors is not None else stem.with_name(stem.name + ".errors.txt"),
        )


def check_output(paths: EmbedPaths, *, resume: bool, overwrite: bool) -> None:
    """Refuse early (before the model loads) what `EmbedWriter` would refuse: UsageError, exit 2."""
    if resume and overwrite:
        raise UsageError("--resume continues a run and --overwrite discards it: pass one of them")
    _check_distinct(paths)
    if paths.manifest.is_dir():
        raise UsageError(f"--manifest {paths.manifest}: is a directory; give a file name")
    if paths.out is None and resume:
        raise UsageError("--resume needs an output file, not -o -")
    partial = paths.partial
    if partial is not None and partial.exists() and not (resume or overwrite):
        raise UsageError(
            f"{paths.out}: an interrupted run left {partial}; "
            "pass --resume to continue it or --overwrite to start over"
        )
    if paths.out is not None and paths.out.exists() and not partial.exists() and not (resume or overwrite):
        raise UsageError(f"{paths.out} already exists; pass --overwrite to replace it (or --resume)")
    if paths.manifest.exists() and not (resume or overwrite):
        raise UsageError(f"{paths.manifest} already exists; pass --overwrite to replace it")


def _check_distinct(paths: EmbedPaths) -> None:
    """The array, manifest, error list and partial run must be four different files."""
    seen: dict[str, str] = {}
    named = (("-o", paths.out), ("--manifest", paths.manifest), ("the error list", paths.errors), ("the partial run", paths.partial))
    for what, path in named:
        if path is None:
            continue
        key = os.path.abspath(path)
        if key in seen:
            raise UsageError(f"{path}: {seen[key]} and {what} would be the same file; choose another --manifest or -o")
        seen[key] = what


@dataclass
class EmbedSummary:
    """What a finished run wrote."""

    rows: int
    dim: int
    dtype: str
    failed: int
    resumed_rows: int = 0
    out: Path | None = None
    manifest: Path | None = None
    errors_file: Path | None = None


@dataclass
class _Journal:
    """The committed state read back from `journal.jsonl`."""

    paths: list[str] = field(default_factory=list)
    errors: list[tuple[str, str]] = field(default_factory=list)
    valid_bytes: int = 0  # length of the journal's well-formed prefix


def manifest_problem(path: str) -> str | None:
    """Why `path` cannot be a manifest line, or None when it can (`inputs.path_problem`'s rule)."""
    if path_problem(path):
        return "the path contains a line break, so it cannot be listed in the manifest; rename the file"
    return None


def escape_error_path(path: str) -> str:
    """One-line form of a path for `OUT.errors.txt` (backslash, tab and line breaks escaped)."""
    return path.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def unescape_error_path(text: str) -> str:
    """The path `escape_error_path` made `text` from."""
    return re.sub(r"\\(.)", lambda m: _UNESCAPES.get(m.group(1), m.group(1)), text)


_UNESCAPES = {"t": "\t", "n": "\n", "r": "\r"}


def inputs_digest(inputs: Sequence[str] | None) -> str | None:
    """sha256 of the expanded, ordered input paths: a resumed run must see the same list."""
    if inputs is None:
        return None
    digest = hashlib.sha256()
    for path in inputs:
        digest.update(path.encode("utf-8", "surrogateescape") + b"\0")
    return digest.hexdigest()


def _finished_inputs(paths: EmbedPaths) -> Counter[str] | None:
    """The inputs a finished run accounted for: its manifest and error list (None: unreadable)."""
    try:
        done = Counter(_read_lines(paths.manifest))
        if paths.errors.exists():
            done += Counter(unescape_error_path(line.split("\t", 1)[0]) for line in _read_lines(paths.errors))
    except OSError:
        return None
    return done


def _read_lines(path: Path) -> list[str]:
    """The lines `_write_atomic` wrote (split on "\\n" only: a path may hold other separators)."""
    text = path.read_text(encoding="utf-8", errors="surrogateescape")
    return text.removesuffix("\n").split("\n") if text else []


def npy_header(dtype: np.dtype, rows: int, dim: int) -> bytes:
    """The `.npy` header numpy.save writes for a C-ordered [rows, dim] array of `dtype`."""
    import io

    buf = io.BytesIO()
    header = {"descr": npy_format.dtype_to_descr(dtype), "fortran_order": False, "shape": (rows, dim)}
    npy_format.write_array_header_1_0(buf, header)
    return buf.getvalue()


def _fsync_dir(path: Path) -> None:
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


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _write_atomic(path: Path, lines: Iterable[str]) -> None:
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


def _read_journal(path: Path) -> _Journal:
    journal = _Journal()
    if not path.exists():
        return journal
    data = path.read_bytes()
    offset = 0
    for raw in data.splitlines(keepends=True):
        if not raw.endswith(b"\n"):
            break  # torn last line: the batch was never committed
        try:
            entry = json.loads(raw)
            paths = [str(p) for p in entry["rows"]]
            errors = [(str(p), str(r)) for p, r in entry["errors"]]
        except (ValueError, KeyError, TypeError):
            break
        journal.paths.extend(paths)
        journal.errors.extend(errors)
        offset += len(raw)
    journal.valid_bytes = offset
    return journal


class EmbedWriter:
    """Append batches of rows; `finish()` publishes the `.npy`, manifest and error list atomically.

    `fingerprint` describes everything that determines the rows (model, revision, dtype,
    normalization, batch size, ...); `--resume` refuses a partial run made with another one.
    `done` is the set of input paths already handled (embedded or failed) by an earlier run.
    """

    def __init__(
        self,
        paths: EmbedPaths,
        *,
        dim: int,
        dtype: str = "float32",
        fingerprint: dict[str, Any] | None = None,
        inputs: Sequence[str] | None = None,
        resume: bool = False,
        overwrite: bool = False,
    ) -> None:
        if dtype not in ("float32", "float16"):
            raise UsageError(f"--dtype {dtype}: choose float32 or float16")
        self.paths = paths
        self.dim = int(dim)
        self.dtype = np.dtype(dtype).newbyteorder("<")
        self.fingerprint = dict(fingerprint or {})
        self._inputs = None if inputs is None else list(inputs)
        self._header_len = len(npy_header(self.dtype, 0, self.dim))
        self._row_bytes = self.dim * self.dtype.itemsize
        self._journal = _Journal()
        self._dir: Path | None = None
        self._data: IO[bytes] | None = None
        self._journal_fh: IO[bytes] | None = None
        self.resumed_rows = 0
        self.already_complete = False
        self._closed = False
        check_output(paths, resume=resume, overwrite=overwrite)
        if paths.out is None:
            self._data = tempfile.TemporaryFile()  # anonymous: nothing to resume, nothing left behind
            self._data.write(npy_header(self.dtype, 0, self.dim))
            return
        partial = paths.partial
        if overwrite and partial.exists():
            shutil.rmtree(partial)
        if partial.exists():
            self._reopen(partial)
        elif paths.out.exists() and resume and not overwrite:
            self._mark_complete()
        else:
            self._create(partial)

    # -- opening -------------------------------------------------------------------------------

    def _mark_complete(self) -> None:
        """`--resume` of a finished run: nothing to do, if it was made from the same inputs."""
        if self._inputs is not None and Counter(self._inputs) != _finished_inputs(self.paths):
            raise UsageError(f"{self.paths.out}: {INPUTS_CHANGED}")
        self.already_complete = True
        self._closed = True

    def _create(self, partial: Path) -> None:
        partial.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{partial.name}.", dir=partial.parent))
        state = {"version": STATE_VERSION, "dim": self.dim, "dtype": self.dtype.name, "fingerprint": self.fingerprint}
        state["inputs"] = inputs_digest(self._inputs)
        _write_synced(tmp / "state.json", (json.dumps(state, indent=1, sort_keys=True) + "\n").encode("utf-8"))
        _write_synced(tmp / "data.npy", npy_header(self.dtype, 0, self.dim))
        (tmp / "journal.jsonl").touch()
        _fsync_dir(tmp)
        os.replace(tmp, partial)  # the partial directory appears complete or not at all
        _fsync_dir(partial.parent)
        self._dir = partial
        self._data = open(partial / "data.npy", "r+b")
        self._data.seek(0, os.SEEK_END)
        self._journal_fh = open(partial / "journal.jsonl", "ab")

    def _reopen(self, partial: Path) -> None:
        if not (partial / "data.npy").exists() and self.paths.out.exists():
            # Killed after `finish()` renamed the array into place: only the cleanup was left.
            shutil.rmtree(partial, ignore_errors=True)
            self._mark_complete()
            return
        try:
            state = json.loads((partial / "state.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise UsageError(f"{partial} is not a resumable run ({exc}); pass --overwrite to start over") from exc
        mine = {"version": STATE_VERSION, "dim": self.dim, "dtype": self.dtype.name, "fingerprint": self.fingerprint}
        theirs = {k: state.get(k) for k in mine}
        # Round-trip through JSON so tuples and lists compare equal.
        mine = json.loads(json.dumps(mine))
        if theirs != mine:
            raise UsageError(
                f"{partial} was made with different settings ({_describe_difference(theirs, mine)}); "
                "resume with the same model and options (--threads 1 or not, too: it picks the convolution path), "
                "or pass --overwrite to start over"
            )
        if state.get("inputs") != inputs_digest(self._inputs):
            raise UsageError(f"{partial}: {INPUTS_CHANGED}")
        journal = _read_journal(partial / "journal.jsonl")
        data_path = partial / "data.npy"
        size = data_path.stat().st_size
        committed = self._header_len + len(journal.paths) * self._row_bytes
        if size < committed:
            raise UsageError(
                f"{data_path} holds fewer rows than its journal records; pass --overwrite to start over"
            )
        with open(partial / "journal.jsonl", "r+b") as fh:
            fh.truncate(journal.valid_bytes)
        self._data = open(data_path, "r+b")
        self._data.truncate(committed)  # drop rows of a batch that was never committed
        self._data.seek(committed)
        self._journal = journal
        self._journal_fh = open(partial / "journal.jsonl", "ab")
        self._dir = partial
        self.resumed_rows = len(journal.paths)

    # -- state ---------------------------------------------------------------------------------

    @property
    def done(self) -> Counter[str]:
        """How many times each input path was already embedded or recorded as failed.

        A count, not a set: an input given twice is processed twice, and only the occurrences
        an earlier run finished are skipped (see `skip_done`).
        """
        return Counter(self._journal.paths) + Counter(p for p, _ in self._journal.errors)

    def skip_done(self, items: Iterable[Any]) -> Iterator[Any]:
        """Items (anything with `.path`) minus the first `done[path]` occurrences of each path."""
        remaining = self.done
        for item in items:
            if remaining[item.path] > 0:
                remaining[item.path] -= 1
                continue
            yield item

    @property
    def rows(self) -> int:
        return len(self._journal.paths)

    @property
    def failed(self) -> int:
        return len(self._journal.errors)

    # -- writing -------------------------------------------------------------------------------

    def commit(self, paths: Sequence[str], rows: np.ndarray | None, errors: Sequence[tuple[str, str]] = ()) -> None:
        """Append one batch: `rows[i]` is the embedding of `paths[i]`; `errors` are (path, reason)."""
        if self._closed or self.already_complete:
            raise RuntimeError("this EmbedWriter is closed")
        paths = [str(p) for p in paths]
        for p in paths:
            problem = manifest_problem(p)
            if problem:
                raise ValueError(f"{p!r}: {problem}")
        if paths:
            if rows is None:
                raise ValueError("rows are required when paths are given")
            arr = np.asarray(rows)
            if arr.ndim != 2 or arr.shape != (len(paths), self.dim):
                raise ValueError(f"expected rows of shape ({len(paths)}, {self.dim}), got {arr.shape}")
            data = np.ascontiguousarray(arr.astype(self.dtype, copy=False)).tobytes()
            self._data.write(data)
            self._data.flush()
            if self._dir is not None:
                os.fsync(self._data.fileno())
        errors = [(str(p), str(r)) for p, r in errors]
        if self._journal_fh is not None and (paths or errors):
            # ASCII with \\u escapes: non-UTF-8 file names (surrogates) round-trip through json.
            line = json.dumps({"rows": paths, "errors": errors}, ensure_ascii=True) + "\n"
            self._journal_fh.write(line.encode("ascii"))
            self._journal_fh.flush()
            os.fsync(self._journal_fh.fileno())
        self._journal.paths.extend(paths)
        self._journal.errors.extend(errors)

    @property
    def manifest_paths(self) -> list[str]:
        """Row i's input path, for every row written so far."""
        return list(self._journal.paths)

    @property
    def error_entries(self) -> list[tuple[str, str]]:
        return list(self._journal.errors)

    def finish(self, stream: IO[bytes] | None = None) -> EmbedSummary:
        """Publish the result: rename into place, or stream the array to `stream` (`-o -`)."""
        if self.already_complete:
            return EmbedSummary(rows=0, dim=self.dim, dtype=self.dtype.name, failed=0, out=self.paths.out)
        if self._closed:
            raise RuntimeError("this EmbedWriter is closed")
        header = npy_header(self.dtype, self.rows, self.dim)
        if len(header) != self._header_len:  # numpy pads for 21 digits of rows; never expected
            raise RuntimeError("the .npy header length changed with the row count")
        self._data.seek(0)
        self._data.write(header)
        self._data.flush()
        summary = EmbedSummary(
            rows=self.rows, dim=self.dim, dtype=self.dtype.name, failed=self.failed, resumed_rows=self.resumed_rows
        )
        paths = self.paths
        if paths.out is None:
            self._stream_to(stream)
        else:
            os.fsync(self._data.fileno())
        self._close_handles()
        _write_atomic(paths.manifest, self._journal.paths)
        summary.manifest = paths.manifest
        if self._journal.errors:
            _write_atomic(paths.errors, (f"{escape_error_path(p)}\t{r}" for p, r in self._journal.errors))
            summary.errors_file = paths.errors
        else:
            paths.errors.unlink(missing_ok=True)  # a stale list from an earlier run would mislead
        if paths.out is not None:
            os.replace(self._dir / "data.npy", paths.out)
            _fsync_dir(paths.out.parent)
            shutil.rmtree(self._dir, ignore_errors=True)
            summary.out = paths.out
        return summary

    def _stream_to(self, stream: IO[bytes] | None) -> None:
        if stream is None:
            raise ValueError("a stream is required for output to stdout")
        self._data.seek(0)
        while chunk := self._data.read(_COPY_CHUNK):
            stream.write(chunk)
        stream.flush()

    def _close_handles(self) -> None:
        self._closed = True
        for fh in (self._data, self._journal_fh):
            if fh is not None:
                fh.close()

    def close(self) -> None:
        """Stop without publishing; the partial directory stays for `--resume`.

        Never raises OSError: after a failed write (disk full) closing flushes the same buffered
        bytes again, and that second failure would hide the first; the journal is the truth."""
        if self._closed:
            return
        self._closed = True
        for fh in (self._data, self._journal_fh):
            if fh is not None:
                try:
                    fh.close()
                except OSError:
                    pass

    def __enter__(self) -> "EmbedWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _describe_difference(theirs: dict[str, Any], mine: dict[str, Any]) -> str:
    diffs = []
    flat_theirs = {**(theirs.get("fingerprint") or {}), **{k: v for k, v in theirs.items() if k != "fingerprint"}}
    flat_mine = {**(mine.get("fingerprint") or {}), **{k: v for k, v in mine.items() if k != "fingerprint"}}
    for key in sorted(set(flat_theirs) | set(flat_mine)):
        if flat_theirs.get(key) != flat_mine.get(key):
            diffs.append(f"{key}: {flat_theirs.get(key)!r} then, {flat_mine.get(key)!r} now")
    return "; ".join(diffs[:3]) or "unknown"
