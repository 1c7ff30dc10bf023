"""Tables for people (rich): one per image or one compact table for classify, `bit inspect`'s
report, `bit models`' zoo. Drawn on stdout; rich is imported only when a table is drawn.
"""

from __future__ import annotations

import sys
from typing import IO, Any, Iterable

from bitcli.results import ClassifyResult, Prediction
from bitcli.util import human_bytes

# More images than this are shown as one compact table (a row per image) instead of one table each.
COMPACT_AFTER = 4


def stdout_console(stream: IO[str] | None = None) -> Any:
    """A rich console on stdout for tables (colour off when NO_COLOR is set or not a terminal).

    A closed pipe raises BrokenPipeError, as for the other formats (rich itself would exit 1)."""
    from rich.console import Console

    class StdoutConsole(Console):
        def on_broken_pipe(self) -> None:
            raise BrokenPipeError("stdout was closed")

    return StdoutConsole(file=stream or sys.stdout, highlight=False, soft_wrap=False)


def format_percent(score: float) -> str:
    return f"{score * 100:.2f}%"


class TableRenderer:
    """A rich table per image, or, for more than COMPACT_AFTER images, one row per image."""

    def __init__(self, stream: IO[str], *, count: int, top_k: int):
        self.console = stdout_console(stream)
        self.compact = count > COMPACT_AFTER
        self.top_k = top_k
        self.rows: list[ClassifyResult] = []

    def write(self, result: ClassifyResult) -> None:
        if self.compact:
            self.rows.append(result)  # column widths need every row; rows are a few strings each
        else:
            from rich.text import Text

            # The path on its own line: a table title would wrap long paths.
            self.console.print(Text(result.path, style="bold"), soft_wrap=True)
            self.console.print(image_table(result))

    def close(self) -> None:
        if self.compact:
            self.console.print(compact_table(self.rows, self.top_k, width=self.console.width))


def image_table(result: ClassifyResult) -> Any:
    from rich.table import Table
    from rich.text import Text

    table = Table(show_edge=False)
    table.add_column("rank", justify="right")
    table.add_column("label")
    table.add_column("probability", justify="right")
    table.add_column("class", justify="right", style="dim")
    if result.error is not None:
        table.add_row("", Text(f"failed: {result.error}", style="red"), "", "")
    for p in result.predictions:
        table.add_row(str(p.rank), Text(p.label), format_percent(p.score), str(p.index))
    return table


# The compact table: paths stay on one line when the other columns can still fit beside them
# (a label needs about LABEL_MIN_WIDTH); runners-up appear only when, after the top-1 labels
# (up to LABEL_WIDE), at least RUNNERS_UP_MIN_WIDTH columns are left.
LABEL_MIN_WIDTH = 14
LABEL_WIDE = 30
RUNNERS_UP_MIN_WIDTH = 24
_PROBABILITY_WIDTH = len("probability")
_CLASS_WIDTH = len("class")


def compact_table(results: Iterable[ClassifyResult], top_k: int, width: int | None = None) -> Any:
    """One row per image: path, top-1 label, probability, class, and runners-up when there is room.

    `width` is the terminal's (None: unknown, every column shown). Paths are kept whole on one
    line whenever they fit beside a readable label; only longer ones fold, as a last resort.
    Runners-up take one line: each label's first synonym, as many as fit, then an ellipsis (the
    machine formats and the per-image tables keep every label whole).
    """
    from rich.table import Table
    from rich.text import Text

    results = list(results)
    path_width = max((len(r.path) for r in results), default=0)
    label_width = max((len(r.predictions[0].label) for r in results if r.predictions), default=0)
    fixed = _PROBABILITY_WIDTH + _CLASS_WIDTH + 3 * 3  # probability, class, padding and separators
    path_room = None if width is None else width - fixed - min(label_width, LABEL_MIN_WIDTH)
    runners_room = None if width is None else width - fixed - path_width - min(label_width, LABEL_WIDE) - 3
    runners_up = top_k > 1 and (runners_room is None or runners_room >= RUNNERS_UP_MIN_WIDTH)

    table = Table(show_edge=False, pad_edge=False)
    if path_room is None or path_width <= path_room:
        table.add_column("image", no_wrap=True)
    else:  # the last resort: longer paths fold, the others still fit on one line
        table.add_column("image", overflow="fold", width=max(path_room, 10))
    table.add_column("top-1", min_width=min(label_width, LABEL_MIN_WIDTH), overflow="fold")
    table.add_column("probability", justify="right", no_wrap=True)
    table.add_column("class", justify="right", style="dim", no_wrap=True)
    if runners_up:
        table.add_column("runners-up", style="dim", no_wrap=True, max_width=runners_room)
    for r in results:
        if r.error is not None:
            row = [Text(r.path), Text(f"failed: {r.error}", style="red"), "", ""]
        else:
            best = r.predictions[0]
            row = [Text(r.path), Text(best.label), format_percent(best.score), str(best.index)]
        if runners_up:
            row.append(Text(runners_up_text(r.predictions[1:], runners_room)))
        table.add_row(*row)
    return table


def runners_up_text(predictions: list[Prediction], room: int | None) -> str:
    """'tiger cat 10.00%; Egyptian cat 5.00%', as many as fit in `room` characters, then '…'."""
    parts = [f"{first_name(p.label)} {format_percent(p.score)}" for p in predictions]
    if room is None:
        return "; ".join(parts)
    text = ""
    for n, part in enumerate(parts):
        candidate = f"{text}; {part}" if text else part
        more = n + 1 < len(parts)
        if len(candidate) + (3 if more else 0) > room:
            return f"{text}; …" if text else "…"
        text = candidate
    return text


def first_name(label: str) -> str:
    """The first of an ImageNet label's comma-separated synonyms ('tabby, tabby cat' -> 'tabby')."""
    return label.split(", ", 1)[0]


def _key_value_table(title: str, rows: list[tuple[str, Any]]) -> Any:
    from rich.table import Table
    from rich.text import Text

    table = Table(title=Text(title, style="bold"), title_justify="left", show_header=False, show_edge=False)
    table.add_column("field", style="dim")
    table.add_column("value", overflow="fold")
    for key, value in rows:
        table.add_row(key, Text(_show(value)))
    return table


def _show(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_show(v) for v in value) if value else "-"
    if isinstance(value, dict):
        return ", ".join(f"{k}={_show(v)}" for k, v in value.items())
    return str(value)


def format_size(num_bytes: int | None) -> str:
    return "-" if num_bytes is None else human_bytes(num_bytes)


def format_count(n: int) -> str:
    if n >= 1_000_000:
        return f"{n / 1e6:.1f} M ({n:,})"
    return f"{n:,}"


def inspect_tables(report: dict[str, Any]) -> list[Any]:
    from rich.table import Table
    from rich.text import Text

    arch = report.get("architecture", {})
    pre = report.get("preprocessing", {})
    labels = report.get("labels", {})
    tables = [
        _key_value_table(
            "Model",
            [
                ("model", report.get("model")),
                ("revision", report.get("revision")),
                ("commit", report.get("commit")),
                ("path", report.get("path")),
                ("source", report.get("source")),
                ("checkpoint format", report.get("checkpoint_format")),
                ("weights format", report.get("weights_format")),
            ],
        )
    ]
    files = Table(title=Text("Files", style="bold"), title_justify="left", show_edge=False)
    files.add_column("file")
    files.add_column("size", justify="right")
    for f in report.get("files", []):
        files.add_row(Text(f.get("name", "")), format_size(f.get("size")))
    tables.append(files)
    tables.append(
        _key_value_table(
            "Architecture",
            [
                ("variant", arch.get("name")),
                ("layer type", arch.get("layer_type")),
                ("depths", arch.get("depths")),
                ("stem width", arch.get("stem_width")),
                ("stage widths", arch.get("widths")),
                ("width factor", arch.get("width_factor")),
                ("groupnorm groups", arch.get("num_groups")),
                ("padding", arch.get("padding")),
                ("output stride", arch.get("output_stride")),
                ("activation", arch.get("activation")),
                ("ws eps", arch.get("ws_eps")),
                ("parameters", format_count(report.get("num_parameters", 0))),
                ("feature dim", report.get("feature_dim")),
                ("input size", report.get("input_size")),
                ("GFLOPs / image", report.get("gflops")),
            ],
        )
    )
    tables.append(
        _key_value_table(
            "Preprocessing",
            [
                ("resize", pre.get("resize")),
                ("crop", pre.get("crop")),
                ("interpolation", pre.get("interpolation")),
                ("mean", pre.get("mean")),
                ("std", pre.get("std")),
            ],
        )
    )
    tables.append(
        _key_value_table(
            "Labels",
            [
                ("count", report.get("num_labels")),
                ("source", labels.get("source")),
                ("first", labels.get("first")),
            ],
        )
    )
    return tables


MODELS_CAPTION = (
    "download: the float32 weights, about 4 bytes per parameter. cached: size on disk in the "
    "Hugging Face cache, or no. --format json adds each repository, revision and description."
)


def models_table(rows: list[dict[str, Any]]) -> Any:
    """alias, input size, classes, top-1, parameters, download size, cached (size on disk, or no).

    About 75 columns wide; the repository and description are left to --format json.
    """
    from rich.table import Table
    from rich.text import Text

    table = Table(show_edge=False, pad_edge=False, caption=MODELS_CAPTION, caption_justify="left")
    table.add_column("alias", no_wrap=True)
    for name in ("input", "classes", "top-1", "params", "download"):
        table.add_column(name, justify="right", no_wrap=True)
    table.add_column("cached", no_wrap=True)
    for row in rows:
        top1 = row.get("top1")
        table.add_row(
            Text(str(row["alias"])),
            str(row["input_size"]),
            f"{row['num_classes']:,}",
            "-" if top1 is None else f"{top1:.2f}",
            format_millions(row["num_parameters"]),
            short_size(row["download_bytes"]),
            short_size(row["size_bytes"]) if row.get("cached") else "no",
        )
    return table


def short_size(num_bytes: int) -> str:
    """Bytes to three significant digits with decimal units: '102 MB', '1.55 GB', '68.3 kB'."""
    return human_bytes(num_bytes, three_digits=True)


def format_millions(n: int) -> str:
    """A parameter count in six characters or fewer: 25549352 -> '25.5M', 1107299923 -> '1.11B'."""
    return f"{n / 1e6:.1f}M" if n < 999_950_000 else f"{n / 1e9:.2f}B"
