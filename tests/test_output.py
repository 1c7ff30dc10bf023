"""Renderers: every machine format parses back to the same records; tables show what they should."""

from __future__ import annotations

import csv
import io
import json

import re

import pytest

from bitcli.output import COMPACT_AFTER, classify_renderer, inspect_tables, render_classify, render_document, resolve_format
from bitcli.output.tables import format_percent
from bitcli.results import ClassifyResult, Prediction

RESULTS = [
    ClassifyResult("a.jpg", [Prediction(1, 281, "tabby, tabby cat", 0.8312345), Prediction(2, 282, "tiger cat", 0.1)]),
    ClassifyResult("b,\"odd\".png", error="not an image"),
    ClassifyResult("c.jpg", [Prediction(1, 3, "[bold]markup[/bold]", 1e-07), Prediction(2, 0, "x", 0.5)]),
]


def render_inspect(report, fmt, stream):
    """As `bit inspect` renders its report: one JSON document, or its tables."""
    render_document(report, fmt, stream, lambda: inspect_tables(report))


def test_jsonl_one_object_per_input_in_order():
    lines = render_classify(RESULTS, "jsonl", count=3, top_k=2).splitlines()
    assert [json.loads(line) for line in lines] == [r.to_dict() for r in RESULTS]
    assert json.loads(lines[1]) == {"path": 'b,"odd".png', "error": "not an image"}


def test_json_is_one_array_even_when_empty():
    assert json.loads(render_classify(RESULTS, "json", count=3, top_k=2)) == [r.to_dict() for r in RESULTS]
    assert json.loads(render_classify([], "json", count=0, top_k=2)) == []


def test_csv_rows_per_prediction_and_quoting():
    rows = list(csv.reader(io.StringIO(render_classify(RESULTS, "csv", count=3, top_k=2))))
    assert rows[0] == ["path", "rank", "index", "label", "score"]
    assert rows[1] == ["a.jpg", "1", "281", "tabby, tabby cat", "0.8312345"]
    assert [r[0] for r in rows[1:]] == ["a.jpg", "a.jpg", "c.jpg", "c.jpg"]  # failed input: no rows
    assert float(rows[3][4]) == 1e-07


def test_csv_quotes_a_carriage_return():
    odd = [ClassifyResult("a\rb.jpg", [Prediction(1, 2, "x\ry", 0.5)]), RESULTS[0]]
    text = render_classify(odd, "csv", count=2, top_k=2)
    rows = list(csv.reader(io.StringIO(text, newline="")))
    assert rows[1] == ["a\rb.jpg", "1", "2", "x\ry", "0.5"]
    assert rows[2][0] == "a.jpg" and len(rows) == 4


def test_table_escapes_markup_and_shows_percentages():
    text = render_classify(RESULTS[:1] + RESULTS[2:], "table", count=2, top_k=2)
    assert "[bold]markup[/bold]" in text
    assert "83.12%" in text and "281" in text and "a.jpg" in text


def test_compact_table_for_many_images():
    many = [RESULTS[0]] * (COMPACT_AFTER + 1)
    compact = render_classify(many, "table", count=len(many), top_k=2)
    assert compact.count("a.jpg") == len(many)
    assert compact.count("rank") == 0  # no per-image tables
    detailed = render_classify([RESULTS[0]], "table", count=1, top_k=2)
    assert "rank" in detailed


def test_auto_format_depends_on_terminal():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    assert resolve_format("auto", io.StringIO()) == "jsonl"
    assert resolve_format("auto", Tty()) == "table"
    assert resolve_format("csv", Tty()) == "csv"


def test_renderers_stream_each_result():
    buf = io.StringIO()
    renderer = classify_renderer("jsonl", buf, count=3, top_k=2)
    renderer.write(RESULTS[0])
    assert buf.getvalue().count("\n") == 1  # written before the run ends


def test_inspect_table_and_json():
    report = {
        "model": "m",
        "files": [{"name": "model.safetensors", "size": 1234567}],
        "architecture": {"name": "BiT R50x1, pre-activation", "depths": [3, 4, 6, 3]},
        "num_parameters": 25549352,
        "gflops": 32.9,
        "preprocessing": {"mean": [0.5, 0.5, 0.5]},
        "labels": {"source": "checkpoint config", "first": ["tench"]},
    }
    buf = io.StringIO()
    render_inspect(report, "json", buf)
    assert json.loads(buf.getvalue()) == report
    buf = io.StringIO()
    render_inspect(report, "table", buf)
    text = buf.getvalue()
    assert "BiT R50x1, pre-activation" in text and "1.2 MB" in text and "25.5 M" in text and "3, 4, 6, 3" in text


@pytest.mark.parametrize(
    "value, text",
    [(8.17837, "8.18"), (32.6967, "32.7"), (9.996, "10.0"), (0.000123456, "0.000123"), (1234.5, "1,234"), (0.0, "0")],
)
def test_inspect_shows_gflops_as_a_person_reads_them(value, text):
    buf = io.StringIO()
    render_inspect({"model": "m", "gflops": value}, "table", buf)
    (line,) = [line for line in buf.getvalue().splitlines() if "GFLOPs" in line]
    assert line.split("│")[1].strip() == text
    buf = io.StringIO()
    render_inspect({"model": "m", "gflops": value}, "json", buf)
    assert json.loads(buf.getvalue())["gflops"] == value  # the JSON keeps the precise figure


# -- the compact table at real terminal widths ------------------------------------------------------

LONG_LABELS = [
    "American Staffordshire terrier, Staffordshire terrier, American pit bull terrier, pit bull terrier",
    "Staffordshire bullterrier, Staffordshire bull terrier",
    "tabby, tabby cat",
    "tiger cat",
    "Egyptian cat",
]
PATHS = [
    "/work/main/sample_images/astronaut.jpg",  # 38 characters
    "photos/2024/summer/holiday/IMG_20240712_1.jpg",  # 45
    "a.jpg",
    "sample_images/coffee.png",
    "/tmp/x/y/z/chelsea.png",
]


def many_results(paths=PATHS) -> list[ClassifyResult]:
    results = []
    for n, path in enumerate(paths):
        labels = LONG_LABELS[n:] + LONG_LABELS[:n]
        results.append(ClassifyResult(path, [Prediction(k + 1, 100 * n + k, labels[k], 0.5 / (k + 1)) for k in range(5)]))
    results.append(ClassifyResult("broken.jpg", error="truncated or corrupt image: image file is truncated"))
    return results


def render_compact(results, width: int, top_k: int = 5) -> list[str]:
    """The compact table (more than COMPACT_AFTER results) as `bit classify` prints it on a
    terminal `width` columns wide."""
    from unittest import mock

    assert len(results) > COMPACT_AFTER
    with mock.patch.dict("os.environ", {"COLUMNS": str(width)}):
        return render_classify(results, "table", count=len(results), top_k=top_k).splitlines()


@pytest.mark.parametrize("width, longest", [(80, 40), (100, 45), (120, 45)])
def test_compact_table_keeps_paths_whole_and_cuts_nothing(width, longest):
    paths = [path[:longest - 4] + ".jpg" if len(path) > longest else path for path in PATHS]
    lines = render_compact(many_results(paths), width)
    assert max(len(line) for line in lines) <= width
    failure = [line for line in lines if line.startswith("broken.jpg ")]
    assert len(failure) == 1 and "failed: truncated" in failure[0]  # a failure is one line, cut if need be
    assert failure[0].rstrip().endswith(("…", "image file is truncated"))
    cells = [cell for line in lines if line not in failure for cell in line.split("│")[:2]]
    assert not any("…" in cell for cell in cells)  # no path or top-1 label cut: long words fold
    for path in paths:
        assert sum(line.startswith(path + " ") or line == path for line in lines) == 1, (path, lines)
    assert lines[0].startswith("image ")


def test_runners_up_need_room_and_show_first_synonyms():
    short = many_results(["a.jpg", "b.jpg", "c/d.png", "e.jpg", "f.jpg"])
    lines = render_compact(short, 120)
    assert "runners-up" in lines[0]
    rows = [line for line in lines[2:] if "%" in line]
    assert "Staffordshire bullterrier 25.00%; tabby 16.67%" in rows[0]  # first synonyms only
    assert "Staffordshire bull terrier" not in rows[0].split("│")[-1]
    assert all(len(line) <= 120 for line in lines)
    assert "runners-up" not in render_compact(short, 80)[0]  # no room beside long labels: a line below
    assert "runners-up" not in render_compact(many_results(), 120)[0]  # nor beside long paths
    assert "runners-up" not in "\n".join(render_compact(short, 120, top_k=1)[:1])


def image_blocks(lines: list[str]) -> dict[str, list[list[str]]]:
    """Each image's lines (its row and the continuation lines under it) as cells, by the path in its first cell."""
    blocks: dict[str, list[list[str]]] = {}
    current = None
    for line in lines[2:]:
        cells = [cell.strip() for cell in line.split("│")]
        if cells[0]:
            current = cells[0]
        blocks.setdefault(current, []).append(cells[1:])
    return blocks


SHORT_PATHS = ["a.jpg", "b.jpg", "c/d.png", "e.jpg", "f.jpg"]
LONG_PATHS = [path[:36] + ".jpg" if len(path) > 40 else path for path in PATHS]  # long, and none folds at 80


@pytest.mark.parametrize(
    "width, paths",
    [(w, SHORT_PATHS) for w in (50, 60, 80, 100, 120, 180)] + [(w, LONG_PATHS) for w in (80, 100, 120, 180)],
)
def test_every_one_of_the_top_k_is_shown_at_any_width(width, paths):
    results = many_results(paths)
    lines = render_compact(results, width)
    assert max(len(line) for line in lines) <= width
    blocks = image_blocks(lines)
    for result in results[:-1]:
        block = blocks[result.path]
        top1 = " ".join(cells[0] for cells in block if len(cells) >= 3 and cells[0])  # the label column, folded
        assert top1 == result.predictions[0].label, (top1, lines)
        # the runners-up column read down, or the lines below the row (one cell across the columns)
        rest = " ".join(cells[3] if len(cells) == 4 else cells[0] for cells in block if len(cells) in (1, 4))
        rest = re.sub(r"\s+", " ", rest)
        for p in result.predictions[1:]:
            assert f"{p.label.split(', ')[0]} {format_percent(p.score)}" in rest, (result.path, p, lines)
        assert "…" not in rest


def test_runners_up_text_keeps_whole_entries():
    from bitcli.output import runners_up_text

    preds = [Prediction(2, 1, "tiger cat", 0.1), Prediction(3, 2, "Egyptian cat, cat", 0.05)]
    assert runners_up_text(preds, None) == "tiger cat 10.00%; Egyptian cat 5.00%"
    assert runners_up_text(preds, 36) == "tiger cat 10.00%; Egyptian cat 5.00%"
    assert runners_up_text(preds, 35) == "tiger cat 10.00%;\nEgyptian cat 5.00%"  # broken between entries
    assert runners_up_text(preds, 10) == "tiger cat 10.00%;\nEgyptian cat 5.00%"  # never cut: the table folds
    assert runners_up_text(preds, 30, lead="runners-up: ") == "runners-up: tiger cat 10.00%;\nEgyptian cat 5.00%"


def test_a_path_too_long_for_the_terminal_folds_and_the_others_stay_whole():
    long_path = "photos/" + "very-long-folder-name/" * 4 + "IMG_0001.jpg"  # 107 characters
    others = [PATHS[0], "a.jpg", "b.jpg"]
    lines = render_compact(many_results([long_path, *others]), 80)
    assert max(len(line) for line in lines) <= 80
    column = [line.split("│")[0].strip() for line in lines[2:]]
    assert long_path in "".join(column)  # folded over several lines, every character kept
    for path in others:
        assert path in column


def test_table_renderer_uses_the_terminal_width(monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    text = render_classify(many_results(), "table", count=6, top_k=5)
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 100 and max(len(line) for line in lines) > 80
    assert all(any(line.startswith(path + " ") for line in lines) for path in PATHS)
