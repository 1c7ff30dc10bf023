"""`bit eval --errors FILE`: every misclassified image, for a reviewer, as CSV or JSONL.

The file's suffix picks the format: `.csv` (a header `path,true,predicted,score`, then a row per
mistake; names that start like a spreadsheet formula get a leading `'`) or `.jsonl` (one
{"path", "true", "predicted", "score"} object per line, names exact). Rows come most confident
first (`transfer.evaluate`). The file is written atomically (whole or absent) and only over
a file bit eval wrote (recognised by its first line) or an empty one; a link, a folder or a
special file is refused before the evaluation starts.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable

from bitcli.errors import BitError, UsageError
from bitcli.output.escapes import csv_cell
from bitcli.output.records import check_own_file, csv_line, to_json
from bitcli.util import os_error_reason

FIELDS = ("path", "true", "predicted", "score")
FORMATS = {".csv": "csv", ".jsonl": "jsonl"}


def errors_format(path: str | os.PathLike[str]) -> str:
    """`csv` or `jsonl` from the suffix of `path` (UsageError for any other)."""
    fmt = FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise UsageError(f"--errors {path}: name the file .csv or .jsonl (the suffix picks the format)")
    return fmt


def check_errors_target(path: str | os.PathLike[str]) -> Path:
    """`path` if the mistakes may be written there (UsageError otherwise): new, empty, or written by bit eval."""
    errors_format(path)
    return check_own_file(path, "--errors", "bit eval", lambda head: not head or _written_by_eval(head))


def _written_by_eval(head: bytes) -> bool:
    first = head.split(b"\n", 1)[0].decode("utf-8", errors="replace")
    if first == ",".join(FIELDS):
        return True
    try:
        record = json.loads(first)
    except ValueError:
        return False
    return isinstance(record, dict) and tuple(record) == FIELDS


def mistake_lines(mistakes: Iterable[dict[str, Any]], fmt: str) -> Iterable[str]:
    """The file's lines (without newlines) for `fmt` (`csv` or `jsonl`)."""
    if fmt == "jsonl":
        for m in mistakes:
            yield to_json({key: m[key] for key in FIELDS})
        return
    yield ",".join(FIELDS)
    for m in mistakes:
        yield csv_line([csv_cell(m["path"]), csv_cell(m["true"]), csv_cell(m["predicted"]), repr(m["score"])])


def write_mistakes(path: str | os.PathLike[str], mistakes: list[dict[str, Any]]) -> None:
    """The mistakes at `path` (checked again), atomically, in the format its suffix names."""
    from bitcli.util import encode_lines, write_atomic

    target = check_errors_target(path)
    try:
        write_atomic(target, encode_lines(mistake_lines(mistakes, errors_format(target))))
    except OSError as exc:
        raise BitError(f"--errors {path}: could not be written ({os_error_reason(exc)}); the figures are on stdout") from exc
