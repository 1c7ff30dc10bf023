"""`bit dedup` through the real command, on real near-duplicates of the sample photos."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from html.parser import HTMLParser

import numpy as np
import pytest

from clihelpers import assert_clean_failure, jsonl, run
from collectionfiles import Cards, all_pairs_groups, cosine_matrix, make_duplicates, read_cards


@pytest.fixture(scope="module")
def base(ckpt, tmp_path_factory):
    base = tmp_path_factory.mktemp("dedup")
    copies = make_duplicates(base / "photos")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(base)
        assert run(["embed", "photos", "-o", "photos.npy", "-m", ckpt, "-q"]).exit_code == 0
    return base, copies


@pytest.fixture(autouse=True)
def in_base(base, monkeypatch):
    monkeypatch.chdir(base[0])


def dedup(*args):
    return run(["dedup", "photos.npy", *map(str, args)])


def bit(*args):
    """The real `bit` process (stdout as bytes: -0 output)."""
    return subprocess.run([sys.executable, "-m", "bitcli", *map(str, args)], capture_output=True, env={**os.environ})


@pytest.mark.slow
def test_copies_group_with_their_originals(base):
    _, copies = base
    result = dedup("--threshold", "0.98", "-f", "jsonl")
    assert result.exit_code == 0, result.stderr
    groups = jsonl(result.stdout)
    expected = sorted(sorted([f"photos/{c}", f"photos/{o}"]) for c, o in copies.items())
    assert sorted(g["paths"] for g in groups) == expected
    assert [g["group"] for g in groups] == list(range(1, 7))
    assert "6 groups of near-duplicates (12 of 12 images) at threshold 0.98" in result.stderr


@pytest.mark.parametrize("threshold", ["0.98", "0.9", "0.7", "-1"])
def test_groups_equal_connected_components_over_all_pairs(base, threshold):
    rows = np.load("photos.npy")
    paths = open("photos.paths.txt").read().splitlines()
    groups = jsonl(dedup("--threshold", threshold, "-f", "jsonl").stdout)
    expected = all_pairs_groups(rows, float(threshold))
    assert [g["paths"] for g in groups] == [[paths[r] for r in members] for members in expected]
    sims = cosine_matrix(rows, rows)  # float64 norms too: a float32 norm is off by ~1e-7
    for group, members in zip(groups, expected):
        pairs = [sims[a, b] for i, a in enumerate(members) for b in members[i + 1 :]]
        assert group["min_score"] == pytest.approx(min(pairs), abs=1e-7)
        assert group["max_score"] == pytest.approx(max(pairs), abs=1e-7)


def test_formats(base):
    as_json = json.loads(dedup("-t", "0.98", "-f", "json").stdout)
    assert as_json == jsonl(dedup("-t", "0.98", "-f", "jsonl").stdout)
    rows = list(csv.reader(io.StringIO(dedup("-t", "0.98", "-f", "csv").stdout)))
    assert rows[0] == ["group", "path", "score_to_first"]
    assert [(int(g), p) for g, p, _ in rows[1:]] == [(g["group"], p) for g in as_json for p in g["paths"]]
    assert all(float(s) == 1.0 for g, p, s in rows[1:] if p == as_json[int(g) - 1]["paths"][0])
    table = dedup("-t", "0.98", "-f", "table").stdout
    assert all(f"photos/{name}" in table for name in ("coffee.png", "coffee_half.png"))


@pytest.mark.slow
def test_keep_prints_nul_terminated_paths_to_delete(base):
    first = bit("dedup", "photos.npy", "-t", "0.98", "--keep", "first", "-0")
    assert first.returncode == 0, first.stderr
    assert sorted(first.stdout.split(b"\0")[:-1]) == sorted(
        b"photos/" + n for n in (b"astronaut_copy.jpg", b"camera_q30.jpg", b"chelsea_q10.jpg", b"coffee_half.png", b"retina_crop.png", b"rocket_crop.png")
    )
    largest = bit("dedup", "photos.npy", "-t", "0.98", "--keep", "largest")
    deleted = largest.stdout.decode().splitlines()
    assert "photos/coffee_half.png" in deleted and "photos/coffee.png" not in deleted  # more pixels kept
    assert "photos/rocket_crop.png" in deleted  # the crop has fewer pixels
    os.utime("photos/coffee_half.png", ns=(4 * 10**18, 4 * 10**18))
    touched = bit("dedup", "photos.npy", "-t", "0.98", "--keep", "newest")
    assert b"photos/coffee_half.png: changed since it was embedded" in touched.stderr  # never listed, never kept
    assert not {"photos/coffee_half.png", "photos/coffee.png"} & set(touched.stdout.decode().splitlines())
    assert run(["embed", "photos", "-o", "photos.npy", "--update", "-q"]).exit_code == 0  # its identity recorded again
    newest = bit("dedup", "photos.npy", "-t", "0.98", "--keep", "newest").stdout.decode().splitlines()
    assert "photos/coffee.png" in newest and "photos/coffee_half.png" not in newest
    assert all(os.path.exists(p) for p in deleted + newest)  # listed, never deleted


@pytest.mark.parametrize(
    "args, message",
    [
        (["--threshold", "1.5"], "between -1 and 1"),
        (["--threshold", "-2"], "between -1 and 1"),
        (["-0"], "add --keep"),
        (["--keep", "first", "--format", "json"], "--keep prints paths"),
    ],
)
def test_bad_options_are_usage_errors(base, args, message):
    result = dedup(*args)
    assert_clean_failure(result, 2)
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("damage, message", [("manifest", "lists 2 paths but"), ("empty", "has no rows"), ("plain", None)])
def test_bad_indexes(base, tmp_path, damage, message):
    rows = {"manifest": 3, "empty": 0, "plain": 2}[damage]
    np.save(tmp_path / "x.npy", np.eye(rows, 8, dtype=np.float32))
    (tmp_path / "x.paths.txt").write_text("" if damage == "empty" else "a\nb\n")
    result = run(["dedup", tmp_path / "x.npy", "-f", "jsonl"])
    if message is None:  # a plain .npy from elsewhere, no metadata: dedup needs none
        assert result.exit_code == 0 and result.stdout == "", result.stderr
        return
    assert_clean_failure(result, 2)
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_html_page_shows_every_group(base, tmp_path):
    page = tmp_path / "groups.html"
    groups = jsonl(dedup("-t", "0.98", "-f", "jsonl", "--html", page).stdout)
    texts: list[str] = []

    class Reader(HTMLParser):
        def handle_data(self, data):
            texts.append(data)

    Reader().feed(page.read_text())
    assert sum(t.startswith("Group ") for t in texts) == len(groups)
    cards = read_cards(page.read_text())
    assert [c["path"] for c in cards] == [p for g in groups for p in g["paths"]]
    (tmp_path / "mine.html").write_text("<p>my notes</p>")
    refused = dedup("--html", tmp_path / "mine.html")
    assert_clean_failure(refused, 2)
    assert (tmp_path / "mine.html").read_text() == "<p>my notes</p>"


def test_threshold_one_finds_byte_identical_copies(tmp_path):
    """`bit dedup --threshold 1`: exact copies only (their rows are byte-identical)."""
    from collectionfiles import clustered, write_embedding

    x = clustered(30, 2048, seed=4)
    x[[10, 20, 29]] = x[3]
    out = write_embedding(tmp_path, x)
    result = run(["dedup", out, "--threshold", "1", "-f", "jsonl"])
    assert result.exit_code == 0, result.stderr
    assert [g["paths"] for g in jsonl(result.stdout)] == [[f"img{i:05d}.jpg" for i in (3, 10, 20, 29)]]


def test_html_names_break_only_between_parts_scores_have_4_decimals_and_the_kept_file_is_marked(base, tmp_path):
    import re

    from relhelpers import bit as real_bit

    page = tmp_path / "groups.html"
    groups = jsonl(real_bit("dedup", "photos.npy", "-t", "0.98", "-f", "jsonl", cwd=os.getcwd()).stdout.decode())
    made = real_bit("dedup", "photos.npy", "-t", "0.98", "--keep", "newest", "--html", page, cwd=os.getcwd())
    assert made.returncode == 0, made.stderr
    deleted = set(os.fsdecode(made.stdout).splitlines())
    reader = Cards()
    reader.feed(page.read_text())
    cards = reader.cards
    assert [c["path"] for c in cards] == [p for g in groups for p in g["paths"]]
    for card in cards:
        assert card["parts"] == card["path"].split("/") and card["title"] == card["path"]
    assert "break-all" not in reader.css and "break-word" not in reader.css and "anywhere" not in reader.css
    assert ".seg{white-space:nowrap}" in reader.css
    assert reader.scores and all(re.fullmatch(r"-?\d\.\d{4}", text) for text, _ in reader.scores)
    assert all(f"{float(title):.4f}" == text for text, title in reader.scores)
    by_path = {c["path"]: c for c in cards}
    for group in groups:
        kept = [p for p in group["paths"] if p not in deleted]
        assert len(kept) == 1
        assert by_path[kept[0]]["badges"] == ["keep"] and "kept" in by_path[kept[0]]["classes"]
        assert all(by_path[p]["badges"] == [] for p in group["paths"] if p != kept[0])
    assert any(by_path[g["paths"][0]]["badges"] == [] for g in groups)  # the kept one, not the first one
    plain = tmp_path / "plain.html"
    assert real_bit("dedup", "photos.npy", "-t", "0.98", "--html", plain, cwd=os.getcwd()).returncode == 0
    assert all(c["badges"] == [] for c in read_cards(plain.read_text()))  # no --keep: nothing marked


@pytest.fixture
def fresh(ckpt, tmp_path):
    """A collection of its own (these tests move its files): photos/ with copies, embedded."""
    from relhelpers import bit as real_bit

    make_duplicates(tmp_path / "photos")
    made = real_bit("embed", "photos", "-o", "photos.npy", "-m", ckpt, "-q", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    return tmp_path


def _contents(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def _listed(base, *extra) -> list[str]:
    from relhelpers import bit as real_bit

    done = real_bit("dedup", "photos.npy", "-t", "0.98", "--keep", "first", *extra, cwd=base)
    assert done.returncode == 0, done.stderr
    return os.fsdecode(done.stdout).splitlines()


def test_move_sets_aside_what_keep_would_not_keep_and_never_overwrites(fresh):
    from relhelpers import bit as real_bit

    before = _contents(fresh / "photos")
    listed = _listed(fresh)
    assert len(listed) == 6
    clash = os.path.basename(listed[0])
    (fresh / "dups").mkdir()
    (fresh / "dups" / clash).write_bytes(b"my own file")  # already in DIR: never replaced
    moved = real_bit("dedup", "photos.npy", "-t", "0.98", "--keep", "first", "--move", "dups", "--html", "page.html", cwd=fresh)
    assert moved.returncode == 0, moved.stderr
    assert moved.stdout == b""
    page = (fresh / "page.html").read_text()
    assert page.count("no preview") == 0 and len(read_cards(page)) == 12  # drawn before the files moved
    lines = moved.stderr.decode().strip().splitlines()
    assert lines[-1] == "moved 6 duplicates into dups (6 kept, one per group)", lines
    assert (fresh / "dups" / clash).read_bytes() == b"my own file"
    stem, ext = os.path.splitext(clash)
    assert (fresh / "dups" / f"{stem}-2{ext}").read_bytes() == before[clash]
    for path in listed:
        assert not os.path.lexists(fresh / path)
    after = {**_contents(fresh / "photos"), **{k: v for k, v in _contents(fresh / "dups").items() if k != clash}}
    assert sorted(after.values()) == sorted(before.values())  # nothing lost, nothing changed
    assert set(_contents(fresh / "photos")) == set(before) - {os.path.basename(p) for p in listed}
    again = real_bit("dedup", "photos.npy", "-t", "0.98", "--keep", "first", "--move", "dups", cwd=fresh)
    assert again.returncode == 0 and "moved 0 duplicates" in again.stderr.decode()  # the moved ones are gone: skipped


@pytest.mark.slow
def test_link_puts_links_in_a_new_folder_and_a_second_run_adds_nothing(fresh):
    from relhelpers import bit as real_bit

    before = _contents(fresh / "photos")
    listed = _listed(fresh)
    for _ in range(2):
        linked = real_bit("dedup", "photos.npy", "-t", "0.98", "--keep", "first", "--link", "new/links", cwd=fresh)
        assert linked.returncode == 0, linked.stderr
        assert "linked 6 duplicates into new/links" in linked.stderr.decode()
    entries = sorted((fresh / "new" / "links").iterdir())
    assert [e.name for e in entries] == sorted(os.path.basename(p) for p in listed)
    for entry in entries:
        assert entry.is_symlink() and os.readlink(entry) == str(fresh / "photos" / entry.name)
    assert _contents(fresh / "photos") == before


@pytest.mark.slow
def test_links_among_the_sources_are_refused_and_the_run_exits_1(fresh):
    from relhelpers import bit as real_bit

    listed = _listed(fresh)
    victim = fresh / listed[0]
    (fresh / "elsewhere").mkdir()
    os.rename(victim, fresh / "elsewhere" / victim.name)  # same size and mtime: still the embedded file
    victim.symlink_to(fresh / "elsewhere" / victim.name)
    assert listed[0] in _listed(fresh)
    moved = real_bit("dedup", "photos.npy", "-t", "0.98", "--keep", "first", "--move", "dups", cwd=fresh)
    err = moved.stderr.decode()
    assert moved.returncode == 1, err
    assert f"{listed[0]}: not moved: is a symbolic link" in err and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("error: moved 5 of 6 duplicates into dups")
    assert victim.is_symlink() and (fresh / "elsewhere" / victim.name).is_file()
    assert not (fresh / "dups" / victim.name).exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--move", "d"], "add --keep"),
        (["--keep", "first", "--move", "d", "--link", "e"], "choose one"),
        (["--keep", "first", "--move", "d", "-0"], "leave out -0"),
        (["--keep", "first", "--move", "afile"], "not a folder"),
    ],
)
def test_move_and_link_usage_errors(base, args, message):
    from relhelpers import bit as real_bit

    open("afile", "w").close()
    result = real_bit("dedup", "photos.npy", *args, cwd=os.getcwd())
    err = result.stderr.decode()
    assert result.returncode == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not os.path.exists("d") and not os.path.exists("e")


@pytest.mark.slow
def test_a_file_changed_since_it_was_embedded_is_not_moved(fresh):
    from relhelpers import bit as real_bit

    listed = _listed(fresh)
    changed = fresh / listed[1]
    changed.write_bytes(changed.read_bytes() + b"\0")
    moved = real_bit("dedup", "photos.npy", "-t", "0.98", "--keep", "first", "--move", "dups", cwd=fresh)
    err = moved.stderr.decode()
    assert moved.returncode == 0, err
    assert f"{listed[1]}: changed since it was embedded, not listed" in err and "moved 5 duplicates" in err
    assert changed.is_file() and not (fresh / "dups" / changed.name).exists()


@pytest.mark.parametrize("columns", [80, 120])
@pytest.mark.slow
def test_move_on_a_terminal_ends_with_one_summary_line(fresh, columns):
    from ptyscreen import bar_lines, collisions, run_on_screen

    run = run_on_screen(["dedup", "photos.npy", "-t", "0.98", "--keep", "first", "--move", "dups"], columns=columns, cwd=fresh)
    assert run.exit_code == 0, run.text
    assert not collisions(run.frames) and not bar_lines(run.lines), run.text
    assert run.lines[-1] == "moved 6 duplicates into dups (6 kept, one per group)", run.text
    assert sum("moved" in line for line in run.lines) == 1
    assert len(list((fresh / "dups").iterdir())) == 6


def test_move_across_file_systems_copies_then_removes(tmp_path, monkeypatch):
    import errno

    from bitcli.collection import keep as rel

    source = tmp_path / "a" / "photo.jpg"
    source.parent.mkdir()
    source.write_bytes(b"jpeg bytes")
    os.utime(source, ns=(1_600_000_000_000_000_000, 1_600_000_000_123_456_789))
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "photo.jpg").write_bytes(b"mine")

    def no_link(*args, **kwargs):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(rel.os, "link", no_link)
    done = rel.relocate([str(source)], {}, tmp_path / "d", "move")
    assert done.failed == [] and done.done == [(str(source), str(tmp_path / "d" / "photo-2.jpg"))]
    moved = tmp_path / "d" / "photo-2.jpg"
    assert moved.read_bytes() == b"jpeg bytes" and moved.stat().st_mtime_ns == 1_600_000_000_123_456_789
    assert not source.exists() and (tmp_path / "d" / "photo.jpg").read_bytes() == b"mine"


def test_special_files_are_refused_as_sources(tmp_path):
    from bitcli.collection.keep import relocate

    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    done = relocate([str(fifo), str(tmp_path / "gone.jpg")], {}, tmp_path / "d", "move")
    assert done.done == []
    assert done.failed == [(str(fifo), "is not a regular file (a FIFO)"), (str(tmp_path / "gone.jpg"), "no such file or directory")]
    assert fifo.exists() and list((tmp_path / "d").iterdir()) == []
