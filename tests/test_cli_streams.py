"""A real `bit` process with an unusual stdout: a closed pipe, no stdout at all, a full disk."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from clihelpers import make_images


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    return make_images(tmp_path_factory.mktemp("photos"), 1)[0]


def bit(args: list[object], stdout: int, cwd: object = None, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "100"}
    return subprocess.run(
        [sys.executable, "-m", "bitcli", *map(str, args)], stdout=stdout, stderr=subprocess.PIPE,
        text=True, env=env, cwd=cwd, timeout=120, **kw,
    )


def into_a_closed_pipe(args: list) -> subprocess.CompletedProcess:
    """`bit ARGS` writing into a pipe whose reader is gone before the first write: EPIPE, deterministically."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return bit(args, stdout=write_end)
    finally:
        os.close(write_end)


@pytest.mark.slow
@pytest.mark.parametrize("args", [["models"], ["classify", "-f", "table"]])
def test_table_into_a_closed_pipe_exits_141(ckpt, photo, args):
    if args[0] == "classify":
        args = [*args, photo, "-m", ckpt]
    proc = into_a_closed_pipe(args)
    assert proc.returncode == 141, proc.stderr
    assert proc.stderr == ""


@pytest.mark.parametrize("args", [["--version"], ["--help"], ["classify", "--help"], ["search", "-h"]])
def test_version_and_help_into_a_closed_pipe_exit_141(args):
    """`bit --help | head -1`: Click's and rich's own answers to EPIPE are exit 1, docs/usage.md says 141."""
    proc = into_a_closed_pipe(args)
    assert proc.returncode == 141, proc.stderr
    assert proc.stderr == ""


@pytest.mark.slow
def test_no_stdout_at_all_is_not_a_traceback(ckpt, photo, tmp_path):
    proc = bit(["embed", photo, "-o", "o.npy", "-m", ckpt], stdout=subprocess.DEVNULL, cwd=tmp_path,
               preexec_fn=lambda: os.close(1))
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert (tmp_path / "o.npy").exists()


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_full_disk_on_stdout_is_one_line(ckpt, photo):
    with open("/dev/full", "w") as full:
        proc = bit(["classify", photo, "-m", ckpt, "-f", "jsonl"], stdout=full)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == ["error: cannot write to stdout (No space left on device)"]


@pytest.mark.slow
def test_classify_with_no_stdout_is_a_usage_error(ckpt, photo, tmp_path):
    proc = bit(["classify", photo, "-m", ckpt], stdout=subprocess.DEVNULL, cwd=tmp_path,
               preexec_fn=lambda: os.close(1))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "error: stdout is closed: there is nowhere to write the predictions; redirect it to a file"
    ]


@pytest.mark.parametrize("fmt", ["table", "json"])
def test_models_with_no_stdout_is_a_usage_error(fmt, tmp_path):
    """`bit models >&-`: one line and exit 2, as every other command that writes a report."""
    proc = bit(["models", "-f", fmt], stdout=subprocess.DEVNULL, cwd=tmp_path, preexec_fn=lambda: os.close(1))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "error: stdout is closed: there is nowhere to write the models; redirect it to a file"
    ]
