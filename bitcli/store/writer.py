"""`EmbedWriter`: append committed batches of rows; publish the `.npy`, manifest, error list,
metadata sidecar (`metadata.py`), row norms and run record as one set (see `publish.py`).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Sequence

import numpy as np

from bitcli.errors import UsageError
from bitcli.store.files import (
    DATA, JOURNAL, STATE, Journal, check_same_update, copy_to_stream,
    encode_identity, files_problem, make_partial, npy_header, partial_problem, read_journal, read_json_record,
    remove_partial, run_state, take_lock,
)
from bitcli.store.metadata import FileIdentity, metadata_for
from bitcli.inputs import path_problem
from bitcli.store.paths import EmbedPaths, check_output, escape_error_path, writing
from bitcli.store.settings import check_made_alike
from bitcli.store.publish import ANOTHER_RUN, StagedSet, clear_staged, recover

INPUTS_CHANGED = "inputs changed since the interrupted run; pass --overwrite to start again"


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
    already_complete: bool = False  # `--resume` of a finished output: nothing was written
    update: str | None = None  # `--update`'s plan (`+3 new, 1 changed, 2 removed, 23 kept`), or "up to date"


class EmbedWriter:
    """Append batches of rows; `finish()` publishes the `.npy`, manifest, error list, metadata
    sidecar and run record as one set. Opening completes a publication a kill interrupted
    (`recover`), then takes the partial directory's lock (a second writer is refused).

    `fingerprint`: what determines the rows (`--resume` refuses a run made with another);
    `update_plan`: `--update`'s plan digest (only the same update resumes); `extra`: more of what
    made the rows, compared like the rest (a shard's split and index); `made`: a run record's
    `settings`, `runtime` and `inputs` in place of `fingerprint` and `inputs` (rows copied from
    collections); `cwd`: what relative row paths are relative to (default: this process's).
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
        update_plan: str | None = None,
        extra: dict[str, Any] | None = None,
        made: dict[str, Any] | None = None,
        cwd: str | None = None,
    ) -> None:
        if dtype not in ("float32", "float16"):
            raise UsageError(f"--dtype {dtype}: choose float32 or float16")
        self.paths = paths
        self.dim = int(dim)
        self.dtype = np.dtype(dtype).newbyteorder("<")
        self._inputs = None if inputs is None else list(inputs)
        self._state = {**run_state(self.dim, self.dtype.name, dict(fingerprint or {}), self._inputs, extra), **(made or {})}
        self.cwd = cwd
        if update_plan is not None:
            self._state["update"] = update_plan  # in state.json only: the finished record omits it
        update = update_plan is not None
        self._header_len = len(npy_header(self.dtype, 0, self.dim))
        self._row_bytes = self.dim * self.dtype.itemsize
        self._journal = Journal()
        self._dir: Path | None = None
        self._data: IO[bytes] | None = None
        self._journal_fh: IO[bytes] | None = None
        self._lock: IO[bytes] | None = None
        self.resumed_rows = 0
        self.already_complete = False
        self._complete_failed = 0
        self._closed = False
        # What a failed write of the rows names: the array, or (-o -) the temporary folder they wait in.
        self._data_name = paths.out or Path(tempfile.gettempdir())
        if paths.out is None:
            check_output(paths, resume=resume, overwrite=overwrite, update=update)
            self._data = tempfile.TemporaryFile()  # anonymous: nothing to resume, nothing left behind
            self._data.write(npy_header(self.dtype, 0, self.dim))
            return
        self.recovered = recover(paths)
        check_output(paths, resume=resume, overwrite=overwrite, update=update)
        try:
            self._open(paths.partial, resume=resume, overwrite=overwrite, update=update)
        except BaseException:
            self.close()  # a refused or failed start holds no lock (a library caller goes on living)
            raise

    # -- opening -------------------------------------------------------------------------------

    def _open(self, partial: Path, *, resume: bool, overwrite: bool, update: bool) -> None:
        if partial.is_dir():
            self._lock = take_lock(partial)
            if self._lock is None:
                raise UsageError(f"{self.paths.out}: {ANOTHER_RUN}")
            if overwrite:
                remove_partial(partial)
                self._release()
                clear_staged(self.paths)
                self._create(partial)
            else:
                self._reopen(partial)
        elif self.paths.out.exists() and resume and not update:
            self._mark_complete()
        else:
            clear_staged(self.paths)
            self._create(partial)

    def _mark_complete(self) -> None:
        """`--resume` of a finished run: nothing to do, if its record matches this run exactly."""
        record, redo = read_json_record(self.paths.record), "pass --overwrite to redo it"
        if record is None:
            raise UsageError(f"{self.paths.out}: it has no readable record of how it was made "
                             f"({self.paths.record.name} is missing or damaged); {redo}")
        check_made_alike(record, self._state, lambda difference: UsageError(f"{self.paths.out}: " + (
            "the inputs changed since it was made" if difference is None else
            f"it was made with different settings ({difference})") + f"; {redo}"))
        problem = files_problem(self.paths, record, self._state.get("dim", record.get("dim")), self.dtype)
        if problem:
            raise UsageError(f"{self.paths.out}: {problem}; {redo}")
        self._complete_failed = int(record.get("failed") or 0)
        self.already_complete = True
        self._closed = True

    def _create(self, partial: Path) -> None:
        """A new partial directory (`files.make_partial`: complete or absent), its lock held; a
        second run racing for it is refused."""
        with writing(self.paths.out):
            self._lock = make_partial(partial, self.paths.partial_tmp, self._state, npy_header(self.dtype, 0, self.dim))
            if self._lock is None:
                raise UsageError(f"{self.paths.out}: {ANOTHER_RUN}")
            self._dir = partial
            self._data = open(partial / DATA, "r+b")
            self._data.seek(0, os.SEEK_END)
            self._journal_fh = open(partial / JOURNAL, "ab")

    def _reopen(self, partial: Path) -> None:
        problem = partial_problem(partial)
        if problem:
            raise UsageError(f"{partial} is damaged ({problem}), so it cannot be resumed; pass --overwrite to start again")
        state = read_json_record(partial / STATE)
        check_same_update(partial, state.get("update"), self._state.get("update"))
        check_made_alike(state, self._state, lambda difference: UsageError(
            f"{partial}: {INPUTS_CHANGED}" if difference is None else
            f"{partial} was made with different settings ({difference}); resume with the same model and "
            "options (--threads 1 or not, too: it picks the convolution path), or pass --overwrite to start over"
        ))
        inputs = None if self._inputs is None else len(self._inputs)
        journal = read_journal(partial / JOURNAL, max_entries=inputs)
        data_path = partial / DATA
        committed = self._header_len + len(journal.paths) * self._row_bytes
        if data_path.stat().st_size < committed:
            raise UsageError(f"{data_path} holds fewer rows than its journal records; pass --overwrite to start over")
        with writing(self.paths.out):
            with open(partial / JOURNAL, "r+b") as fh:
                fh.truncate(journal.valid_bytes)
            self._data = open(data_path, "r+b")
            self._data.truncate(committed)  # drop rows of a batch that was never committed
            self._data.seek(committed)
            self._journal_fh = open(partial / JOURNAL, "ab")
        self._journal = journal
        self._dir = partial
        self.resumed_rows = len(journal.paths)

    # -- state ---------------------------------------------------------------------------------

    @property
    def done(self) -> Counter[str]:
        """How many times each input path was already embedded or recorded as failed.

        A count, not a set: an input given twice is processed twice, and only the occurrences
        an earlier run finished are skipped.
        """
        return Counter(self._journal.paths) + Counter(p for p, _ in self._journal.errors)

    @property
    def rows(self) -> int:
        return len(self._journal.paths)

    @property
    def failed(self) -> int:
        """Inputs recorded as failed (for a finished output being resumed: its failures)."""
        return self._complete_failed if self.already_complete else len(self._journal.errors)

    # -- writing -------------------------------------------------------------------------------

    def commit(
        self,
        paths: Sequence[str],
        rows: np.ndarray | None,
        errors: Sequence[tuple[str, str]] = (),
        identities: Sequence[FileIdentity | None] | None = None,
    ) -> None:
        """Append one batch: `rows[i]` is the embedding of `paths[i]`; `errors` are (path, reason);
        `identities[i]`: what `paths[i]`'s file was before it was read (None: unknown), journaled
        with the batch so that a resumed run's sidecar keeps it."""
        if self._closed or self.already_complete:
            raise RuntimeError("this EmbedWriter is closed")
        paths = [str(p) for p in paths]
        for p in paths:
            if path_problem(p):  # a manifest holds one path a line
                raise ValueError(f"{p!r}: {path_problem(p)}; rename the file")
        if paths:
            if rows is None:
                raise ValueError("rows are required when paths are given")
            arr = np.asarray(rows)
            if arr.ndim != 2 or arr.shape != (len(paths), self.dim):
                raise ValueError(f"expected rows of shape ({len(paths)}, {self.dim}), got {arr.shape}")
            data = np.ascontiguousarray(arr.astype(self.dtype, copy=False)).tobytes()
            with writing(self._data_name):
                self._data.write(data)
                self._data.flush()
                if self._dir is not None:
                    os.fsync(self._data.fileno())
        errors = [(str(p), str(r)) for p, r in errors]
        identities = [None] * len(paths) if identities is None else list(identities)
        if len(identities) != len(paths):
            raise ValueError(f"{len(identities)} identities for {len(paths)} rows")
        if self._journal_fh is not None and (paths or errors):
            # ASCII with \\u escapes: non-UTF-8 file names (surrogates) round-trip through json.
            entry = {"rows": paths, "errors": errors, "ids": [encode_identity(i) for i in identities]}
            line = json.dumps(entry, ensure_ascii=True) + "\n"
            with writing(self.paths.out):
                self._journal_fh.write(line.encode("ascii"))
                self._journal_fh.flush()
                os.fsync(self._journal_fh.fileno())
        self._journal.paths.extend(paths)
        self._journal.errors.extend(errors)
        self._journal.identities.extend(identities)

    def finish(self, stream: IO[bytes] | None = None) -> EmbedSummary:
        """Publish the result as one set (see `publish.py`), or stream the array to `stream` (`-o -`)."""
        paths = self.paths
        if self.already_complete:
            errors_file = paths.errors if self._complete_failed else None
            return EmbedSummary(rows=0, dim=self.dim, dtype=self.dtype.name, failed=self._complete_failed,
                                out=paths.out, manifest=paths.manifest, errors_file=errors_file, already_complete=True)
        if self._closed:
            raise RuntimeError("this EmbedWriter is closed")
        summary = EmbedSummary(rows=self.rows, dim=self.dim, dtype=self.dtype.name, failed=self.failed,
                               resumed_rows=self.resumed_rows, out=paths.out, manifest=paths.manifest,
                               errors_file=paths.errors if self._journal.errors else None)
        header = npy_header(self.dtype, self.rows, self.dim)
        if len(header) != self._header_len:  # numpy pads for 21 digits of rows; never expected
            raise RuntimeError("the .npy header length changed with the row count")
        staged = StagedSet(paths, self._dir)
        try:
            with writing(self._data_name):
                self._data.seek(0)
                self._data.write(header)
                self._data.flush()
            staged.lines("manifest", self._journal.paths)
            if self._journal.errors:
                staged.lines("errors", (f"{escape_error_path(p)}\t{r}" for p, r in self._journal.errors))
            meta = metadata_for(paths, self._state, rows=self.rows, dim=self.dim, cwd=self.cwd)
            staged.sidecar(meta, zip(self._journal.paths, self._journal.identities))
            if paths.out is None:
                if stream is None:
                    raise ValueError("a stream is required for output to stdout")
                copy_to_stream(self._data, stream)
                self._close_handles()
                staged.publish_now()
                return summary
            with writing(paths.out):
                os.fsync(self._data.fileno())
            staged.array(self._header_len + self.rows * self._row_bytes)
            state = {k: v for k, v in self._state.items() if k != "update"}  # a finished update is a finished run
            staged.record(state, rows=self.rows, failed=self.failed)
            self._close_handles()
        except BaseException:
            staged.discard()
            raise
        staged.publish()
        self._release()
        return summary

    def made_by(self, made: dict[str, Any]) -> None:
        """What made the rows, known once they are made (the Ray workers' `settings` and `runtime`,
        the input digest): the finished record's, in place of what the run was opened with."""
        self._state.update(made)

    def discard_if_empty(self) -> None:
        """Close; a partial directory this run made that holds no committed row or failure (the
        work is elsewhere: a Ray run's shards) is removed, not left for `--resume`."""
        if self._dir is not None and not self._closed and not self.resumed_rows and not self.rows and not self.failed:
            self._close_handles()
            remove_partial(self._dir)
        self.close()

    def _close_handles(self) -> None:
        self._closed = True
        for fh in (self._data, self._journal_fh):
            if fh is not None:
                fh.close()

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def close(self) -> None:
        """Stop without publishing; the partial directory stays for `--resume`, and its lock goes.

        Never raises OSError: after a failed write (disk full) closing flushes the same buffered
        bytes again, and that second failure would hide the first; the journal is the truth."""
        if not self._closed:
            self._closed = True
            for fh in (self._data, self._journal_fh):
                if fh is not None:
                    try:
                        fh.close()
                    except OSError:
                        pass
        self._release()

    def __enter__(self) -> "EmbedWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
