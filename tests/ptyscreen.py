"""Run the real `bit` in a pseudo-terminal and read the screen a person would see.

`run_on_screen` starts `python -m bitcli ARGS` with stdin, stdout and stderr on the replica side
of a pty (TIOCSWINSZ, COLUMNS and LINES set to the size asked for, TERM=xterm-256color), as the
session leader with the pty as its controlling terminal, so a Ctrl-C typed into the terminal
(`\\x03` written to the master side) reaches it the way a keyboard's would: the line
discipline echoes `^C` and sends SIGINT to the foreground process group. Everything the program
writes is fed to a `pyte` terminal emulator of the same size, which keeps the lines that scroll
off the top, and a snapshot of the visible screen is kept after every read ("frames"), so a
test can also check what was on the screen while the command ran, not only at the end.
"""

from __future__ import annotations

import fcntl
import os
import re
import select
import struct
import subprocess
import sys
import termios
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pyte

# Environment variables that change how rich or the terminal behave; a test sets them itself.
_TERMINAL_VARIABLES = ("NO_COLOR", "FORCE_COLOR", "COLORTERM", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "TERM", "COLUMNS", "LINES")


@dataclass
class ScreenRun:
    """What a terminal showed: every line (scrolled-off ones first), snapshots, colour, exit code."""

    lines: list[str]  # the final screen, history included, right-stripped, trailing blank lines dropped
    frames: list[list[str]]  # the visible screen after each read, in order
    coloured: bool  # whether any character ever had a foreground or background colour
    exit_code: int
    interrupt_frame: int | None = None  # index of the frame after which Ctrl-C was typed
    stdout: bytes | None = None  # when stdout went to a file instead of the terminal
    raw: bytes = field(default=b"", repr=False)

    @property
    def interrupted(self) -> bool:
        return self.interrupt_frame is not None

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


def _line_text(line, columns: int) -> str:
    return "".join(line[x].data for x in range(columns)).rstrip()


def _line_coloured(line, columns: int) -> bool:
    return any(line[x].fg != "default" or line[x].bg != "default" for x in range(columns))


class _Terminal:
    """A pyte screen of `columns` x `rows` that remembers scrolled-off lines."""

    def __init__(self, columns: int, rows: int):
        self.columns = columns
        self.screen = pyte.HistoryScreen(columns, rows, history=10_000, ratio=0.5)
        self.stream = pyte.ByteStream(self.screen)
        self.coloured = False

    def feed(self, data: bytes) -> None:
        self.stream.feed(data)
        if not self.coloured:
            self.coloured = any(_line_coloured(self.screen.buffer[y], self.columns) for y in range(self.screen.lines))

    def visible(self) -> list[str]:
        return [_line_text(self.screen.buffer[y], self.columns) for y in range(self.screen.lines)]

    def all_lines(self) -> list[str]:
        lines = [_line_text(line, self.columns) for line in self.screen.history.top] + self.visible()
        while lines and not lines[-1]:
            lines.pop()
        return lines


def _environment(columns: int, rows: int, extra: dict[str, str] | None) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in _TERMINAL_VARIABLES}
    # This checkout's bitcli, whatever the environment's install points at (as relhelpers.bit_env).
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    env.update({"TERM": "xterm-256color", "COLUMNS": str(columns), "LINES": str(rows)})
    env.update(extra or {})
    return env


def _own_the_terminal() -> None:
    """In the child, after setsid(): make stdin (the pty) the controlling terminal."""
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def run_on_screen(
    args: list[object],
    *,
    columns: int = 80,
    rows: int = 30,
    cwd: Path | str | None = None,
    env: dict[str, str] | None = None,
    interrupt_when: Callable[[list[str]], bool] | None = None,
    stdout_path: Path | None = None,
    timeout: float = 120.0,
) -> ScreenRun:
    """Run `python -m bitcli ARGS` on a `columns` x `rows` terminal and return what it showed.

    interrupt_when: called with the visible lines after every read; the first time it returns
    True, Ctrl-C is typed. stdout_path: send stdout to this file instead of the terminal (the
    mixed case: data to a file, messages and progress to the terminal).
    """
    master, replica = os.openpty()
    fcntl.ioctl(replica, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    stdout_file = open(stdout_path, "wb") if stdout_path is not None else None
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "bitcli", *map(str, args)],
            stdin=replica,
            stdout=stdout_file if stdout_file is not None else replica,
            stderr=replica,
            cwd=cwd,
            env=_environment(columns, rows, env),
            start_new_session=True,
            preexec_fn=_own_the_terminal,
        )
    finally:
        os.close(replica)
        if stdout_file is not None:
            stdout_file.close()
    terminal = _Terminal(columns, rows)
    frames: list[list[str]] = []
    raw = bytearray()
    interrupt_frame = None
    deadline = time.monotonic() + timeout
    try:
        while True:
            if time.monotonic() > deadline:
                raise AssertionError(f"bit {' '.join(map(str, args))} did not finish in {timeout} s:\n" + "\n".join(terminal.all_lines()))
            ready, _, _ = select.select([master], [], [], 1.0)
            if not ready:
                continue
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: every replica descriptor is closed, the program is gone
                break
            if not chunk:
                break
            raw += chunk
            terminal.feed(chunk)
            frames.append(terminal.visible())
            if interrupt_when is not None and interrupt_frame is None and interrupt_when(frames[-1]):
                os.write(master, b"\x03")
                interrupt_frame = len(frames) - 1
        exit_code = process.wait(timeout=max(deadline - time.monotonic(), 1.0))
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(master)
    stdout = Path(stdout_path).read_bytes() if stdout_path is not None else None
    return ScreenRun(terminal.all_lines(), frames, terminal.coloured, exit_code, interrupt_frame, stdout, bytes(raw))


# -- what the tests look for on a screen ------------------------------------------------------------

BAR_WORD = re.compile(r"\b(classifying|embedding)\b")
# What a progress line may hold: its description, bar glyphs, counts, percentages, rates and times,
# and `^C`: the terminal itself echoes the key at the cursor, which sits at the end of the bar.
_BAR_TOKEN = re.compile(r"classifying|embedding|\d+(\.\d+)? ?(img/s|s)\b|eta|elapsed|\^C|[━╸╺─•\s]|[\d:./%-]")
SUMMARY = re.compile(r"(?P<done>\d+) images?, (?P<failed>\d+) failed, [\d.]+ s, [\d.]+ img/s")


def bar_lines(lines: list[str]) -> list[str]:
    return [line for line in lines if BAR_WORD.search(line)]


def collisions(frames: list[list[str]]) -> list[str]:
    """Lines, in any frame, that hold progress-bar text and anything else (output, messages)."""
    return sorted({line for frame in frames for line in bar_lines(frame) if _BAR_TOKEN.sub("", line)})


def cells(line: str) -> list[str]:
    return [cell.strip() for cell in re.split(r"[│┃]", line)]


def header_rows(lines: list[str], names: list[str]) -> list[int]:
    """Indices of lines whose first cells are exactly `names` (a table header, unbroken)."""
    return [i for i, line in enumerate(lines) if cells(line)[: len(names)] == names]
