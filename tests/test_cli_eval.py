"""`bit eval --errors FILE` and the `mistakes` section of `--format json`: every wrong answer, for review.

The expected mistakes are worked out from `bit classify` on the same images (top-1 label and
probability against the folder name), so the test does not trust eval's own bookkeeping.
"""

from __future__ import annotations

import csv
import json
import os

import pytest

from clihelpers import run
from relhelpers import assert_one_error_line, bit, text
from transferdata import write_folder

CLASSES = {"class 0": 3, "class 1": 3, "class 4": 3}


def same(got: dict, want: dict) -> bool:
    """{path: (true, predicted, score)} equal, scores to float32's precision."""
    return got.keys() == want.keys() and all(
        got[k][:2] == want[k][:2] and got[k][2] == pytest.approx(want[k][2], rel=1e-6) for k in want
    )


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    return write_folder(tmp_path_factory.mktemp("eval") / "data", CLASSES, size=36)


@pytest.fixture(scope="module")
def expected(ckpt, labelled):
    """{path: (true, predicted, score)} for every image whose top-1 is not its folder, via bit classify."""
    result = run(["classify", labelled, "-m", ckpt, "--format", "jsonl", "-k", "1"])
    assert result.exit_code == 0, result.stderr
    wrong = {}
    for line in result.stdout.splitlines():
        record = json.loads(line)
        best = record["predictions"][0]
        true = os.path.basename(os.path.dirname(record["path"]))
        if best["label"] != true:
            wrong[record["path"]] = (true, best["label"], best["score"])
    assert 0 < len(wrong) < 9, "the random model should get some of the nine images wrong, not all"
    return wrong


def test_json_lists_each_mistake_most_confident_first(ckpt, labelled, expected):
    result = run(["eval", labelled, "-m", ckpt, "--format", "json"])
    assert result.exit_code == 0, result.stderr
    record = json.loads(result.stdout)
    mistakes = record["mistakes"]
    assert same({m["path"]: (m["true"], m["predicted"], m["score"]) for m in mistakes}, expected)
    assert len(mistakes) == len(expected) == round(record["n"] * (1 - record["accuracy"]))
    assert [m["score"] for m in mistakes] == sorted((m["score"] for m in mistakes), reverse=True)
    assert all(list(m) == ["path", "true", "predicted", "score"] for m in mistakes)


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_errors_file_by_suffix(ckpt, labelled, expected, tmp_path, suffix):
    target = tmp_path / f"mistakes{suffix}"
    result = run(["eval", labelled, "-m", ckpt, "--errors", target])
    assert result.exit_code == 0, result.stderr
    assert "Confusion" in result.stdout  # the tables still go to stdout
    assert f"wrote {len(expected)} misclassified images to {target}" in result.stderr
    assert "--errors FILE" not in result.stderr
    text = target.read_text()
    if suffix == ".csv":
        rows = list(csv.DictReader(text.splitlines()))
        assert text.splitlines()[0] == "path,true,predicted,score"
        got = {r["path"]: (r["true"], r["predicted"], float(r["score"])) for r in rows}
    else:
        rows = [json.loads(line) for line in text.splitlines()]
        got = {r["path"]: (r["true"], r["predicted"], r["score"]) for r in rows}
    assert same(got, expected)
    assert [float(r["score"]) for r in rows] == sorted((float(r["score"]) for r in rows), reverse=True)
    again = run(["eval", labelled, "-m", ckpt, "--errors", target])  # its own file: replaced
    assert again.exit_code == 0, again.stderr
    assert target.read_text() == text
    assert [p.name for p in tmp_path.iterdir()] == [target.name]  # no temporary left beside it


def refused(ckpt, labelled, target, *fragments: str) -> None:
    result = bit("eval", labelled, "-m", ckpt, "--errors", target, "--quiet", timeout=60)
    assert_one_error_line(result, 2, "--errors", *fragments)
    assert result.stdout == b""  # refused before the evaluation ran


@pytest.mark.slow
def test_errors_file_refusals(ckpt, labelled, tmp_path):
    refused(ckpt, labelled, tmp_path / "m.txt", ".csv or .jsonl")
    mine = tmp_path / "notes.csv"
    mine.write_text("my,own,notes\n")
    refused(ckpt, labelled, mine, "not written by bit eval")
    assert mine.read_text() == "my,own,notes\n"
    fifo = tmp_path / "pipe.jsonl"
    os.mkfifo(fifo)
    refused(ckpt, labelled, fifo, "FIFO")  # without blocking on it
    link = tmp_path / "link.csv"
    link.symlink_to(mine)
    refused(ckpt, labelled, link, "symbolic link")
    refused(ckpt, labelled, tmp_path / "nowhere" / "m.csv", "does not exist")


@pytest.mark.slow
def test_a_full_disk_keeps_the_old_file_and_the_figures(ckpt, labelled, tmp_path):
    target = tmp_path / "m.jsonl"
    assert bit("eval", labelled, "-m", ckpt, "--errors", target).returncode == 0
    before = target.read_bytes()
    result = bit("eval", labelled, "-m", ckpt, "--errors", target, "--format", "json", "--quiet", file_size=len(before) // 2)
    assert_one_error_line(result, 1, f"--errors {target}", "could not be written")
    assert json.loads(text(result.stdout))["mistakes"]  # the figures reached stdout
    assert target.read_bytes() == before  # whole or absent: the old file stays
    assert [p.name for p in tmp_path.iterdir()] == [target.name]


def test_csv_names_that_look_like_formulas_are_neutralised(ckpt, tmp_path):
    data = write_folder(tmp_path / "data", {"class 0": 2, "class 1": 2}, size=36)
    os.rename(data / "class 0" / "img00.png", data / "class 0" / "=HYPERLINK.png")
    target = tmp_path / "m.csv"
    result = run(["eval", data, "-m", ckpt, "--errors", target, "--format", "json"])
    assert result.exit_code == 0, result.stderr
    listed = {m["path"] for m in json.loads(result.stdout)["mistakes"]}
    for row in csv.DictReader(target.read_text().splitlines()):
        assert not row["path"].startswith("=")
        assert row["path"].removeprefix("'") in listed


def test_the_tables_say_where_the_mistakes_are(ckpt, labelled, expected):
    result = run(["eval", labelled, "-m", ckpt])
    assert result.exit_code == 0, result.stderr
    assert f"{len(expected)} misclassified images: --errors FILE.csv (or .jsonl) lists them" in result.stderr
    assert "misclassified" not in run(["eval", labelled, "-m", ckpt, "--format", "json"]).stderr
