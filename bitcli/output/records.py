"""Machine formats: jsonl, one JSON array, csv, and pretty JSON documents, streamed (one `write`
per record, flushed); `render_records` and `render_document` pick a table for people or one of them.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import IO, Any, Callable, Iterable

from bitcli.errors import UsageError
from bitcli.output.tables import stdout_console
from bitcli.util import check_replaceable, open_regular


def resolve_format(fmt: str, stream: IO[str]) -> str:
    """`auto` -> `table` when `stream` is a terminal, else `jsonl`; other formats pass through."""
    if fmt != "auto":
        return fmt
    return "table" if is_terminal(stream) else "jsonl"


def is_terminal(stream: IO[Any] | None) -> bool:
    """Whether `stream` is a terminal (False for None, closed or fake streams)."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def same_terminal(first: IO[Any] | None, second: IO[Any] | None) -> bool:
    """Whether two streams are the same terminal (a table on stdout and messages on stderr)."""
    if not (is_terminal(first) and is_terminal(second)):
        return False
    try:
        return os.path.samestat(os.fstat(first.fileno()), os.fstat(second.fileno()))
    except (AttributeError, ValueError, OSError):
        return False


def to_json(obj: Any) -> str:
    """Compact one-line JSON; non-UTF-8 path bytes (surrogates) fall back to \\u escapes."""
    text = json.dumps(obj, ensure_ascii=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(obj, ensure_ascii=True)
    return text


def check_own_file(path: str | os.PathLike[str], option: str, writer: str, ours: Callable[[bytes], bool]) -> Path:
    """`path` if a file may be written there (UsageError otherwise): new, or one whose first 64 KiB
    `ours` recognises as written by `writer`; never a link, a folder or a special file."""
    path = Path(path)
    if check_replaceable(path, f"{option} {path}"):
        try:
            with open_regular(path) as fh:
                head = fh.read(1 << 16)
        except OSError as exc:
            raise UsageError(f"{option} {path}: cannot read the existing file ({exc.strerror or exc})") from exc
        if not ours(head):
            raise UsageError(f"{option} {path}: exists and was not written by {writer}; choose another name or remove it")
    if not path.parent.is_dir():
        raise UsageError(f"{option} {path}: the folder {path.parent} does not exist")
    return path


def csv_line(row: Iterable[Any]) -> str:
    """One CSV row without its line end. The csv module quotes only the line terminator's
    characters, so it would leave a lone "\\r" unquoted: a row with a "\\r" in a field is fully quoted."""
    row = list(row)
    buffer = io.StringIO()
    quoting = csv.QUOTE_ALL if any("\r" in str(cell) for cell in row) else csv.QUOTE_MINIMAL
    csv.writer(buffer, lineterminator="\n", quoting=quoting).writerow(row)
    return buffer.getvalue().removesuffix("\n")


class Records:
    """jsonl (one object per line), json (one array, `[]` when empty) or csv (`header`, then
    `csv_rows(record)` per record), flushed per record; `close` once."""

    def __init__(self, fmt: str, stream: IO[str], header: Iterable[str] = (), csv_rows: Callable[[Any], Iterable[Iterable[Any]]] | None = None):
        if fmt not in ("jsonl", "json", "csv"):
            raise ValueError(f"unknown format {fmt!r}")
        self.fmt, self.stream, self.csv_rows, self.count = fmt, stream, csv_rows, 0
        if fmt == "csv":
            stream.write(csv_line(header) + "\n")

    def write(self, record: Any) -> None:
        if self.fmt == "csv":
            self.stream.write("".join(csv_line(row) + "\n" for row in self.csv_rows(record)))
        else:
            lead = "" if self.fmt == "jsonl" else "[\n" if self.count == 0 else ",\n"
            self.stream.write(lead + to_json(record.to_dict()) + ("\n" if self.fmt == "jsonl" else ""))
        self.stream.flush()
        self.count += 1

    def flush(self) -> None:
        self.stream.flush()

    def close(self) -> None:
        if self.fmt == "json":
            self.stream.write("[]\n" if self.count == 0 else "\n]\n")
        self.stream.flush()


def render_records(
    records: Iterable[Any], fmt: str, stream: IO[str], table: Callable[[list[Any]], Any], header: Iterable[str], csv_rows: Callable
) -> None:
    """Records in a resolved format: the rich `table(records)` for people, else a machine format."""
    records = list(records)
    if fmt == "table":
        stdout_console(stream).print(table(records))
    else:
        writer = Records(fmt, stream, header, csv_rows)
        for record in records:
            writer.write(record)
        writer.close()


def render_document(record: Any, fmt: str, stream: IO[str], tables: Callable[[], list[Any]], *, spaced: bool = False) -> None:
    """`record` as one pretty JSON document (fmt "json"), or the rich `tables()` for people, a
    blank line between them when `spaced`."""
    if fmt == "json":
        stream.write(json.dumps(record, indent=2, ensure_ascii=False) + "\n")
        stream.flush()
        return
    console = stdout_console(stream)
    for n, table in enumerate(tables()):
        if n and spaced:
            console.print()
        console.print(table)
