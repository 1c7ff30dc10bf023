"""Renderers: results -> tables (people) or jsonl / json / csv (machines), data to stdout only.

`records.py` the machine formats and the choice of format, `tables.py` classification tables,
`info.py` inspect, models, search, dedup and info, `evaluation.py` `bit eval`'s figures.
"""

from __future__ import annotations

import io
from typing import IO, Iterable, Sequence

from bitcli.output.escapes import csv_cell
from bitcli.output.info import inspect_tables, models_table, short_size
from bitcli.output.records import Records, is_terminal, render_document, render_records, resolve_format, same_terminal, to_json
from bitcli.output.tables import COMPACT_AFTER, TableRenderer, runners_up_text, stdout_console
from bitcli.results import ClassifyResult

__all__ = [
    "COMPACT_AFTER", "classify_renderer", "inspect_tables", "is_terminal", "models_table", "render_classify", "render_document",
    "render_records", "resolve_format", "same_terminal", "runners_up_text", "short_size", "stdout_console", "to_json",
]


def classify_renderer(
    fmt: str,
    stream: IO[str],
    *,
    count: int,
    top_k: int,
    paths: Sequence[str] | None = None,
    labels: Sequence[str] | None = None,
    csv_raw: bool = False,
) -> Records | TableRenderer:
    """The renderer for a resolved format: `write` each result in input order, `flush` after each
    batch (tables print there), `close` once. `paths` and `labels` let a table fix its column
    widths before the first row; `csv_raw`: csv cells keep names exactly (`escapes.csv_cell`)."""
    if fmt == "table":
        return TableRenderer(stream, count=count, top_k=top_k, paths=paths, labels=labels)

    def rows(r: ClassifyResult) -> list[tuple]:
        return [(csv_cell(r.path, csv_raw), p.rank, p.index, csv_cell(p.label, csv_raw), repr(p.score)) for p in r.predictions]

    return Records(fmt, stream, ("path", "rank", "index", "label", "score"), rows)


def render_classify(results: Iterable[ClassifyResult], fmt: str, *, count: int, top_k: int) -> str:
    """Render everything to a string (tests, library users); the CLI streams instead."""
    buf = io.StringIO()
    renderer = classify_renderer(fmt, buf, count=count, top_k=top_k)
    for r in results:
        renderer.write(r)
    renderer.close()
    return buf.getvalue()
