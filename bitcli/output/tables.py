"""Classification as tables for people (rich), printed while the run goes on: a table per image,
or for more than COMPACT_AFTER one compact table whose widths are fixed before its first row, so
each batch's rows print at once and line up; runners-up in a column when there is room, else below.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import IO, Any, Iterable, Sequence

from bitcli.output.escapes import shown
from bitcli.results import ClassifyResult, Prediction

COMPACT_AFTER = 4  # more images than this: one compact table, a row per image
# Paths stay on one line while a label still gets LABEL_MIN_WIDTH beside them; labels get up to
# LABEL_WIDE; runners-up get a column of their own with RUNNERS_UP_MIN_WIDTH left.
LABEL_MIN_WIDTH = 14
LABEL_WIDE = 30
RUNNERS_UP_MIN_WIDTH = 24
RUNNERS_UP_BELOW = "runners-up: "
PROBABILITY_WIDTH = len("probability")
CLASS_WIDTH = len("class")
SEPARATOR = 3  # " │ " between two columns (no padding at the table's edges)


def stdout_console(stream: IO[str] | None = None) -> Any:
    """A rich console on stdout for tables; a closed pipe raises BrokenPipeError (rich would exit 1)."""
    from rich.console import Console

    class StdoutConsole(Console):
        def on_broken_pipe(self) -> None:
            raise BrokenPipeError("stdout was closed")

    return StdoutConsole(file=stream or sys.stdout, highlight=False, soft_wrap=False)


def format_percent(score: float | None) -> str:
    return "-" if score is None else f"{score * 100:.2f}%"


class TableRenderer:
    """Per-image tables (printed in `write`), or one compact table for more than COMPACT_AFTER
    images (rows printed by `flush`, once per batch); `paths` and `labels` fix its widths."""

    def __init__(
        self,
        stream: IO[str],
        *,
        count: int,
        top_k: int,
        paths: Sequence[str] | None = None,
        labels: Sequence[str] | None = None,
    ):
        self.console = stdout_console(stream)
        self.compact = count > COMPACT_AFTER
        self.top_k = top_k
        self.paths, self.labels = paths, labels
        self.layout: CompactLayout | None = None
        self.pending: list[ClassifyResult] = []
        self.written = 0

    def write(self, result: ClassifyResult) -> None:
        if self.compact:
            self.pending.append(result)
            return
        from rich.text import Text

        if self.written:
            self.console.print()
        self.written += 1
        # The path on its own line: a table title would wrap long paths.
        self.console.print(Text(shown(result.path), style="bold"), soft_wrap=True)
        if result.error is not None:
            self.console.print(failure_text(result.error), no_wrap=True, overflow="ellipsis")
        else:
            self.console.print(image_table(result))

    def flush(self) -> None:
        """Print the compact rows written since the last flush (the header with the first)."""
        if not self.pending:
            return
        if self.layout is None:
            self.layout = CompactLayout.plan(
                self.paths if self.paths is not None else [r.path for r in self.pending],
                self.labels if self.labels is not None else [p.label for r in self.pending for p in r.predictions],
                self.top_k,
                self.console.width,
            )
            self.console.print(self.layout.table(header=True))
        for renderable in self.layout.rows(self.pending):
            self.console.print(renderable)
        self.written += len(self.pending)
        self.pending = []

    def close(self) -> None:
        self.flush()


def failure_text(error: str) -> Any:
    from rich.text import Text

    return Text(f"failed: {shown(error)}", style="red", no_wrap=True, overflow="ellipsis")


def image_table(result: ClassifyResult) -> Any:
    """rank, label, probability, class; the number columns never wrap, nor do headers."""
    from rich.table import Table
    from rich.text import Text

    table = Table(show_edge=False)
    table.add_column("rank", justify="right", no_wrap=True, min_width=len("rank"))
    table.add_column("label", min_width=len("label"))
    table.add_column("probability", justify="right", no_wrap=True, min_width=PROBABILITY_WIDTH)
    table.add_column("class", justify="right", style="dim", no_wrap=True, min_width=CLASS_WIDTH)
    for p in result.predictions:
        table.add_row(str(p.rank), Text(shown(p.label)), format_percent(p.score), str(p.index))
    return table


@dataclass(frozen=True)
class CompactLayout:
    """The compact table's column widths, fixed before its first row."""

    path: int
    path_folds: bool  # the last resort: a path too long for the terminal folds over lines
    label: int
    runners: int | None  # None: no runners-up column (with top_k > 1, they go on a line below)
    top_k: int
    below: int = 0  # the width of the runners-up lines below a row (every column right of the path)

    @classmethod
    def plan(cls, paths: Iterable[str], labels: Iterable[str], top_k: int, width: int) -> CompactLayout:
        """Widths for a terminal of `width` columns, given every path and every label name."""
        from rich.cells import cell_len

        path_need = max([len("image"), *(cell_len(shown(p)) for p in paths)])
        longest_label = max([len("top-1"), *(cell_len(shown(name)) for name in labels)])
        label_need = min(longest_label, LABEL_WIDE)
        fixed = PROBABILITY_WIDTH + CLASS_WIDTH + 3 * SEPARATOR
        path_room = width - fixed - min(label_need, LABEL_MIN_WIDTH)
        path, folds = (path_need, False) if path_need <= path_room else (max(path_room, 10), True)
        rest = width - fixed - path
        if top_k > 1 and rest - label_need - SEPARATOR >= RUNNERS_UP_MIN_WIDTH:
            return cls(path, folds, label_need, rest - label_need - SEPARATOR, top_k)
        label = max(min(rest, longest_label), len("top-1"))
        return cls(path, folds, label, None, top_k, max(width - path - SEPARATOR, label + PROBABILITY_WIDTH + CLASS_WIDTH + 2 * SEPARATOR))

    @property
    def span(self) -> int:
        """Width of everything right of the path column (a failure's one cell)."""
        columns = [self.label, PROBABILITY_WIDTH, CLASS_WIDTH] + ([self.runners] if self.runners else [])
        return sum(columns) + SEPARATOR * (len(columns) - 1)

    def table(self, *, header: bool = False) -> Any:
        from rich.table import Table

        table = Table(show_edge=False, pad_edge=False, show_header=header)
        if self.path_folds:
            table.add_column("image", width=self.path, overflow="fold")
        else:
            table.add_column("image", width=self.path, no_wrap=True)
        table.add_column("top-1", width=self.label, overflow="fold")
        table.add_column("probability", width=PROBABILITY_WIDTH, justify="right", no_wrap=True)
        table.add_column("class", width=CLASS_WIDTH, justify="right", style="dim", no_wrap=True)
        if self.runners:
            table.add_column("runners-up", width=self.runners, style="dim", overflow="fold")
        return table

    def beside_path(self, first: Any, cell: Any, **column: Any) -> Any:
        """One row: `first` in the path column, `cell` across the columns right of it."""
        from rich.table import Table

        table = Table(show_edge=False, pad_edge=False, show_header=False)
        table.add_column("image", width=self.path, overflow="fold", no_wrap=not self.path_folds)
        table.add_column("rest", **column)
        table.add_row(first, cell)
        return table

    def rows(self, results: Iterable[ClassifyResult]) -> list[Any]:
        """Renderables for `results` in order: runs of good rows as one table, each failure alone,
        and, without a runners-up column, each row followed by its runners-up lines."""
        from rich.text import Text

        out: list[Any] = []
        table = None
        for r in results:
            if r.error is not None:
                out.append(self.beside_path(Text(shown(r.path)), failure_text(str(r.error)), width=self.span, no_wrap=True, overflow="ellipsis"))
                table = None
                continue
            if table is None:
                table = self.table()
                out.append(table)
            best = r.predictions[0]
            row = [Text(shown(r.path)), Text(shown(best.label)), format_percent(best.score), str(best.index)]
            if self.runners:
                row.append(Text(runners_up_text(r.predictions[1:], self.runners)))
            table.add_row(*row)
            if self.runners is None and len(r.predictions) > 1:
                runners = runners_up_text(r.predictions[1:], self.below, lead=RUNNERS_UP_BELOW)
                out.append(self.beside_path("", Text(runners), width=self.below, overflow="fold", style="dim"))
                table = None
        return out


def runners_up_text(predictions: list[Prediction], room: int | None, *, lead: str = "") -> str:
    """'tiger cat 10.00%; Egyptian cat 5.00%': every entry, after `lead`, on lines of at most `room`
    cells, broken between entries (an entry longer than a whole line is left for the table to fold)."""
    from rich.cells import cell_len

    parts = [f"{shown(first_name(p.label))} {format_percent(p.score)}" for p in predictions]
    if room is None:
        return lead + "; ".join(parts)
    lines: list[str] = [lead.rstrip()] if lead else []
    for n, part in enumerate(parts):
        part += ";" if n + 1 < len(parts) else ""
        if lines and cell_len(lines[-1]) + 1 + cell_len(part) <= room:
            lines[-1] += " " + part
        else:
            lines.append(part)
    return "\n".join(lines)


def first_name(label: str) -> str:
    """The first of an ImageNet label's comma-separated synonyms ('tabby, tabby cat' -> 'tabby')."""
    return label.split(", ", 1)[0]
