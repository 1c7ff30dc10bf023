"""`EmbedWriter`: append committed batches of rows; publish the `.npy`, manifest and error list
atomically. `write_groups`: the embed loop, one commit per batch of results.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from bitcli.errors import UsageError
from bitcli.store.files import fsync_dir, npy_header, write_atomic, write_synced
from bitcli.store.journal import Journal, encode_identity, finished_inputs, inputs_digest, read_journal
from bitcli.store.metadata import EmbeddingMetadata, FileIdentity, write_metadata
from bitcli.store.paths import EmbedPaths, check_output, escape_error_path, manifest_problem

if TYPE_CHECKING:
    from bitcli.results import EmbedResult

STATE_VERSION = 1
INPUTS_CHANGED = "inputs changed since the interrupted run; pass --overwrite to start again"
_COPY_CHUNK = 1 << 22  # bytes per read when streaming a finished array


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


class EmbedWriter:
    """Append batches of rows; `finish()` publishes the `.npy`, manifest, error list and metadata
    sidecar (`metadata.py`: what made the rows, and each row's file identity) atomically.

    `fingerprint` describes everything that determines the rows (model, revision, dtype,
    normalization, batch size, ...); `--resume` refuses a partial run made with another one.
    `done` is the set of input paths already handled (embedded or failed) by an earlier run.
    `update`: the existing output is being brought up to date (`--update`); it stays in place
    until `finish()` replaces it.
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
        update: bool = False,
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
        self._journal = Journal()
        self._dir: Path | None = None
        self._data: IO[bytes] | None = None
        self._journal_fh: IO[bytes] | None = None
        self.resumed_rows = 0
        self.already_complete = False
        self._closed = False
        check_output(paths, resume=resume, overwrite=overwrite, update=update)
        if paths.out is None:
            self._data = tempfile.TemporaryFile()  # anonymous: nothing to resume, nothing left behind
            self._data.write(npy_header(self.dtype, 0, self.dim))
            return
        partial = paths.partial
        if overwrite and partial.exists():
            shutil.rmtree(partial)
        if partial.exists():
            self._reopen(partial)
        elif paths.out.exists() and resume and not (overwrite or update):
            self._mark_complete()
        else:
            self._create(partial)

    # -- opening -------------------------------------------------------------------------------

    def _mark_complete(self) -> None:
        """`--resume` of a finished run: nothing to do, if it was made from the same inputs."""
        if self._inputs is not None and Counter(self._inputs) != finished_inputs(self.paths):
            raise UsageError(f"{self.paths.out}: {INPUTS_CHANGED}")
        self.already_complete = True
        self._closed = True

    def _create(self, partial: Path) -> None:
        partial.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{partial.name}.", dir=partial.parent))
        state = {"version": STATE_VERSION, "dim": self.dim, "dtype": self.dtype.name, "fingerprint": self.fingerprint}
        state["inputs"] = inputs_digest(self._inputs)
        write_synced(tmp / "state.json", (json.dumps(state, indent=1, sort_keys=True) + "\n").encode("utf-8"))
        write_synced(tmp / "data.npy", npy_header(self.dtype, 0, self.dim))
        (tmp / "journal.jsonl").touch()
        fsync_dir(tmp)
        os.replace(tmp, partial)  # the partial directory appears complete or not at all
        fsync_dir(partial.parent)
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
        journal = read_journal(partial / "journal.jsonl")
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

    def commit(
        self,
        paths: Sequence[str],
        rows: np.ndarray | None,
        errors: Sequence[tuple[str, str]] = (),
        identities: Sequence[FileIdentity | None] | None = None,
    ) -> None:
        """Append one batch: `rows[i]` is the embedding of `paths[i]`; `errors` are (path, reason);
        `identities[i]`: what `paths[i]` was before it was read (None: unknown)."""
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
        identities = list(identities) if identities is not None else [None] * len(paths)
        if len(identities) != len(paths):
            raise ValueError(f"{len(identities)} identities for {len(paths)} rows")
        if self._journal_fh is not None and (paths or errors):
            # ASCII with \\u escapes: non-UTF-8 file names (surrogates) round-trip through json.
            entry = {"rows": paths, "errors": errors, "ids": [encode_identity(i) for i in identities]}
            line = json.dumps(entry, ensure_ascii=True) + "\n"
            self._journal_fh.write(line.encode("ascii"))
            self._journal_fh.flush()
            os.fsync(self._journal_fh.fileno())
        self._journal.paths.extend(paths)
        self._journal.errors.extend(errors)
        self._journal.identities.extend(identities)

    @property
    def manifest_paths(self) -> list[str]:
        """Row i's input path, for every row written so far."""
        return list(self._journal.paths)

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
        write_atomic(paths.manifest, self._journal.paths)
        summary.manifest = paths.manifest
        if self._journal.errors:
            write_atomic(paths.errors, (f"{escape_error_path(p)}\t{r}" for p, r in self._journal.errors))
            summary.errors_file = paths.errors
        else:
            paths.errors.unlink(missing_ok=True)  # a stale list from an earlier run would mislead
        self._write_sidecar()
        if paths.out is not None:
            os.replace(self._dir / "data.npy", paths.out)
            fsync_dir(paths.out.parent)
            shutil.rmtree(self._dir, ignore_errors=True)
            summary.out = paths.out
        return summary

    def _write_sidecar(self) -> None:
        """`OUT.meta.json` and `OUT.files.jsonl`: what made the rows, each row's file identity."""
        from bitcli import __version__

        paths = self.paths
        base = paths.sidecars.meta.parent
        meta = EmbeddingMetadata.from_fingerprint(
            {**self.fingerprint, "dtype": self.dtype.name},
            rows=self.rows,
            feature_dim=self.dim,
            bitcli_version=__version__,
            content_hash="sha256" if self.fingerprint.get("content_hash") else None,
            cwd=os.getcwd(),
            array=None if paths.out is None else _name_from(paths.out, base),
            manifest=_name_from(paths.manifest, base),
        )
        write_metadata(paths.sidecars, meta, zip(self._journal.paths, self._journal.identities))

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


def _name_from(path: Path, base: Path) -> str:
    """`path` relative to `base` when it lies there, else absolute."""
    absolute = Path(os.path.abspath(path))
    return absolute.name if absolute.parent == Path(os.path.abspath(base)) else str(absolute)


def write_groups(
    writer: EmbedWriter,
    groups: Iterable[list[EmbedResult]],
    on_group: Callable[[list[EmbedResult]], None] | None = None,
    identity: Callable[[str], FileIdentity | None] | None = None,
) -> None:
    """Commit each group of results (one batch: its rows and failures, in input order) to `writer`.

    A group is committed whole or not at all, which is what makes `--resume` byte-identical.
    `on_group` sees each group after its commit (the command reports failures and progress there).
    `identity(path)`: the file's identity taken before it was read, for the metadata sidecar.
    """
    for group in groups:
        ok = [r for r in group if r.ok]
        errors = [(r.path, str(r.error)) for r in group if not r.ok]
        identities = [identity(r.path) for r in ok] if identity is not None else None
        writer.commit([r.path for r in ok], np.stack([r.vector for r in ok]) if ok else None, errors, identities)
        if on_group is not None:
            on_group(group)
