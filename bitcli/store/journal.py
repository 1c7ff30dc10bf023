"""The journal of a partial run (what each committed batch added), and the record of a finished one.

The journal is read line by line, each line capped, and never beyond the number of inputs the
run has: a damaged or oversized journal ends at its last good line (the rows after it are
re-embedded), and memory stays proportional to the input list.

The run record (`.OUT.npy.run.json`, published with the output) keeps what the partial
directory's `state.json` said (model, dtype, options, input digest) plus the row and failure
counts and the size of each file of the set, so `--resume` of a finished output checks it as
strictly as an unfinished one. An output assembled from shards (`publish.Assembly`) gets the same
record, from the shards' fingerprint and input digest; `--engine ray` adds its job (the model as
given and the options), which is what its driver can compare without loading the model.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from bitcli.errors import UsageError
from bitcli.store.settings import describe_difference
from bitcli.store.files import read_json_record, read_npy_header
from bitcli.store.metadata import FileIdentity

if TYPE_CHECKING:
    from bitcli.store.paths import EmbedPaths

JOURNAL_LINE_MAX = 64 << 20  # one batch's paths and errors; a longer line is damage
RECORD_VERSION = 1
ASSEMBLY = "assembly"  # in state.json: the partial directory is assembled from shards (publish.Assembly)


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
    """What produced the rows: compared on --resume (JSON round trip: tuples equal lists)."""
    state = {**(extra or {}), "version": RECORD_VERSION, "dim": dim, "dtype": dtype, "fingerprint": fingerprint,
             "inputs": inputs_digest(inputs)}
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


def assembled_by(state: dict[str, Any] | None) -> str | None:
    """The command assembling the output in a partial directory whose `state.json` is `state`
    (`publish.Assembly`), or None for a local run's."""
    who = (state or {}).get(ASSEMBLY)
    return str(who) if who else None


def read_run_record(paths: "EmbedPaths") -> tuple[dict[str, Any] | None, str | None]:
    """(the finished output's run record, None) or (None, why there is none to check)."""
    record = read_json_record(paths.record)
    if record is None:
        return None, f"it has no readable record of how it was made ({paths.record.name} is missing or damaged)"
    return record, None


def finished_problem(paths: "EmbedPaths", state: dict[str, Any], rows_dtype) -> str | None:
    """Why a finished output does not match the run about to resume it (None: it does)."""
    record, problem = read_run_record(paths)
    if record is None:
        return problem
    theirs = {k: record.get(k) for k in state}
    if theirs.get("inputs") != state["inputs"] and describe_difference(theirs, state) is None:
        return "the inputs changed since it was made"
    difference = describe_difference(theirs, state)
    if difference:
        return f"it was made with different settings ({difference})"
    return files_problem(paths, record, state["dim"], rows_dtype)


def files_problem(paths: "EmbedPaths", record: dict[str, Any], dim: Any, rows_dtype, *, places: bool = True) -> str | None:
    """Why the files of a finished output are not the ones its run record lists (None: they are).

    Every file of the set (`EmbedPaths.set_files`) has the size the record gives, or is absent
    when the record lists none (and, with `places`, the path it gives); the array's header holds
    the recorded rows of `dim` `rows_dtype`.
    """
    for role, path in paths.set_files().items():
        if role == "record":
            continue
        want = (record.get("files") or {}).get(role)
        if places and role != "array" and want is not None and os.path.abspath(path) != want.get("path"):
            return f"it was made with its {role} at {want.get('path')}"
        if file_size(path) != (None if want is None else want.get("size")):
            return f"its {role} changed since it was made"
    header = read_npy_header(paths.out)
    if header is None or header[0] != (record.get("rows"), dim) or header[1] != rows_dtype:
        return "its array changed since it was made"
    return None
