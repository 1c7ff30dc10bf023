"""Machine formats: jsonl, one JSON array, csv, and pretty JSON objects (data to stdout only).

Classification is rendered as a stream (one `write` per result, in input order) so that jsonl,
csv and the json array reach stdout while a long run is still going.
"""

from __future__ import annotations

import csv
import io
import json
import os
from typing import IO, Any, Iterable

from bitcli.output.escapes import csv_cell
from bitcli.results import ClassifyResult

CSV_HEADER = ("path", "rank", "index", "label", "score")


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


def write_json(obj: Any, stream: IO[str]) -> None:
    """One pretty-printed JSON document (`bit inspect`, `bit models`)."""
    stream.write(json.dumps(obj, indent=2, ensure_ascii=False) + "\n")
    stream.flush()


class ClassifyRenderer:
    """`write` each result in input order, `flush` after each batch (tables print there), `close` once.

    The machine formats write to `stream` as each result comes; `TableRenderer` is the other kind."""

    def __init__(self, stream: IO[str]):
        self.stream = stream

    def write(self, result: ClassifyResult) -> None:
        raise NotImplementedError

    def flush(self) -> None:
        self.stream.flush()

    def close(self) -> None:
        self.stream.flush()


class JsonlRenderer(ClassifyRenderer):
    """One JSON object per line, flushed per result."""

    def write(self, result: ClassifyResult) -> None:
        self.stream.write(to_json(result.to_dict()) + "\n")
        self.stream.flush()


class JsonArrayRenderer(ClassifyRenderer):
    """One JSON array of the jsonl objects, streamed element by element (`[]` when empty)."""

    count = 0

    def write(self, result: ClassifyResult) -> None:
        self.stream.write(("[\n" if self.count == 0 else ",\n") + to_json(result.to_dict()))
        self.stream.flush()
        self.count += 1

    def close(self) -> None:
        self.stream.write("[]\n" if self.count == 0 else "\n]\n")
        self.stream.flush()


def csv_line(row: Iterable[Any]) -> str:
    """One CSV row without its line end. The csv module quotes only the line terminator's
    characters, so it would leave a lone "\\r" unquoted: a row with a "\\r" in a field is fully quoted."""
    row = list(row)
    buffer = io.StringIO()
    quoting = csv.QUOTE_ALL if any("\r" in str(cell) for cell in row) else csv.QUOTE_MINIMAL
    csv.writer(buffer, lineterminator="\n", quoting=quoting).writerow(row)
    return buffer.getvalue().removesuffix("\n")


class CsvRenderer(ClassifyRenderer):
    """`path,rank,index,label,score`, one row per prediction; failed inputs have no rows.

    A path or label that starts like a spreadsheet formula gets a leading `'` unless `raw`
    (`escapes.csv_cell`).
    """

    def __init__(self, stream: IO[str], *, raw: bool = False):
        super().__init__(stream)
        self.raw = raw
        stream.write(csv_line(CSV_HEADER) + "\n")

    def write(self, result: ClassifyResult) -> None:
        for p in result.predictions:
            row = (csv_cell(result.path, self.raw), p.rank, p.index, csv_cell(p.label, self.raw), repr(p.score))
            self.stream.write(csv_line(row) + "\n")
        self.stream.flush()
