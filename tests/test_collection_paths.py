"""Rows are identified by the resolved file: `--update` from another directory or with absolute
paths keeps every unchanged row without decoding it; printed paths resolve from the caller's
directory; `dedup --keep` names only the files that are still the embedded ones; a reader racing
publications sees one set."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from clihelpers import make_images, run
from bitcli.collection import open_index


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BIT_MODEL", raising=False)


def swap_content_keeping_identity(path: Path, donor: Path) -> None:
    """Another image's bytes under `path`, with its size and mtime unchanged: only a decode
    would notice, so a row that stays the old one proves the file was not embedded again."""
    info = path.stat()
    data = (donor.read_bytes() + bytes(info.st_size))[: info.st_size]
    path.write_bytes(data)
    os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns))


@pytest.mark.parametrize("how", ["another directory", "absolute paths", "dot slash"])
def test_update_keeps_unchanged_rows_byte_for_byte_whatever_the_spelling(ckpt, tmp_path, how):
    make_images(Path("work/photos"), 4)
    os.chdir("work")
    assert run(["embed", "photos", "-o", "photos.npy", "-m", ckpt, "--batch-size", "2"]).exit_code == 0
    before = np.load("photos.npy")
    swap_content_keeping_identity(Path("photos/img01.png"), Path("photos/img03.png"))
    make_images(Path("photos/more"), 1)
    if how == "another directory":
        os.chdir(tmp_path)
        args = ["work/photos", "-o", "work/photos.npy"]
    elif how == "absolute paths":
        args = [str(tmp_path / "work/photos"), "-o", "photos.npy"]
    else:
        args = ["./photos", "-o", "photos.npy"]
    result = run(["embed", *args, "--update", "--batch-size", "2"])
    assert result.exit_code == 0, result.stderr
    assert "+1 new, 0 changed, 0 removed, 4 kept" in result.stderr
    after = np.load(tmp_path / "work/photos.npy")
    assert after[:4].tobytes() == before.tobytes()  # img01's old row: not decoded again
    # and the rows still resolve: search by the new row finds it from here
    again = run(["embed", *args, "--update"])
    assert "up to date" in again.stderr


def test_printed_paths_resolve_from_the_callers_directory(ckpt, tmp_path):
    make_images(Path("work/photos"), 3)
    os.chdir("work")
    assert run(["embed", "photos", "-o", "photos.npy", "-m", ckpt]).exit_code == 0
    os.chdir(tmp_path / "work/photos")  # the stored `photos/img00.png` does not resolve from here
    result = run(["search", "../photos.npy", "img00.png", "-k", "2", "--format", "jsonl"])
    assert result.exit_code == 0, result.stderr
    matches = json.loads(result.stdout.splitlines()[0])["matches"]
    assert matches and all(os.path.isfile(m["path"]) for m in matches)
    groups = run(["dedup", "../photos.npy", "-t", "-1", "--format", "jsonl"])
    assert groups.exit_code == 0, groups.stderr
    assert all(os.path.isfile(p) for line in groups.stdout.splitlines() for p in json.loads(line)["paths"])


def test_an_output_written_through_a_linked_folder_reads_the_same_from_its_real_folder(ckpt, tmp_path):
    """`-o link/photos.npy` where `link` is a symbolic link to a folder two levels down: read from
    inside the link (the process's directory is then the real folder), the printed paths still
    name the embedded files and `--update` keeps every row."""
    make_images(Path("work/photos"), 3)
    Path("store/deep/emb").mkdir(parents=True)
    os.symlink(tmp_path / "store/deep/emb", "work/link")
    os.chdir("work")
    assert run(["embed", "photos", "-o", "link/photos.npy", "-m", ckpt]).exit_code == 0
    before = np.load("link/photos.npy")
    os.chdir("link")  # the process's directory is store/deep/emb
    result = run(["search", "photos.npy", str(tmp_path / "work/photos/img00.png"), "-k", "2", "--format", "jsonl"])
    assert result.exit_code == 0, result.stderr
    matches = json.loads(result.stdout.splitlines()[0])["matches"]
    assert [os.path.realpath(m["path"]) for m in matches] == [str(tmp_path / f"work/photos/img0{i}.png") for i in (1, 2)]
    update = run(["embed", str(tmp_path / "work/photos"), "-o", "photos.npy", "--update"])
    assert update.exit_code == 0 and "up to date" in update.stderr, update.stderr
    assert np.load("photos.npy").tobytes() == before.tobytes()


def test_a_collection_moved_without_its_files_still_names_them(ckpt, tmp_path):
    """`mv photos.* archive/` (the files stay where they were embedded): the recorded directory
    still holds them, so search prints files that exist and `--update` keeps every row."""
    import shutil

    make_images(Path("photos"), 3)
    assert run(["embed", "photos", "-o", "photos.npy", "-m", ckpt, "--batch-size", "2"]).exit_code == 0
    before = np.load("photos.npy")
    Path("archive").mkdir()
    for name in Path(".").glob("photos.*"):
        shutil.move(str(name), "archive")
    result = run(["search", "archive/photos.npy", "photos/img00.png", "-k", "2", "--format", "jsonl"])
    assert result.exit_code == 0, result.stderr
    matches = json.loads(result.stdout.splitlines()[0])["matches"]
    assert len(matches) == 2 and all(os.path.isfile(m["path"]) for m in matches), matches
    update = run(["embed", "photos", "-o", "archive/photos.npy", "--update"])
    assert update.exit_code == 0 and "up to date" in update.stderr, update.stderr
    assert np.load("archive/photos.npy").tobytes() == before.tobytes()


def test_keep_names_only_the_embedded_files_from_another_directory(ckpt, tmp_path):
    """From another directory where `photos/img01.png` is an unrelated file, and after one
    of the embedded files was overwritten: neither is listed for deletion."""
    make_images(Path("work/photos"), 1)
    for name in ("img01.png", "img02.png", "img03.png"):
        (Path("work/photos") / name).write_bytes(Path("work/photos/img00.png").read_bytes())
    os.chdir("work")
    assert run(["embed", "photos", "-o", "photos.npy", "-m", ckpt]).exit_code == 0
    make_images(tmp_path / "elsewhere/photos", 2)  # an unrelated photos/img01.png there
    os.chdir(tmp_path / "elsewhere")
    stamp = Path(tmp_path / "work/photos/img03.png").stat().st_mtime_ns
    os.utime(tmp_path / "work/photos/img03.png", ns=(stamp + 10**9, stamp + 10**9))  # overwritten since
    result = run(["dedup", str(tmp_path / "work/photos.npy"), "-t", "0.99", "--keep", "first"])
    assert result.exit_code == 0, result.stderr
    listed = result.stdout.splitlines()
    assert sorted(os.path.realpath(p) for p in listed) == sorted(
        str((tmp_path / "work/photos" / n).resolve()) for n in ("img01.png", "img02.png")
    )
    assert "img03.png: changed since it was embedded" in result.stderr


PUBLISHER = textwrap.dedent(
    """
    import sys
    import numpy as np
    from pathlib import Path
    from bitcli.store import EmbedPaths, EmbedWriter
    out, rounds = sys.argv[1], int(sys.argv[2])
    names = [f"f{i:03d}.jpg" for i in range(200)]
    fp = {"model": "m", "commit": None, "weights": [], "preprocessing": {}, "dtype": "float32"}
    for n in range(rounds):
        rng = np.random.default_rng(n)
        chosen = [names[i] for i in rng.permutation(len(names))[: 100 + n % 50]]
        rows = np.array([[int(p[1:4]), n] for p in chosen], dtype=np.float32)
        writer = EmbedWriter(EmbedPaths.for_output(Path(out)), dim=2, fingerprint=fp, inputs=chosen, overwrite=True)
        writer.commit(chosen, rows)
        writer.finish()
        print(n, flush=True)
    """
)


def test_a_reader_racing_publications_never_mislabels_a_row(tmp_path):
    out = tmp_path / "race.npy"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent.parent), os.environ.get("PYTHONPATH", "")])}
    first = subprocess.run([sys.executable, "-c", PUBLISHER, str(out), "1"], env=env, capture_output=True)
    assert first.returncode == 0, first.stderr
    publisher = subprocess.Popen([sys.executable, "-c", PUBLISHER, str(out), "30"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    opens = 0
    try:
        while publisher.poll() is None or opens == 0:
            index = open_index(out)
            rows = index.take(range(index.rows))
            labels = np.array([int(p[1:4]) for p in index.paths], dtype=np.float32)
            assert np.array_equal(rows[:, 0], labels), "a row labelled with another file's path"
            assert len(set(rows[:, 1].tolist())) == 1  # every row of one publication
            index.close()
            opens += 1
    finally:
        publisher.wait(timeout=120)
    assert publisher.returncode == 0, publisher.stderr.read()
    assert opens >= 20


def test_keep_with_another_manifest_lists_no_file_the_rows_were_not_made_from(tmp_path):
    """`--manifest` naming other files, each with the size and mtime of the file its row was made
    from: the row file says which file each row is, so none of them is listed for deletion."""
    from collectionfiles import write_embedding

    for name in ("a", "b", "c", "d"):
        Path(f"{name}.png").write_bytes(name.encode() * 100)
        os.utime(f"{name}.png", ns=(10**18, 10**18))
    out = write_embedding(tmp_path, np.ones((2, 4), np.float32), ["a.png", "b.png"], cwd=str(tmp_path))
    Path("other.txt").write_text("c.png\nd.png\n")
    assert run(["dedup", out, "--keep", "first"]).stdout == "b.png\n"
    result = run(["dedup", out, "--manifest", "other.txt", "--keep", "first"])
    assert result.exit_code == 0, result.stderr
    assert result.stdout == ""
