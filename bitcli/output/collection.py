"""`bit search`, `bit dedup` and `bit info` in every format.

    search  {"query": "q.jpg", "matches": [{"rank": 1, "path": "a.jpg", "score": 0.9731}, ...]}
            or {"query": "q.jpg", "error": "..."}; csv `query,rank,path,score`
    dedup   {"group": 1, "paths": [...], "min_score": ..., "max_score": ...}; csv `group,path,score_to_first`

Tables: one row per match (the query on its first row) and one row per group member.
"""

from __future__ import annotations

from typing import IO, Any, Iterable

from bitcli.output import render_document, render_records
from bitcli.output.escapes import csv_cell, shown
from bitcli.output.info import key_value_table


def render_search(results: Iterable[Any], fmt: str, stream: IO[str], *, csv_raw: bool = False) -> None:
    """`QueryResult`s in query order, in a resolved format (`csv_raw`: names exact in csv cells)."""

    def rows(r: Any) -> list[tuple]:
        return [(csv_cell(r.query, csv_raw), m.rank, csv_cell(m.path, csv_raw), repr(m.score)) for m in r.matches]

    render_records(results, fmt, stream, search_table, ("query", "rank", "path", "score"), rows)


def render_groups(groups: Iterable[Any], fmt: str, stream: IO[str], *, csv_raw: bool = False) -> None:
    """`DuplicateGroup`s, largest first, in a resolved format."""

    def rows(g: Any) -> list[tuple]:
        return [(g.group, csv_cell(path, csv_raw), repr(score)) for path, score in zip(g.paths, g.scores_to_first)]

    render_records(groups, fmt, stream, groups_table, ("group", "path", "score_to_first"), rows)


def _table(columns: tuple[tuple[str, str], ...]) -> Any:
    from rich.table import Table

    table = Table(box=None, header_style="bold", pad_edge=False)
    for name, justify in columns:
        table.add_column(name, justify=justify, overflow="fold")
    return table


def search_table(results: list[Any]) -> Any:
    from rich.text import Text

    table = _table((("query", "left"), ("rank", "right"), ("score", "right"), ("match", "left")))
    for result in results:
        if not result.ok:
            table.add_row(Text(shown(result.query)), "", "", Text(f"error: {shown(result.error)}", style="red"))
        elif not result.matches:
            table.add_row(Text(shown(result.query)), "", "", Text("no match", style="dim"))
        for i, match in enumerate(result.matches):
            table.add_row(Text(shown(result.query) if i == 0 else ""), str(match.rank), f"{match.score:.4f}", Text(shown(match.path)))
    return table


def groups_table(groups: list[Any]) -> Any:
    from rich.text import Text

    table = _table((("group", "right"), ("images", "right"), ("path", "left"), ("to first", "right")))
    for group in groups:
        for i, (path, score) in enumerate(zip(group.paths, group.scores_to_first)):
            first = i == 0
            table.add_row(str(group.group) if first else "", str(len(group.paths)) if first else "", Text(shown(path)), "" if first else f"{score:.4f}")
    return table


def render_info(report: dict[str, Any], fmt: str, stream: IO[str]) -> None:
    """`bit info`: one JSON object, or a two-column table for people."""
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
    render_document(report, fmt, stream, lambda: [key_value_table(report["path"], shown_rows)])


def _plain(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}={_plain(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return "x".join(map(str, value)) if all(isinstance(v, int) for v in value) else ", ".join(map(_plain, value))
    return str(value)
