"""Hostile file and class names: they never drive the terminal, and never run in a spreadsheet.

Names printed for people (stderr lines, tables, HTML titles) show control characters escaped
(`\\x1b`), in a pipe and on a real terminal; machine formats keep names exact (JSON escapes them
itself). CSV cells holding names that start like a formula get a leading `'` unless --csv-raw.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from types import SimpleNamespace

import pytest

from bitcli.collection.html import dedup_page
from bitcli.collection.exact import Match
from bitcli.output.info import render_groups, render_search, search_table
from bitcli.output.escapes import csv_cell, shown
from bitcli.output.evaluation import evaluation_tables
from bitcli.output.info import inspect_tables
from bitcli.output.tables import stdout_console
from clihelpers import make_images
from ptyscreen import run_on_screen
from relhelpers import bit, text

CLEAR_AND_TITLE = "\x1b[2J\x1b]0;PWNED\x07"
EVIL = CLEAR_AND_TITLE + "evil.png"  # a good image with a hostile name
RED = "bad\x1b[31mred.png"  # a broken file with a hostile name
FORMULAS = ["=1+2.png", "@SUM(1+1).png", "+3.png", "-4.png"]


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hostile")
    good = make_images(folder / "src", 5)
    shutil.copy(good[0], folder / EVIL)
    (folder / RED).write_bytes(b"not an image at all")
    for source, name in zip(good[1:], FORMULAS):
        shutil.copy(source, folder / name)
    return folder


def rendered(renderable, width: int = 200) -> str:
    buffer = io.StringIO()
    console = stdout_console(buffer)
    console.width = width
    console.print(renderable)
    return buffer.getvalue()


# -- the helper ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, expected",
    [
        (EVIL, "\\x1b[2J\\x1b]0;PWNED\\x07evil.png"),
        ("a\nb\rc\td", "a\\nb\\rc\\td"),
        ("csi\x9b31m", "csi\\x9b31m"),  # a C1 control: CSI on an 8-bit terminal
        ("del\x7f", "del\\x7f"),
        ("bidi\u202egnp.exe", "bidi\\u202egnp.exe"),
        ("byte\udcff.png", "byte\\xff.png"),  # a non-UTF-8 byte of a file name
        ("plain ünïcode, [bold] and back\\slash", "plain ünïcode, [bold] and back\\slash"),
    ],
)
def test_shown_escapes_control_characters_only(name, expected):
    assert shown(name) == expected


@pytest.mark.parametrize("value", ["=1+2", "+1", "-1", "@SUM(1)", "\tx", "\rx"])
def test_csv_cell_neutralises_formula_starts(value):
    assert csv_cell(value) == "'" + value
    assert csv_cell(value, raw=True) == value


@pytest.mark.parametrize("value", ["a=b.png", "photo.png", "", 3, -0.5])
def test_csv_cell_leaves_other_cells_alone(value):
    assert csv_cell(value) == value


# -- the real command, in a pipe and on a terminal ----------------------------------------------


def test_names_in_a_pipe_are_escaped_on_stderr_and_in_tables(ckpt, hostile):
    result = bit("classify", "-m", ckpt, "-f", "table", "-k", "2", "--", f"./{EVIL}", f"./{RED}", cwd=hostile)
    assert result.returncode == 1
    out, err = text(result.stdout), text(result.stderr)
    for stream in (out, err):
        assert "\x1b" not in stream and "\x07" not in stream, stream
    assert "error: ./bad\\x1b[31mred.png: not an image" in err
    assert "\\x1b[2J\\x1b]0;PWNED\\x07evil.png" in out


@pytest.mark.slow
def test_machine_formats_keep_exact_names(ckpt, hostile):
    result = bit("classify", "-m", ckpt, "-f", "jsonl", "-k", "1", "--", EVIL, RED, cwd=hostile)
    paths = [json.loads(line)["path"] for line in text(result.stdout).splitlines()]
    assert paths == [EVIL, RED]


@pytest.mark.slow
def test_names_on_a_terminal_cannot_clear_it_or_set_its_title(ckpt, hostile):
    screen = run_on_screen(["classify", "-m", ckpt, "-k", "2", "--", f"./{EVIL}", f"./{RED}"], cwd=hostile, columns=120)
    assert screen.exit_code == 1
    assert b"\x1b]0;" not in screen.raw and b"\x1b[2J" not in screen.raw and b"\x07" not in screen.raw
    assert b"\x1b[31mred" not in screen.raw
    assert any("\\x1b[2J\\x1b]0;PWNED\\x07evil.png" in line for line in screen.lines), screen.lines
    assert any("error: ./bad\\x1b[31mred.png: not an image" in line for line in screen.lines), screen.lines


# -- CSV formulas ---------------------------------------------------------------------------------


def csv_rows(data: bytes) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text(data))))


@pytest.mark.slow
def test_classify_csv_neutralises_names_and_labels_that_start_like_formulas(ckpt, hostile, tmp_path):
    labels = tmp_path / "labels.txt"
    names = ['=HYPERLINK("http://x")'] + [f"class {i}" for i in range(1, 10)]
    labels.write_text("\n".join(names) + "\n")
    result = bit("classify", "-m", ckpt, "--labels", labels, "-f", "csv", "-k", "10", "--", *FORMULAS, cwd=hostile)
    assert result.returncode == 0, text(result.stderr)
    rows = csv_rows(result.stdout)[1:]
    assert {row[0] for row in rows} == {"'" + name for name in FORMULAS}
    assert {row[3] for row in rows if row[2] == "0"} == {"'" + names[0]}
    assert all(float(row[4]) >= 0 for row in rows)  # the numbers stay numbers

    raw = bit("classify", "-m", ckpt, "--labels", labels, "-f", "csv", "--csv-raw", "-k", "10", "--", *FORMULAS, cwd=hostile)
    rows = csv_rows(raw.stdout)[1:]
    assert {row[0] for row in rows} == set(FORMULAS)
    assert {row[3] for row in rows if row[2] == "0"} == {names[0]}


def test_search_and_dedup_csv_neutralise_names():
    results = [SimpleNamespace(query="=q.png", matches=[Match(1, 0, "@a.png", -0.25)], error=None, ok=True)]
    out = io.StringIO()
    render_search(results, "csv", out)
    assert csv_rows(out.getvalue().encode())[1] == ["'=q.png", "1", "'@a.png", "-0.25"]
    out = io.StringIO()
    render_search(results, "csv", out, csv_raw=True)
    assert csv_rows(out.getvalue().encode())[1] == ["=q.png", "1", "@a.png", "-0.25"]

    groups = [SimpleNamespace(group=1, paths=["+a.png", "b.png"], scores_to_first=[1.0, 0.5])]
    out = io.StringIO()
    render_groups(groups, "csv", out)
    assert [row[1] for row in csv_rows(out.getvalue().encode())[1:]] == ["'+a.png", "b.png"]


# -- every other table and page ------------------------------------------------------------------


def test_search_table_escapes_queries_paths_and_errors():
    results = [
        SimpleNamespace(query=EVIL, matches=[Match(1, 0, RED, 0.5)], error=None, ok=True),
        SimpleNamespace(query=RED, matches=[], error=f"{RED}: not an image", ok=False),
    ]
    page = rendered(search_table(results))
    assert "\x1b" not in page and "\\x1b[31mred.png" in page and "PWNED\\x07evil.png" in page


def test_evaluation_tables_escape_class_names():
    record = {
        "model": EVIL, "n": 2, "failed": 0, "accuracy": 0.5, "top5": None,
        "per_class": {RED: {"precision": 1.0, "recall": 0.5, "support": 2}, "cat": {"precision": 0.0, "recall": 0.0, "support": 0}},
        "classes": [RED, "cat"], "confusion": [[1, 1], [0, 0]],
    }
    page = "".join(rendered(table) for table in evaluation_tables(record))
    assert "\x1b" not in page and "\x07" not in page
    assert "bad\\x1b[31mred.png" in page


def test_inspect_tables_escape_names_from_the_checkpoint():
    report = {"model": EVIL, "files": [{"name": RED, "size": 3}], "labels": {"source": "checkpoint config", "first": [RED]}}
    page = "".join(rendered(table) for table in inspect_tables(report))
    assert "\x1b" not in page and "\x07" not in page
    assert "0  bad\\x1b[31mred.png" in page


def test_html_titles_show_control_characters_escaped():
    page = dedup_page([], lambda path: None, title=f"bit dedup {EVIL}")
    assert "\x1b" not in page and "\x07" not in page
    assert "<title>bit dedup \\x1b[2J\\x1b]0;PWNED\\x07evil.png</title>" in page


def test_bit_info_escapes_what_a_collection_header_says(tmp_path):
    """A collection from elsewhere: its header's strings (model reference, directory, version,
    settings) reach `bit info`'s table escaped; `--format json` keeps them exact."""
    import numpy as np

    from collectionfiles import write_embedding

    out = write_embedding(tmp_path, np.ones((2, 4), np.float32))
    meta = tmp_path / "e.meta.json"
    header = json.loads(meta.read_text())
    header["model"]["reference"] = "/models/" + CLEAR_AND_TITLE
    header["cwd"] = "/home/\x1b[31mred"
    header["bitcli_version"] = "0.1\x1b[5m"
    header["preprocessing"]["resize"] = "32\x1b]0;PWNED\x07"
    meta.write_text(json.dumps(header))
    table = bit("info", out, cwd=tmp_path, timeout=60)
    assert table.returncode == 0, text(table.stderr)
    shown_text = text(table.stdout)
    assert "\x1b" not in shown_text and "\x07" not in shown_text
    assert "\\x1b]0;PWNED" in shown_text and "\\x1b[31mred" in shown_text
    exact = json.loads(text(bit("info", out, "--format", "json", cwd=tmp_path, timeout=60).stdout))
    assert exact["model"]["reference"] == "/models/" + CLEAR_AND_TITLE


def test_search_and_dedup_csv_raw_keep_formula_names_exact(tmp_path):
    """--csv-raw turns the leading ' off in search and dedup CSV too (as in classify)."""
    import csv as csvmod
    import io

    from relhelpers import ROOT, bit, text

    digit = sorted((ROOT / "sample_digits" / "3").glob("*.png"))[0].read_bytes()
    (tmp_path / "=a.png").write_bytes(digit)
    (tmp_path / "=b.png").write_bytes(digit)  # an exact duplicate: one dedup group
    assert bit("embed", "=a.png", "=b.png", "-m", "bit-digits", "-o", "c.npy", cwd=tmp_path).returncode == 0

    def cells(*args):
        done = bit(*args, "-f", "csv", cwd=tmp_path)
        assert done.returncode == 0, text(done.stderr)
        return [c for row in csvmod.reader(io.StringIO(text(done.stdout))) for c in row]

    for command in (("search", "c.npy", "=a.png", "-k", "1"), ("dedup", "c.npy")):
        neutral, raw = cells(*command), cells(*command, "--csv-raw")
        assert any(c.startswith("'=") for c in neutral), neutral
        assert not any(c.startswith("'") for c in raw) and any("=b.png" in c for c in raw), raw
