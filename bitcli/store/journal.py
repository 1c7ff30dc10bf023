"""The journal of a partial run: what each committed batch added, read back for `--resume`."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from bitcli.store.files import read_lines
from bitcli.store.metadata import FileIdentity
from bitcli.store.paths import EmbedPaths, unescape_error_path


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


def finished_inputs(paths: EmbedPaths) -> Counter[str] | None:
    """The inputs a finished run accounted for: its manifest and error list (None: unreadable)."""
    try:
        done = Counter(read_lines(paths.manifest))
        if paths.errors.exists():
            done += Counter(unescape_error_path(line.split("\t", 1)[0]) for line in read_lines(paths.errors))
    except OSError:
        return None
    return done


def read_journal(path: Path) -> Journal:
    journal = Journal()
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
            identities = [decode_identity(i) for i in entry.get("ids") or [None] * len(paths)]
        except (ValueError, KeyError, TypeError):
            break
        if len(identities) != len(paths):  # written by a bitcli that recorded none: unknown
            identities = [None] * len(paths)
        journal.paths.extend(paths)
        journal.errors.extend(errors)
        journal.identities.extend(identities)
        offset += len(raw)
    journal.valid_bytes = offset
    return journal


def encode_identity(identity: FileIdentity | None) -> list | None:
    """A row's identity in a journal line: [size, mtime_ns, sha256 or null], or null."""
    return None if identity is None else [identity.size, identity.mtime_ns, identity.sha256]


def decode_identity(value: list | None) -> FileIdentity | None:
    if value is None:
        return None
    size, mtime_ns, sha256 = value
    return FileIdentity(int(size), int(mtime_ns), None if sha256 is None else str(sha256))
