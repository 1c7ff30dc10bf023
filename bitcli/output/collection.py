"""`bit search` and `bit dedup` results: table (people), jsonl / json / csv (machines).

jsonl and json reuse the classification renderers (one object per record, `to_dict()`):

    search  {"query": "q.jpg", "matches": [{"rank": 1, "path": "a.jpg", "score": 0.9731}, ...]}
            or {"query": "q.jpg", "error": "..."} for a query that failed
    dedup   {"group": 1, "paths": [...], "min_score": ..., "max_score": ...}

csv: `query,rank,path,score` (a failed query has no rows) and `group,path,score_to_first`.
Scores are float32 values written as their shortest decimal, as everywhere in bitcli. Tables:
one row per match (the query shown on its first row) and one row per group member.
"""

from __future__ import annotations

from typing import IO, Any, Iterable

from bitcli.output.escapes import csv_cell, shown
from bitcli.output.records import JsonArrayRenderer, JsonlRenderer, csv_line
from bitcli.output.info import key_value_table
from bitcli.output.tables import stdout_console

SEARCH_CSV_HEADER = ("query", "rank", "path", "score")
DEDUP_CSV_HEADER = ("group", "path", "score_to_first")


def render_search(results: Iterable[Any], fmt: str, stream: IO[str], *, csv_raw: bool = False) -> None:
    """`QueryResult`s in query order, in a resolved format (`auto` resolved first); `csv_raw`
    writes names in csv cells as they are (see `escapes.csv_cell`)."""
    if fmt == "table":
        stdout_console(stream).print(search_table(list(results)))
        return
    if fmt == "csv":
        rows = (
            (csv_cell(r.query, csv_raw), m.rank, csv_cell(m.path, csv_raw), repr(m.score))
            for r in results for m in r.matches
        )
        _csv(stream, SEARCH_CSV_HEADER, rows)
        return
    _records(results, fmt, stream)


def render_groups(groups: Iterable[Any], fmt: str, stream: IO[str], *, csv_raw: bool = False) -> None:
    """`DuplicateGroup`s, largest first, in a resolved format (`csv_raw` as for `render_search`)."""
    if fmt == "table":
        stdout_console(stream).print(groups_table(list(groups)))
        return
    if fmt == "csv":
        rows = ((g.group, csv_cell(path, csv_raw), repr(score)) for g in groups for path, score in zip(g.paths, g.scores_to_first))
        _csv(stream, DEDUP_CSV_HEADER, rows)
        return
    _records(groups, fmt, stream)


def _records(records: Iterable[Any], fmt: str, stream: IO[str]) -> None:
    if fmt not in ("jsonl", "json"):
        raise ValueError(f"unknown format {fmt!r}")
    renderer = JsonlRenderer(stream) if fmt == "jsonl" else JsonArrayRenderer(stream)
    for record in records:
        renderer.write(record)
    renderer.close()


def _csv(stream: IO[str], header: tuple[str, ...], rows: Iterable[tuple]) -> None:
    for row in (header, *rows):
        stream.write(csv_line(row) + "\n")
    stream.flush()


def search_table(results: list[Any]) -> Any:
    from rich.table import Table
    from rich.text import Text

    table = Table(box=None, header_style="bold", pad_edge=False)
    for name, justify in (("query", "left"), ("rank", "right"), ("score", "right"), ("match", "left")):
        table.add_column(name, justify=justify, overflow="fold")
    for result in results:
        if not result.ok:
            table.add_row(Text(shown(result.query)), "", "", Text(f"error: {shown(result.error)}", style="red"))
            continue
        if not result.matches:
            table.add_row(Text(shown(result.query)), "", "", Text("no match", style="dim"))
        for i, match in enumerate(result.matches):
            table.add_row(Text(shown(result.query) if i == 0 else ""), str(match.rank), f"{match.score:.4f}", Text(shown(match.path)))
    return table


def groups_table(groups: list[Any]) -> Any:
    from rich.table import Table
    from rich.text import Text

    table = Table(box=None, header_style="bold", pad_edge=False)
    for name, justify in (("group", "right"), ("images", "right"), ("path", "left"), ("to first", "right")):
        table.add_column(name, justify=justify, overflow="fold")
    for group in groups:
        for i, (path, score) in enumerate(zip(group.paths, group.scores_to_first)):
            first = i == 0
            table.add_row(str(group.group) if first else "", str(len(group.paths)) if first else "", Text(shown(path)), "" if first else f"{score:.4f}")
    return table


def render_info(report: dict[str, Any], fmt: str, stream: IO[str]) -> None:
    """`bit info`: one JSON object, or a two-column table for people."""
    if fmt == "json":
        import json

        stream.write(json.dumps(report, indent=1, ensure_ascii=False) + "\n")
        return
    model = report.get("model") or {}
    made = report.get("made_by") or {}
    rows = [
        ("rows", f"{report['rows']} x {report['feature_dim']} {report['dtype']}" + (", L2-normalized" if report.get("normalize") else "")),
        ("model", model.get("reference")),
        ("commit", model.get("commit")),
        ("weights sha256", model.get("weights_sha256")),
        ("precision", model.get("precision")),
        ("identity", report.get("identity")),
        ("preprocessing", report.get("preprocessing")),
        ("decode", report.get("decode")),
        ("made by", f"bitcli {made['bitcli_version']}" if made.get("bitcli_version") else None),
        ("made in", made.get("cwd")),
        ("modified", report.get("modified")),
        ("manifest", report.get("manifest")),
        ("metadata", report.get("metadata") or "none (a plain .npy: search needs --model for new images)"),
    ]
    shown_rows = [(key, _plain(value)) for key, value in rows if value is not None]  # escaped by the table
    stdout_console(stream).print(key_value_table(report["path"], shown_rows))


def _plain(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}={_plain(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return "x".join(map(str, value)) if all(isinstance(v, int) for v in value) else ", ".join(map(_plain, value))
    return str(value)
