"""Issue 12, stdout: every write to stdout is checked, whatever the buffering.

A data write that does not reach stdout in full (a full file system, a reader that went away)
must end the run with exit 1 and one line (141 for a closed pipe), never exit 0 with truncated
output, and `bit embed -o -` must then not leave a manifest behind that claims rows stdout never
got. `PYTHONUNBUFFERED=1` matters: it gives Python an unbuffered stdout, whose writes can be short.
"""

from __future__ import annotations

import fcntl
import os
import threading

import pytest

from clihelpers import make_images
from relhelpers import FULL_DEVICE, assert_one_error_line, bit, bit_env, error_lines, fill_leaving, make_device, small_tmpfs

F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
ROWS = 48  # 48 rows of 32 float32 = 6272 bytes: more than a 4 KiB pipe or the room left on the tmpfs


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    directory = tmp_path_factory.mktemp("photos")
    make_images(directory, 2)
    return directory


def many(photos):
    return [photos / "img00.png", photos / "img01.png"] * (ROWS // 2)


@pytest.mark.slow
@pytest.mark.parametrize("unbuffered", ["1", ""])
def test_embed_to_a_stdout_that_fills_up_fails_and_writes_no_manifest(ckpt, photos, tmp_path, unbuffered):
    with small_tmpfs(tmp_path / "full") as full:
        fill_leaving(full, 4096)
        with open(full / "x.npy", "wb") as stdout:
            result = bit("embed", *many(photos), "-o", "-", "--manifest", tmp_path / "m.txt", "-m", ckpt,
                         cwd=tmp_path, stdout=stdout, env=bit_env(PYTHONUNBUFFERED=unbuffered))
        assert_one_error_line(result, 1, "stdout", "No space left on device")
        assert not (tmp_path / "m.txt").exists()


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["jsonl", "csv", "json"])
def test_classify_to_a_stdout_that_fills_up_fails(ckpt, photos, tmp_path, fmt):
    with small_tmpfs(tmp_path / "full") as full:
        fill_leaving(full, 4096)
        with open(full / "out", "wb") as stdout:
            result = bit("classify", *many(photos), "-f", fmt, "-m", ckpt, cwd=tmp_path, stdout=stdout,
                         env=bit_env(PYTHONUNBUFFERED="1"))
        assert_one_error_line(result, 1, "stdout", "No space left on device")


def _closed_early(command: list, tmp_path, *, read: int = 10):
    """Run `bit COMMAND` into a 4 KiB pipe whose reader takes `read` bytes and then goes away."""
    reader, writer = os.pipe()
    try:
        fcntl.fcntl(writer, F_SETPIPE_SZ, 4096)
    except OSError as exc:
        pytest.skip(f"cannot shrink a pipe here ({exc})")
    got = bytearray()

    def head() -> None:
        while len(got) < read:
            chunk = os.read(reader, read - len(got))
            if not chunk:
                break
            got.extend(chunk)
        os.close(reader)

    thread = threading.Thread(target=head)
    thread.start()
    try:
        result = bit(*command, cwd=tmp_path, stdout=writer, env=bit_env(PYTHONUNBUFFERED="1"))
    finally:
        os.close(writer)
        thread.join(timeout=60)
    return result, bytes(got)


@pytest.mark.slow
def test_embed_to_a_pipe_closed_early_exits_141(ckpt, photos, tmp_path):
    result, got = _closed_early(["embed", *many(photos), "-o", "-", "--manifest", tmp_path / "m.txt", "-m", ckpt], tmp_path)
    assert got.startswith(b"\x93NUMPY")
    assert result.returncode == 141, error_lines(result)
    assert error_lines(result) == []
    assert not (tmp_path / "m.txt").exists()


@pytest.mark.slow
def test_classify_to_a_pipe_closed_early_exits_141(ckpt, photos, tmp_path):
    result, got = _closed_early(["classify", *many(photos), "-f", "json", "-m", ckpt], tmp_path)
    assert got.startswith(b"[")
    assert result.returncode == 141, error_lines(result)


@pytest.mark.slow
@pytest.mark.parametrize(
    "command",
    [
        ["classify", "{img}", "-f", "csv"],
        ["classify", "{img}", "-f", "table"],
        ["inspect", "{ckpt}", "-f", "json"],
        ["inspect", "{ckpt}"],
        ["models", "-f", "json"],
        ["models"],
        ["download", "{ckpt}"],
    ],
    ids=lambda c: "-".join(a for a in c if not a.startswith("{")),
)
def test_every_command_reports_a_full_stdout_in_one_line(ckpt, photos, tmp_path, command):
    full = make_device(tmp_path / "full", FULL_DEVICE)
    args = [str(a).format(img=photos / "img00.png", ckpt=ckpt) for a in command]
    if args[0] == "classify":
        args += ["-m", str(ckpt)]
    with open(full, "wb") as stdout:
        result = bit(*args, cwd=tmp_path, stdout=stdout)
    assert_one_error_line(result, 1, "stdout", "No space left on device")
