"""`bit eval`'s outputs: its figures (one JSON object, or tables) and `--errors FILE`, every
misclassified image as `.csv` or `.jsonl` (by suffix), written only over a file bit eval wrote.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable

from bitcli.errors import BitError, UsageError
from bitcli.output.escapes import csv_cell, shown
from bitcli.output.records import check_own_file, csv_line, to_json
from bitcli.output.tables import format_percent
from bitcli.util import os_error_reason

# Classes beyond this many: the confusion matrix is left out of the table view (it is in the JSON).
MAX_MATRIX_CLASSES = 20


def titled(title: str, table: Any) -> Any:
    """`table` under its title on a line of its own (a table's own title wraps to the table's width)."""
    from rich.console import Group
    from rich.text import Text

    return Group(Text(title, style="bold"), table)


def evaluation_tables(record: dict[str, Any]) -> list[Any]:
    """The tables of `Evaluation.as_dict()`: summary, per class, and the confusion matrix."""
    from rich.table import Table
    from rich.text import Text

    summary = Table(show_header=False, show_edge=False)
    summary.add_column("field", style="dim")
    summary.add_column("value")
    summary.add_row("model", Text(shown(record.get("model", ""))))
    summary.add_row("images", f"{record['n']:,}" + (f" ({record['failed']} unreadable, left out)" if record.get("failed") else ""))
    summary.add_row("accuracy", format_percent(record["accuracy"]))
    summary.add_row("top-5 accuracy", format_percent(record["top5"]) if record["top5"] is not None else "- (5 classes or fewer)")
    tables = [titled("Evaluation", summary)]

    per_class = Table(show_edge=False)
    for name, justify in (("class", "left"), ("precision", "right"), ("recall", "right"), ("support", "right")):
        per_class.add_column(name, justify=justify)
    matched = record.get("matched", {})
    for name, row in record["per_class"].items():
        text = f"{name} ({matched[name]})" if name in matched else name
        per_class.add_row(Text(shown(text)), format_percent(row["precision"]), format_percent(row["recall"]), f"{row['support']:,}")
    tables.append(titled("Per class", per_class))

    classes = record["classes"]
    if len(classes) <= MAX_MATRIX_CLASSES:
        other = record.get("predicted_other")
        matrix = Table(show_edge=False)
        matrix.add_column("")
        for name in classes:
            matrix.add_column(Text(shown(name)), justify="right")
        if other is not None:
            matrix.add_column("other", justify="right", style="dim")
        for i, name in enumerate(classes):
            cells = [str(v) for v in record["confusion"][i]] + ([str(other[i])] if other is not None else [])
            matrix.add_row(Text(shown(name)), *cells)
        tables.append(titled("Confusion (rows: true class, columns: predicted)", matrix))
    return tables


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
