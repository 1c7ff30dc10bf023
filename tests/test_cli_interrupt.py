"""A real `bit embed` process, interrupted (Ctrl-C) or killed mid-run, then resumed byte-identically."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from clihelpers import make_images, run

COUNT = 24
COMMON = ["--batch-size", "1"]


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    directory = tmp_path_factory.mktemp("photos") / "photos"
    make_images(directory, COUNT, bad=("bad.png",))
    return directory


@pytest.fixture(scope="module")
def full(ckpt, photos, tmp_path_factory):
    """An uninterrupted run's three files."""
    directory = tmp_path_factory.mktemp("full")
    result = run(["embed", photos, "-o", directory / "full.npy", "-m", ckpt, *COMMON])
    assert result.exit_code == 1, result.stderr  # bad.png
    return directory


def bit(*args: object) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "bitcli", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def wait_for_commits(journal, proc: subprocess.Popen, count: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if journal.exists() and journal.read_bytes().count(b"\n") >= count:
            return
        if proc.poll() is not None:
            pytest.fail(f"bit embed ended (rc {proc.returncode}) before {count} batches were committed")
        time.sleep(0.002)
    proc.kill()
    pytest.fail("no progress")


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "kill-9"])
def test_interrupted_process_resumes_to_identical_bytes(ckpt, photos, full, tmp_path, sig):
    common = ["-m", ckpt, *COMMON]
    out = tmp_path / "out.npy"
    proc = bit("embed", photos, "-o", out, *common)
    wait_for_commits(tmp_path / "out.npy.partial" / "journal.jsonl", proc, 3)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=60)
    if sig == signal.SIGINT:
        assert proc.returncode == 130, stderr
        assert b"--resume" in stderr and b"Traceback" not in stderr
    else:
        assert proc.returncode == -signal.SIGKILL
    assert not out.exists() and not (tmp_path / "out.paths.txt").exists()
    journal = (tmp_path / "out.npy.partial" / "journal.jsonl").read_text().splitlines()
    done = sum(len(json.loads(line)["rows"]) for line in journal)
    assert 2 <= done < COUNT

    resumed = run(["embed", photos, "-o", out, "--resume", *common])
    assert resumed.exit_code == 1, resumed.stderr
    assert f"resuming: {done} images" in resumed.stderr
    for suffix in (".npy", ".paths.txt", ".errors.txt"):
        assert (tmp_path / f"out{suffix}").read_bytes() == (full / f"full{suffix}").read_bytes(), suffix


@pytest.mark.slow
def test_stdout_of_the_real_process_is_complete(ckpt, photos, tmp_path):
    """The console script skips interpreter teardown; every byte must still reach the pipe."""
    proc = bit("embed", photos, "-o", "-", "--manifest", tmp_path / "rows.txt", "-m", ckpt, "-q")
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 1, stderr
    arr = np.load(io.BytesIO(stdout))
    assert arr.shape == (COUNT, 32)
    assert len((tmp_path / "rows.txt").read_text().splitlines()) == COUNT
    assert stderr.decode().splitlines() == [f"error: {photos / 'bad.png'}: not an image"]


def test_ctrl_c_while_the_command_line_is_parsed_exits_130(monkeypatch, capsys):
    """Ctrl-C that lands before the command runs (while the command line is parsed: the first
    second of a `bit search` on a loaded machine) is exit 130 and `error: interrupted`, as
    documented, not exit 1 and a blank line (what Click answers). Injected into Typer, a
    third-party library, where bitcli hands it control."""
    import typer.main

    from bitcli.cli.app import run as run_bit

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(typer.main, "get_command", interrupted)  # a command line bitcli converts itself
    code = run_bit(["models"])
    assert code == 130
    assert capsys.readouterr().err.strip() == "error: interrupted"
