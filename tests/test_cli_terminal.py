"""The command at a real terminal (a pseudo-terminal): progress on stderr only there, NO_COLOR honoured."""

from __future__ import annotations

import os
import re
import select
import subprocess
import sys

import pytest

from clihelpers import make_images

COLOUR = re.compile(r"\x1b\[[0-9;]*(3[0-7]|38;[0-9;]+|9[0-7])m")  # foreground colour codes


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    directory = tmp_path_factory.mktemp("photos") / "photos"
    make_images(directory, 3)
    return directory


def run_with_terminal_stderr(args: list[str], env_extra: dict[str, str] | None = None) -> tuple[str, str, int]:
    """Run `python -m bitcli ARGS` with stderr on a pseudo-terminal and stdout on a pipe."""
    master, replica = os.openpty()
    env = {key: value for key, value in os.environ.items() if key != "NO_COLOR"}
    env.update({"COLUMNS": "100", **(env_extra or {})})
    process = subprocess.Popen(
        [sys.executable, "-m", "bitcli", *map(str, args)], stdout=subprocess.PIPE, stderr=replica, env=env
    )
    os.close(replica)
    terminal = b""
    while True:
        ready, _, _ = select.select([master], [], [], 60)
        if not ready:
            break
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the replica side closed: the process is done
            break
        if not chunk:
            break
        terminal += chunk
    stdout = process.stdout.read()
    code = process.wait(timeout=60)
    os.close(master)
    return stdout.decode(), terminal.decode(errors="replace"), code


@pytest.mark.slow
def test_progress_bar_on_a_terminal_and_data_alone_on_stdout(ckpt, photos):
    stdout, terminal, code = run_with_terminal_stderr(["classify", photos, "-m", ckpt])
    assert code == 0
    assert "classifying" in terminal and "3/3" in terminal
    assert stdout.count("\n") == 3 and "\x1b" not in stdout  # jsonl (stdout is no terminal), no escapes


@pytest.mark.slow
def test_quiet_hides_the_progress_bar(ckpt, photos):
    stdout, terminal, code = run_with_terminal_stderr(["classify", photos, "-m", ckpt, "--quiet"])
    assert code == 0
    assert "classifying" not in terminal
    assert stdout.count("\n") == 3


@pytest.mark.slow
def test_error_lines_are_coloured_unless_no_color(ckpt, photos):
    args = ["classify", photos / "missing.jpg", "-m", ckpt, "--quiet"]
    _, coloured, code = run_with_terminal_stderr(args)
    assert code == 1 and "missing.jpg: no such file or directory" in coloured
    assert COLOUR.search(coloured)
    _, plain, code = run_with_terminal_stderr(args, {"NO_COLOR": "1"})
    assert code == 1 and "missing.jpg: no such file or directory" in plain
    assert not COLOUR.search(plain)
