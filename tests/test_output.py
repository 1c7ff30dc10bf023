"""Renderers: every machine format parses back to the same records; tables show what they should."""

from __future__ import annotations

import csv
import io
import json

from bitcli.output import COMPACT_AFTER, classify_renderer, render_classify, render_inspect, resolve_format
from bitcli.results import ClassifyResult, Prediction

RESULTS = [
    ClassifyResult("a.jpg", [Prediction(1, 281, "tabby, tabby cat", 0.8312345), Prediction(2, 282, "tiger cat", 0.1)]),
    ClassifyResult("b,\"odd\".png", error="not an image"),
    ClassifyResult("c.jpg", [Prediction(1, 3, "[bold]markup[/bold]", 1e-07), Prediction(2, 0, "x", 0.5)]),
]


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
