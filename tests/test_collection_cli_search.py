"""`bit search` through the real command, on real near-duplicates of the sample photos."""

from __future__ import annotations

import csv
import os
import io
import json
import shutil
from html.parser import HTMLParser

import numpy as np
import pytest

from clihelpers import assert_clean_failure, jsonl, run
from collectionfiles import clustered, cosine_matrix, make_duplicates, write_embedding


@pytest.fixture(scope="module")
def base(ckpt, tmp_path_factory):
    """`photos/` (originals + copies) embedded as `photos.npy`; `originals.npy` holds only originals."""
    base = tmp_path_factory.mktemp("search")
    copies = make_duplicates(base / "photos")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(base)
        assert run(["embed", "photos", "-o", "photos.npy", "-m", ckpt, "-q"]).exit_code == 0
        originals = [f"photos/{name}" for name in sorted(set(copies.values()))]
        assert run(["embed", *originals, "-o", "originals.npy", "-m", ckpt, "-q"]).exit_code == 0
    return base, copies


@pytest.fixture(autouse=True)
def in_base(base, monkeypatch):
    monkeypatch.chdir(base[0])


def search(*args):
    return run(["search", *map(str, args)])


@pytest.mark.slow
def test_each_copy_finds_its_original_by_its_stored_row(base):
    _, copies = base
    result = search("photos.npy", *(f"photos/{c}" for c in copies), "-k", "1", "-f", "jsonl")
    assert result.exit_code == 0, result.stderr
    found = {r["query"]: r["matches"][0]["path"] for r in jsonl(result.stdout)}
    assert found == {f"photos/{c}": f"photos/{o}" for c, o in copies.items()}


def test_copies_not_in_the_index_are_embedded_with_its_model(base):
    _, copies = base
    result = search("originals.npy", *(f"photos/{c}" for c in copies), "-k", "1", "-f", "jsonl")  # no --model
    assert result.exit_code == 0, result.stderr
    found = {r["query"]: r["matches"][0]["path"] for r in jsonl(result.stdout)}
    assert found == {f"photos/{c}": f"photos/{o}" for c, o in copies.items()}


def test_scores_equal_numpy_cosine_on_the_stored_rows(base):
    rows = np.load("photos.npy")
    paths = open("photos.paths.txt").read().splitlines()
    result = search("photos.npy", "photos/chelsea.png", "photos/rocket_crop.png", "-k", "4", "-f", "jsonl")
    sims = cosine_matrix(rows, rows)
    for record in jsonl(result.stdout):
        me = paths.index(record["query"])
        expected = sorted((r for r in range(len(paths)) if r != me), key=lambda r: (-sims[me, r], r))[:4]
        assert [m["path"] for m in record["matches"]] == [paths[r] for r in expected]  # never itself
        assert [m["score"] for m in record["matches"]] == pytest.approx([sims[me, r] for r in expected], abs=1e-7)
        assert [m["rank"] for m in record["matches"]] == [1, 2, 3, 4]


def test_index_named_without_its_npy_suffix(base):
    result = search("photos", "photos/coffee.png", "-k", "1", "-f", "jsonl")  # as `bit embed -o photos` names it
    assert jsonl(result.stdout)[0]["matches"][0]["path"] == "photos/coffee_half.png"


def test_formats(base):
    as_json = json.loads(search("photos.npy", "photos/coffee.png", "-k", "2", "-f", "json").stdout)
    as_jsonl = jsonl(search("photos.npy", "photos/coffee.png", "-k", "2", "-f", "jsonl").stdout)
    assert as_json == as_jsonl and as_json[0]["matches"][0]["path"] == "photos/coffee_half.png"
    rows = list(csv.reader(io.StringIO(search("photos.npy", "photos/coffee.png", "-k", "2", "-f", "csv").stdout)))
    assert rows[0] == ["query", "rank", "path", "score"]
    assert [(q, r, p) for q, r, p, _ in rows[1:]] == [("photos/coffee.png", "1", "photos/coffee_half.png"), ("photos/coffee.png", "2", as_json[0]["matches"][1]["path"])]
    assert float(rows[1][3]) == as_json[0]["matches"][0]["score"]
    table = search("photos.npy", "photos/coffee.png", "-k", "2", "-f", "table").stdout
    assert "photos/coffee_half.png" in table and "rank" in table


def test_a_failed_query_is_reported_like_a_failed_classify_input(base):
    open("broken.jpg", "wb").write(b"not an image")
    result = search("photos.npy", "photos/coffee.png", "broken.jpg", "missing.jpg", "-k", "1", "-f", "jsonl")
    assert_clean_failure(result, 1)
    records = jsonl(result.stdout)
    assert [r["query"] for r in records] == ["photos/coffee.png", "broken.jpg", "missing.jpg"]
    assert "matches" in records[0] and records[1]["error"] == "not an image" and records[2]["error"]
    assert "broken.jpg: not an image" in result.stderr


def test_queries_from_stdin_and_folders(base):
    result = run(["search", "photos.npy", "-", "-k", "1", "-f", "jsonl"], input="photos/camera_q30.jpg\nphotos/retina.jpg\n")
    assert [r["matches"][0]["path"] for r in jsonl(result.stdout)] == ["photos/camera.png", "photos/retina_crop.png"]
    assert len(jsonl(search("originals.npy", "photos", "-k", "1", "-f", "jsonl").stdout)) == 12


def test_nul_separated_queries_on_stdin_with_null(base):
    listed = "photos/camera_q30.jpg\0photos/retina.jpg\0"
    result = run(["search", "photos.npy", "-", "-0", "-k", "1", "-f", "jsonl"], input=listed)
    assert result.exit_code == 0, result.stderr
    assert [r["matches"][0]["path"] for r in jsonl(result.stdout)] == ["photos/camera.png", "photos/retina_crop.png"]
    refused = run(["search", "photos.npy", "-", "-k", "1"], input=listed)  # NUL bytes without -0
    assert_clean_failure(refused, 2)
    assert "-0" in refused.stderr


def test_stored_rows_need_no_model(base, ckpt, tmp_path):
    gone = tmp_path / "gone-model"
    shutil.copytree(ckpt, gone)
    assert run(["embed", "photos/coffee.png", "photos/retina.jpg", "-o", tmp_path / "x.npy", "-m", gone, "-q"]).exit_code == 0
    shutil.rmtree(gone)
    result = search(tmp_path / "x.npy", "photos/coffee.png", "-f", "jsonl")
    assert result.exit_code == 0, result.stderr
    assert jsonl(result.stdout)[0]["matches"][0]["path"] == "photos/retina.jpg"
    assert_clean_failure(search(tmp_path / "x.npy", "photos/coffee_half.png"), 3)  # this one needs the model


def test_a_plain_npy_without_metadata(base, ckpt, tmp_path):
    np.save(tmp_path / "plain.npy", np.load("photos.npy"))
    shutil.copy("photos.paths.txt", tmp_path / "plain.paths.txt")
    stored = search(tmp_path / "plain.npy", "photos/coffee.png", "-k", "1", "-f", "jsonl")
    assert jsonl(stored.stdout)[0]["matches"][0]["path"] == "photos/coffee_half.png"
    outside = tmp_path / "q.png"
    shutil.copy("photos/coffee.png", outside)
    refused = search(tmp_path / "plain.npy", outside)
    assert_clean_failure(refused, 2)
    assert "--model" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    embedded = search(tmp_path / "plain.npy", outside, "-m", ckpt, "-k", "1", "-f", "jsonl")
    assert jsonl(embedded.stdout)[0]["matches"][0]["path"] == "photos/coffee.png"


@pytest.mark.parametrize("damage, message", [("manifest", "lists 2 paths but"), ("empty", "has no rows")])
def test_broken_indexes_are_usage_errors(base, tmp_path, damage, message):
    if damage == "manifest":
        np.save(tmp_path / "x.npy", np.ones((3, 32), np.float32))
        (tmp_path / "x.paths.txt").write_text("a\nb\n")
    else:
        np.save(tmp_path / "x.npy", np.ones((0, 32), np.float32))
        (tmp_path / "x.paths.txt").write_text("")
    result = search(tmp_path / "x.npy", "photos/coffee.png")
    assert_clean_failure(result, 2)
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_html_page_parses_and_references_every_match(base, tmp_path):
    page = tmp_path / "matches.html"
    result = search("photos.npy", "photos/chelsea.png", "photos/camera.png", "-k", "3", "-f", "jsonl", "--html", page)
    assert result.exit_code == 0, result.stderr
    texts: list[str] = []

    class Reader(HTMLParser):
        def handle_data(self, data):
            texts.append(data)

    Reader().feed(page.read_text())
    from collectionfiles import Cards

    cards = Cards()
    cards.feed(page.read_text())
    shown = [c["path"] for c in cards.cards]
    for record in jsonl(result.stdout):
        assert f"Query: {record['query']}" in texts
        for match in record["matches"]:
            assert match["path"] in shown and f"{match['score']:.4f}" in texts
            assert (f"{match['score']:.4f}", str(match["score"])) in cards.scores  # full value as the title
    assert page.read_text().count("data:image/jpeg;base64,") >= 5


def test_approximate_index_is_built_and_used(tmp_path):
    pytest.importorskip("faiss")
    out = write_embedding(tmp_path, clustered(12_000, 32, seed=5))
    built = search(out, "--build-index")
    assert built.exit_code == 0, built.stderr
    assert "built" in built.stderr and (tmp_path / "e.ann.faiss").exists()
    approx = search(out, "img00007.jpg", "-k", "5", "-f", "jsonl")
    exact = search(out, "img00007.jpg", "-k", "5", "-f", "jsonl", "--exact")
    assert "approximate index" in approx.stderr and "approximate" not in exact.stderr
    approx_records, exact_records = jsonl(approx.stdout), jsonl(exact.stdout)
    assert approx_records[0].pop("method").startswith("faiss IVF")  # the record says how it was found
    assert exact_records[0].pop("method") == "exact, float32 pre-score"
    assert approx_records == exact_records  # this query's top 5 are well separated
    small = search("photos.npy", "--build-index")
    assert_clean_failure(small, 2)


def test_help_shows_examples():
    for command in ("search", "dedup"):
        result = run([command, "--help"])
        assert result.exit_code == 0 and "Examples:" in result.stdout and f"bit {command} photos.npy" in result.stdout


def test_help_example_keeps_its_brackets():
    """Rich markup must not eat `[search]` from the extra's name in an example."""
    result = run(["search", "--help"], env={"COLUMNS": "200"})
    assert "pip install 'bitcli[search]'" in result.stdout


def _bit(*args, cwd=None):
    from relhelpers import bit

    return bit(*args, cwd=cwd or os.getcwd())


@pytest.mark.slow
def test_min_score_lists_only_matches_at_or_above_it_in_every_format(base):
    every = jsonl(_bit("search", "photos.npy", "photos/coffee.png", "photos/chelsea.png", "-k", "6", "-f", "jsonl").stdout.decode())
    scores = sorted({m["score"] for r in every for m in r["matches"]})
    cut = scores[len(scores) // 2]  # a score as printed: that match stays
    expected = [{**r, "matches": [m for m in r["matches"] if m["score"] >= cut]} for r in every]
    assert any(len(e["matches"]) < 6 for e in expected) and any(e["matches"] for e in expected)
    args = ("search", "photos.npy", "photos/coffee.png", "photos/chelsea.png", "-k", "6", "--min-score", cut)
    result = _bit(*args, "-f", "jsonl")
    assert result.returncode == 0, result.stderr
    assert jsonl(result.stdout.decode()) == expected
    assert json.loads(_bit(*args, "-f", "json").stdout) == expected
    rows = list(csv.reader(io.StringIO(_bit(*args, "-f", "csv").stdout.decode())))[1:]
    assert [(q, p) for q, _, p, _ in rows] == [(e["query"], m["path"]) for e in expected for m in e["matches"]]
    assert all(float(s) >= cut for *_, s in rows)
    table = _bit(*args, "-f", "table").stdout.decode()
    for e, r in zip(expected, every):
        for m in r["matches"]:
            if m not in e["matches"]:
                assert f"{m['score']:.4f}" not in table
    # with -k: of the k best only
    top1 = jsonl(_bit("search", "photos.npy", "photos/coffee.png", "-k", "1", "-s", "-1", "-f", "jsonl").stdout.decode())
    assert len(top1[0]["matches"]) == 1


def test_min_score_out_of_range_is_a_usage_error(base):
    result = _bit("search", "photos.npy", "photos/coffee.png", "--min-score", "1.5")
    assert result.returncode == 2 and b"--min-score" in result.stderr and b"Traceback" not in result.stderr


@pytest.mark.slow
def test_a_missing_model_folder_says_it_came_from_the_metadata(base, ckpt, tmp_path):
    shutil.copytree(ckpt, tmp_path / "models" / "tiny")
    make_duplicates(tmp_path / "photos")
    assert _bit("embed", "photos/coffee.png", "photos/camera.png", "-o", "few.npy", "-m", "models/tiny", "-q", cwd=tmp_path).returncode == 0
    shutil.rmtree(tmp_path / "models")
    result = _bit("search", "few.npy", "photos/chelsea.png", "-k", "1", cwd=tmp_path)
    assert result.returncode == 3, result.stderr
    err = result.stderr.decode()
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert "models/tiny" in lines[0] and "few.meta.json" in lines[0] and "--model" in lines[0], err
    again = _bit("search", "few.npy", "photos/chelsea.png", "-k", "1", "-m", str(ckpt), "-f", "jsonl", cwd=tmp_path)
    assert again.returncode == 0, again.stderr


@pytest.mark.parametrize("columns", [80, 120])
def test_min_score_on_a_terminal_table(base, columns):
    from ptyscreen import run_on_screen

    every = jsonl(_bit("search", "photos.npy", "photos/coffee.png", "-k", "6", "-f", "jsonl").stdout.decode())[0]["matches"]
    cut = every[2]["score"]
    run = run_on_screen(["search", "photos.npy", "photos/coffee.png", "photos/chelsea.png", "-k", "6", "-s", cut], columns=columns, cwd=base[0])
    assert run.exit_code == 0, run.text
    shown = [line.split() for line in run.lines if line.split() and line.split()[-1].startswith("photos/") and len(line.split()) >= 3]
    scores = [float(cols[-2]) for cols in shown]
    assert scores and all(s >= round(cut, 4) for s in scores), run.text
    assert [m["path"] for m in every[:3]] == [cols[-1] for cols in shown[:3]], run.text


def test_a_query_file_overwritten_since_it_was_embedded_is_embedded_again(ckpt, tmp_path, monkeypatch):
    """`photos/img00.png` names a row, but the file now holds img03's image: the answer is for the
    image the user points at, not the stale row (found from here or from another directory)."""
    from clihelpers import make_images

    monkeypatch.chdir(tmp_path)
    make_images(tmp_path / "photos", 4)
    assert run(["embed", "photos", "-o", "photos.npy", "-m", ckpt, "-q"]).exit_code == 0
    shutil.copyfile("photos/img03.png", "photos/img00.png")
    for where, query in [(tmp_path, "photos/img00.png"), (tmp_path / "photos", "img00.png")]:
        monkeypatch.chdir(where)
        result = run(["search", tmp_path / "photos.npy", query, "-k", "1", "--format", "jsonl"])
        assert result.exit_code == 0, result.stderr
        (match,) = json.loads(result.stdout)["matches"]
        assert match["path"].endswith("img03.png") and match["score"] > 0.9999, match
