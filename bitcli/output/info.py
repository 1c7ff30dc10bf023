"""Reports for people (rich tables) or machines: `bit inspect`, `bit models`, and `bit search`,
`bit dedup` and `bit info` in every format (search csv: `query,rank,path,score`; dedup csv:
`group,path,score_to_first`)."""

from __future__ import annotations

from typing import IO, Any, Iterable

from bitcli.output.escapes import csv_cell, shown
from bitcli.output.records import render_document, render_records
from bitcli.util import human_bytes


def key_value_table(title: str, rows: list[tuple[str, Any]]) -> Any:
    """A titled two-column table (field, value) for people; values as `_show` writes them."""
    from rich.table import Table
    from rich.text import Text

    table = Table(title=Text(shown(title), style="bold"), title_justify="left", show_header=False, show_edge=False)
    table.add_column("field", style="dim")
    table.add_column("value", overflow="fold")
    for key, value in rows:
        table.add_row(key, Text(_show(value)))
    return table


class Lines(str):
    """Several lines whose items are already escaped (`numbered`): shown as they are."""


def _show(value: Any) -> str:
    """A value for a table cell, names with control characters escaped (`escapes.shown`)."""
    if isinstance(value, Lines):
        return value
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_show(v) for v in value) if value else "-"
    if isinstance(value, dict):
        return ", ".join(f"{shown(k)}={_show(v)}" for k, v in value.items())
    return shown(value)


def numbered(names: list[str]) -> str:
    """One name per line with its class index: label names contain commas ('tench, Tinca tinca')."""
    return Lines("\n".join(f"{index}  {shown(name)}" for index, name in enumerate(names)) or "-")


def format_figure(value: float | None) -> str:
    """Three significant digits, never an exponent (8.17837 -> '8.18', 0.000123456 -> '0.000123', 1234.5 -> '1,234')."""
    if value is None:
        return "-"
    if abs(value) < 100:
        value = float(f"{value:.3g}")
    if value == 0 or abs(value) >= 100:
        return f"{value:,.0f}"
    from decimal import Decimal

    digits = max(0, 2 - Decimal(repr(abs(value))).adjusted())
    return f"{value:.{digits}f}"


def format_count(n: int) -> str:
    return f"{n / 1e6:.1f} M ({n:,})" if n >= 1_000_000 else f"{n:,}"


# The architecture table's rows: (label, key in the report's "architecture").
ARCHITECTURE_ROWS = (
    ("variant", "name"), ("layer type", "layer_type"), ("depths", "depths"), ("stem width", "stem_width"),
    ("stage widths", "widths"), ("width factor", "width_factor"), ("groupnorm groups", "num_groups"),
    ("padding", "padding"), ("output stride", "output_stride"), ("activation", "activation"), ("ws eps", "ws_eps"),
)


def inspect_tables(report: dict[str, Any]) -> list[Any]:
    """`bit inspect`'s tables: Model, Files, Architecture, Preprocessing, Labels."""
    from rich.table import Table
    from rich.text import Text

    model = ("model", "revision", "commit", "path", "source", "checkpoint_format", "weights_format")
    files = Table(title=Text("Files", style="bold"), title_justify="left", show_edge=False)
    files.add_column("file")
    files.add_column("size", justify="right")
    for f in report.get("files", []):
        files.add_row(Text(shown(f.get("name", ""))), "-" if f.get("size") is None else human_bytes(f["size"]))
    arch, pre, labels = report.get("architecture", {}), report.get("preprocessing", {}), report.get("labels", {})
    return [
        key_value_table("Model", [(key.replace("_", " "), report.get(key)) for key in model]),
        files,
        key_value_table("Architecture", [(label, arch.get(key)) for label, key in ARCHITECTURE_ROWS] + [
            ("parameters", format_count(report.get("num_parameters", 0))),
            ("feature dim", report.get("feature_dim")),
            ("input size", report.get("input_size")),
            ("GFLOPs / image", format_figure(report.get("gflops"))),
        ]),
        key_value_table("Preprocessing", [(key, pre.get(key)) for key in ("resize", "crop", "interpolation", "mean", "std")]),
        key_value_table("Labels", [
            ("count", report.get("num_labels")), ("source", labels.get("source")), ("first", numbered(labels.get("first") or [])),
        ]),
    ]


MODELS_CAPTION = (
    "download: the float32 weights, about 4 bytes per parameter. cached: size on disk in the "
    "Hugging Face cache, or no. --format json adds each repository, revision and description.\n"
    "bit-50 and bit-m-r50x1 are the same network and training (BiT-M R50x1, ImageNet-21k pre-trained, "
    "fine-tuned on ImageNet-1k at 448 px) packaged twice: bit-50 is the transformers port "
    "(google/bit-50, pinned commit), bit-m-r50x1 is timm's copy."
)


def models_table(rows: list[dict[str, Any]], default: str | None = None) -> Any:
    """alias, input size, classes, top-1, parameters, download size, cached: about 75 columns
    (repository and description are left to --format json). The default row gets a `*`."""
    from rich.table import Table
    from rich.text import Text

    caption = MODELS_CAPTION
    if default is not None:
        marked = any(row.get("default") for row in rows)
        caption = f"* default: {shown(default)}" + ("" if marked else " (not in this list)") + (
            " (--model or $BIT_MODEL to change)\n" + caption
        )
    table = Table(show_edge=False, pad_edge=False, caption=caption, caption_justify="left")
    table.add_column("alias", no_wrap=True)
    for name in ("input", "classes", "top-1", "params", "download"):
        table.add_column(name, justify="right", no_wrap=True)
    table.add_column("cached", no_wrap=True)
    for row in rows:
        top1 = row.get("top1")
        table.add_row(
            Text(shown(row["alias"]) + (" *" if row.get("default") else "")),
            str(row["input_size"]),
            f"{row['num_classes']:,}",
            "-" if top1 is None else f"{top1:.2f}",
            format_millions(row["num_parameters"]),
            "-" if row.get("bundled") else short_size(row["download_bytes"]),
            "bundled" if row.get("bundled") else short_size(row["size_bytes"]) if row.get("cached") else "no",
        )
    return table


def short_size(num_bytes: int) -> str:
    """Bytes to three significant digits with decimal units: '102 MB', '1.55 GB', '68.3 kB'."""
    return human_bytes(num_bytes, three_digits=True)


def format_millions(n: int) -> str:
    """A parameter count in six characters or fewer: 25549352 -> '25.5M', 1107299923 -> '1.11B'."""
    return f"{n / 1e6:.1f}M" if n < 999_950_000 else f"{n / 1e9:.2f}B"


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
