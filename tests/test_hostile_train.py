"""`bit train` against hostile data and outputs: FIFOs and devices in lists, duplicated rows, an OUTDIR
holding the user's files, leftovers of killed runs, a full disk.

Every run of the real command is bounded by a timeout (relhelpers.bit): a hang fails the test.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bitcli.transfer import data as data_mod
from bitcli.transfer.run import prepare_data
from relhelpers import ZERO_DEVICE, assert_one_error_line, bit, bit_env, error_lines, make_device, small_tmpfs, text
from transferdata import make_trainable_checkpoint, shared, write_folder

CLASSES = {"cat": 3, "dog": 3}
FAST = ("--threads", "1", "--device", "cpu")


@pytest.fixture(autouse=True)
def feature_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BITCLI_CACHE_DIR", str(tmp_path / "bit-cache"))


@pytest.fixture
def photos(tmp_path):
    return write_folder(tmp_path / "photos", CLASSES, size=36)


def listing(path: Path, rows: list[tuple[object, str]]) -> Path:
    path.write_text("".join(f"{p},{label}\n" for p, label in rows))
    return path


def folder_rows(photos: Path) -> list[tuple[Path, str]]:
    return [(p, p.parent.name) for p in sorted(photos.glob("*/*.png"))]


# -- FIFOs and devices never block ---------------------------------------------------------------


@pytest.mark.slow
def test_a_fifo_as_the_training_list_is_refused(ckpt, tmp_path):
    fifo = tmp_path / "list.csv"
    os.mkfifo(fifo)
    result = bit("train", fifo, "-o", tmp_path / "m", "-m", ckpt, "-q", *FAST, timeout=60)
    assert_one_error_line(result, 2, str(fifo), "FIFO")


@pytest.mark.slow
def test_finetune_with_fifo_and_device_rows_skips_them(photos, tmp_path, tmp_path_factory):
    """typical_image_area and the training batches open every listed file: a FIFO row must not hang either."""
    base = shared(tmp_path_factory, "trainable-tiny", make_trainable_checkpoint)
    fifo = tmp_path / "stuck.png"
    os.mkfifo(fifo)
    zero = make_device(tmp_path / "zero.png", ZERO_DEVICE)
    rows = folder_rows(photos) + [(fifo, "cat"), (zero, "dog")]
    result = bit("train", listing(tmp_path / "list.csv", rows), "-o", tmp_path / "m", "-m", base,
                 "--method", "finetune", "--steps", "2", "--batch-size", "2", "-q", *FAST, timeout=120)
    lines = error_lines(result)
    assert result.returncode == 1, lines
    assert any(str(fifo) in line and "not a regular file" in line for line in lines), lines
    assert (tmp_path / "m" / "model.safetensors").is_file()


# -- duplicated rows -----------------------------------------------------------------------------


def test_duplicated_rows_are_dropped_before_the_split(tmp_path):
    photos = write_folder(tmp_path / "photos", {"cat": 8, "dog": 8}, size=20)
    rows = folder_rows(photos)
    os.symlink(rows[0][0], tmp_path / "alias.png")  # the same file under another name
    extra = [(tmp_path / "alias.png", rows[0][1]), (f"photos/{rows[1][0].parent.name}/./{rows[1][0].name}", rows[1][1])]
    path = listing(tmp_path / "list.csv", rows * 3 + extra)
    train, val = prepare_data(path, val_split=0.3, seed=0)
    assert train.duplicates == 2 * len(rows) + 2
    assert len(train) + len(val) == len(rows) == 16
    identities = lambda ds: {data_mod.file_identity(p) for p in ds.paths}  # noqa: E731
    assert not identities(train) & identities(val)


def test_a_file_with_two_labels_is_refused_naming_it(ckpt, tmp_path):
    photos = write_folder(tmp_path / "photos", {"cat": 2, "dog": 2}, size=20)
    rows = folder_rows(photos)
    clash = rows[0][0]
    path = listing(tmp_path / "list.csv", rows + [(clash, "dog")])
    result = bit("train", path, "-o", tmp_path / "m", "-m", ckpt, "-q", *FAST, timeout=60)
    assert_one_error_line(result, 2, str(clash), "'cat'", "'dog'", "line 1")


@pytest.mark.slow
def test_train_says_how_many_duplicates_it_dropped(ckpt, photos, tmp_path):
    path = listing(tmp_path / "list.csv", folder_rows(photos) * 3)
    result = bit("train", path, "-o", tmp_path / "m", "-m", ckpt, *FAST, timeout=120)
    assert result.returncode == 0, text(result.stderr)
    assert "dropped 12 duplicate rows" in text(result.stderr)
    report = json.loads((tmp_path / "m" / "training_report.json").read_text())
    assert report["data"]["train_images"] == 6 and report["data"]["duplicates_dropped"]["train"] == 12


# -- --overwrite replaces only bitcli's files ----------------------------------------------------


@pytest.mark.slow
def test_overwrite_refuses_an_outdir_holding_the_users_files(ckpt, photos, tmp_path):
    out = tmp_path / "m"
    assert bit("train", photos, "-o", out, "-m", ckpt, *FAST, timeout=120).returncode == 0
    (out / "NOTES.txt").write_text("my notes")
    (out / "eval_results").mkdir()
    before = sorted(os.listdir(out))
    result = bit("train", photos, "-o", out, "-m", ckpt, "--overwrite", "-q", *FAST, timeout=120)
    assert_one_error_line(result, 2, str(out), "NOTES.txt", "did not write")
    assert sorted(os.listdir(out)) == before and (out / "NOTES.txt").read_text() == "my notes"

    (out / "NOTES.txt").unlink()
    (out / "eval_results").rmdir()
    again = bit("train", photos, "-o", out, "-m", ckpt, "--overwrite", *FAST, timeout=120)
    assert again.returncode == 0, text(again.stderr)
    assert sorted(os.listdir(out)) == ["config.json", "model.safetensors", "preprocessor_config.json", "training_report.json"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".m.")] == []


# -- leftovers of kill -9 --------------------------------------------------------------------------


@pytest.mark.slow
def test_a_killed_runs_staging_folder_is_cleaned_by_the_next_run(photos, tmp_path, tmp_path_factory):
    base = shared(tmp_path_factory, "trainable-tiny", make_trainable_checkpoint)
    out = tmp_path / "m"
    proc = subprocess.Popen(
        [sys.executable, "-m", "bitcli", "train", photos, "-o", out, "-m", base, "--method", "finetune",
         "--steps", "5000", "--batch-size", "2", *FAST],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=bit_env(),
    )
    deadline = time.monotonic() + 120
    try:
        while not list(tmp_path.glob(".m.tmp-*")):
            assert proc.poll() is None and time.monotonic() < deadline, "no staging folder appeared"
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert list(tmp_path.glob(".m.tmp-*"))  # what kill -9 leaves
    # A folder of the same shape that a live run holds (locked) must be left alone meanwhile:
    # the next run removes only unlocked leftovers.
    result = bit("train", photos, "-o", out, "-m", base, *FAST, "--method", "finetune", "--steps", "2",
                 "--batch-size", "2", "--overwrite", "-q", timeout=120)
    assert result.returncode == 0, text(result.stderr)
    assert list(tmp_path.glob(".m.tmp-*")) == []


def test_a_live_runs_staging_folder_is_left_alone(tmp_path):
    import fcntl

    from bitcli.transfer.export import clean_leftovers

    live, dead = tmp_path / ".m.tmp-live1234", tmp_path / ".m.tmp-dead1234"
    foreign = tmp_path / ".m.tmp-user1234"
    for folder in (live, dead, foreign):
        folder.mkdir()
        (folder / "config.json").write_text("{}")
    (foreign / "mine.txt").write_text("not bitcli's")
    fd = os.open(live, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        assert clean_leftovers(tmp_path / "m") == [dead]
    finally:
        os.close(fd)
    assert live.is_dir() and foreign.is_dir() and not dead.exists()


# -- a full disk ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_disk_full_names_outdir_in_one_line(ckpt, photos, tmp_path):
    with small_tmpfs(tmp_path / "full", "16k") as full:
        out = full / "m"
        result = bit("train", photos, "-o", out, "-m", ckpt, "-q", *FAST, timeout=120)
        line = assert_one_error_line(result, 1, str(out), "no space left on device")
        assert "SafetensorError" not in line
        assert not out.exists() and os.listdir(full) == []


@pytest.mark.slow
def test_disk_full_finetune_never_sends_resume_and_no_resume_in_circles(photos, tmp_path, tmp_path_factory):
    base = shared(tmp_path_factory, "trainable-tiny", make_trainable_checkpoint)
    common = ["-m", base, "--method", "finetune", "--steps", "3", "--batch-size", "2", "--checkpoint-minutes", "0", "-q", *FAST]
    with small_tmpfs(tmp_path / "full", "16k") as full:
        out = full / "m"
        first = bit("train", photos, "-o", out, *common, timeout=120)
        line = assert_one_error_line(first, 1, str(out), "no space left on device")
        assert "--resume" not in line
        assert not (full / ".m.bit-train").exists()
        again = bit("train", photos, "-o", out, *common, timeout=120)
        assert "--resume" not in " ".join(error_lines(again))
        resumed = bit("train", photos, "-o", out, *common, "--resume", timeout=120)
        assert_one_error_line(resumed, 2, "no interrupted run to resume", "without --resume")


def test_a_killed_saves_temporaries_are_removed_and_an_empty_state_folder_too(tmp_path):
    from bitcli.transfer.export import STATE_INFO, STATE_WEIGHTS, discard_empty

    state = tmp_path / ".m.bit-train"
    state.mkdir()
    (state / ".tmp-abc.safetensors").write_bytes(b"half")
    (state / STATE_WEIGHTS).write_bytes(b"weights without their step")
    discard_empty(state)
    assert not state.exists()  # no state.json: nothing to resume

    state.mkdir()
    (state / ".tmp-def.json").write_text("{")
    (state / STATE_WEIGHTS).write_bytes(b"w")
    (state / STATE_INFO).write_text("{}")
    discard_empty(state)
    assert sorted(os.listdir(state)) == [STATE_INFO, STATE_WEIGHTS]
