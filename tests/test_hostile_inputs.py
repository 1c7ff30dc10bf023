"""Inputs that could hang a run: FIFOs and devices as images or as --labels. Each is refused on its
own (one bad input never sinks a batch) and nothing waits on it. Every run is bounded by a timeout."""

from __future__ import annotations

import json
import os
import threading

import pytest

from bitcli import decode
from bitcli.errors import InputError
from clihelpers import make_images
from relhelpers import ZERO_DEVICE, assert_one_error_line, bit, make_device, text


def test_a_fifo_swapped_in_after_the_check_is_refused_without_blocking(tmp_path, monkeypatch):
    """The file is checked, then opened: a FIFO put in its place between the two must not block."""
    fifo = tmp_path / "swapped.png"
    os.mkfifo(fifo)
    monkeypatch.setattr(decode, "_check_file", lambda name: None)  # the check saw a regular file
    outcome: list[BaseException | None] = []

    def decode_it() -> None:
        try:
            decode.open_image(fifo)
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            outcome.append(exc)

    worker = threading.Thread(target=decode_it, daemon=True)
    worker.start()
    worker.join(20)
    if worker.is_alive():  # release the blocked open before failing
        open(fifo, "wb").close()
        pytest.fail("decoding a FIFO blocked")
    assert isinstance(outcome[0], InputError) and outcome[0].reason == "not a regular file"


def test_fifo_and_device_inputs_fail_alone_in_a_batch(ckpt, tmp_path):
    good = make_images(tmp_path / "imgs", 2)
    fifo = tmp_path / "fifo.png"
    os.mkfifo(fifo)
    zero = make_device(tmp_path / "zero.png", ZERO_DEVICE)
    result = bit("classify", good[0], fifo, zero, good[1], "-m", ckpt, "-f", "jsonl", "-k", "1", timeout=60)
    assert result.returncode == 1
    records = [json.loads(line) for line in text(result.stdout).splitlines()]
    assert [r["path"] for r in records] == [str(good[0]), str(fifo), str(zero), str(good[1])]
    assert [("error" in r) for r in records] == [False, True, True, False]
    assert records[1]["error"] == records[2]["error"] == "not a regular file"


def test_dev_zero_itself_is_refused(ckpt, tmp_path):
    good = make_images(tmp_path / "imgs", 1)
    result = bit("classify", "/dev/zero", good[0], "-m", ckpt, "-f", "jsonl", "-k", "1", timeout=60)
    assert result.returncode == 1
    assert json.loads(text(result.stdout).splitlines()[0]) == {"path": "/dev/zero", "error": "not a regular file"}


@pytest.mark.parametrize("kind", ["fifo", "device"])
@pytest.mark.slow
def test_classify_labels_from_a_fifo_or_device_is_one_line(ckpt, tmp_path, kind):
    labels = tmp_path / "labels.txt"
    if kind == "fifo":
        os.mkfifo(labels)
    else:
        make_device(labels, ZERO_DEVICE)
    good = make_images(tmp_path / "imgs", 1)
    result = bit("classify", good[0], "-m", ckpt, "--labels", labels, timeout=60)
    line = assert_one_error_line(result, 2, "--labels", str(labels), "not a regular file", "one label per line")
    assert line.count(str(labels)) == 1


def _duplicates_embedding(directory, paths, *, meta):
    """An embedding whose rows are all one vector (one duplicate group), naming `paths`."""
    import numpy as np

    from collectionfiles import write_embedding

    return write_embedding(directory, np.ones((len(paths), 4), np.float32), paths, meta=meta, cwd=str(directory))


def test_dedup_keep_with_a_fifo_as_the_row_file_is_one_line(tmp_path):
    make_images(tmp_path / "photos", 2)
    out = _duplicates_embedding(tmp_path, ["photos/img00.png", "photos/img01.png"], meta=True)
    row_file = tmp_path / "e.files.jsonl"
    row_file.unlink()
    os.mkfifo(row_file)
    result = bit("dedup", out, "--keep", "first", cwd=tmp_path, timeout=30)
    errors = [line for line in text(result.stderr).splitlines() if line.startswith("error:")]
    assert result.returncode == 2 and result.stdout == b"" and "Traceback" not in text(result.stderr)
    assert len(errors) == 1 and "e.files.jsonl" in errors[0] and "not a regular file" in errors[0]


@pytest.mark.parametrize("keep", ["first", "largest"])
def test_dedup_keep_never_waits_on_or_lists_a_fifo_member(tmp_path, keep):
    """A collection without metadata (no identities to check) whose member is now a FIFO: the FIFO
    is not an embedded image, so it is neither opened (for its pixels) nor listed for deletion."""
    make_images(tmp_path / "photos", 2)
    out = _duplicates_embedding(tmp_path, ["photos/img00.png", "photos/fifo.png", "photos/img01.png"], meta=False)
    os.mkfifo(tmp_path / "photos" / "fifo.png")
    result = bit("dedup", out, "--keep", keep, cwd=tmp_path, timeout=30)
    assert result.returncode == 0, text(result.stderr)
    listed = text(result.stdout).splitlines()
    assert "photos/fifo.png" not in listed and len(listed) == 1
