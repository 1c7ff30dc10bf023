"""`bit eval`'s figures on stdout: one JSON object, or tables (summary, per class, confusion matrix)."""

from __future__ import annotations

from typing import IO, Any

from bitcli.output.escapes import shown
from bitcli.output.tables import format_percent

# Classes beyond this many: the confusion matrix is left out of the table view (it is in the JSON).
MAX_MATRIX_CLASSES = 20


def render_evaluation(record: dict[str, Any], fmt: str, stream: IO[str]) -> None:
    """`record` is `Evaluation.as_dict()`; fmt "json" or "table" (a blank line between sections)."""
    from bitcli.output import render_document

    render_document(record, fmt, stream, lambda: evaluation_tables(record), spaced=True)


def titled(title: str, table: Any) -> Any:
    """`table` under its title on a line of its own: a table's own title wraps to the table's
    width (a narrow confusion matrix broke its title over two lines); this one has the terminal's."""
    from rich.console import Group
    from rich.text import Text

    return Group(Text(title, style="bold"), table)


def evaluation_tables(record: dict[str, Any]) -> list[Any]:
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
