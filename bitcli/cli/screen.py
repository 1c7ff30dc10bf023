"""The terminal while a command runs: a progress bar (anything printed meanwhile goes inside
`bar.paused()`), erased at the end for the summary line (`6 images, 1 failed, 2.3 s, 2.6 img/s`)."""

from __future__ import annotations

import contextlib
import sys
import time
from typing import Any, Iterator

from bitcli.util import held_interrupt


class Bar:
    """Progress over `total` items on the stderr `console` (`show=False`: counts and times only);
    `done`: where it starts; `info`: a column for a command's own figures (`advance(n, info)`)."""

    def __init__(self, console: Any, total: int, what: str, *, show: bool, unit: str = "img/s", info: bool = False, done: int = 0):
        self.total, self.unit = total, unit
        self.done = self.first = done
        self.started = time.monotonic()
        self._progress = progress_display(console, info=info) if show else None
        fields = {"rate": "", "eta": "", **({"info": ""} if info else {})}
        self._task = self._progress.add_task(what, total=total, completed=done, **fields) if self._progress else None

    def __enter__(self) -> Bar:
        self.started = time.monotonic()
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()  # transient: the bar's line is erased, the cursor at its start

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def advance(self, count: int, info: str | None = None) -> None:
        """`count` more items are done (`info`: the info column's new text)."""
        self.done += count
        if self._progress is None:
            return
        rate, eta = rate_and_eta(self.done - self.first, self.total - self.first, self.elapsed, self.unit)
        self._progress.update(self._task, advance=count, rate=rate, eta=eta, **({} if info is None else {"info": info}))

    def describe(self, what: str) -> None:
        """A new label before the bar (`bit embed --engine ray`: shards done)."""
        if self._progress is not None:
            self._progress.update(self._task, description=what)

    @contextlib.contextmanager
    def paused(self, done: int = 0, *, screen: bool = True) -> Iterator[None]:
        """Erase the bar while the caller writes, then count `done` more and redraw it below; Ctrl-C
        waits for the block. `screen=False`: the block writes nothing to the terminal; the bar stays."""
        live = self._progress is not None and screen
        with held_interrupt():
            if live:
                self._progress.stop()
            yield
            _flush()
            self.advance(done)
            if live:
                self._progress.start()


def progress_display(console: Any, *, info: bool = False) -> Any:
    """Every bar's columns: `what ━━━━╺━━━ 3/6 12.5 img/s eta 0:07 [info]` (no empty info column)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TextColumn("{task.fields[eta]}"),
        *([TextColumn("{task.fields[info]}")] if info else []),
        console=console,
        transient=True,
        # Data written to sys.stdout must stay on stdout; rich would send it to the stderr console.
        redirect_stdout=False,
        redirect_stderr=True,  # a stray warning on stderr goes above the bar, not through it
        refresh_per_second=4,
    )


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (AttributeError, ValueError):
            pass


# -- the closing line ------------------------------------------------------------------------------


def summary_text(done: int, failed: int, seconds: float, total: int | None = None) -> str:
    """'6 images, 1 failed, 2.3 s, 2.6 img/s'; interrupted runs: '8 of 50 images, ...'."""
    noun = "image" if (total if total is not None else done) == 1 else "images"
    count = f"{done} of {total} {noun}" if total is not None and total != done else f"{done} {noun}"
    rate = done / seconds if seconds > 0 else 0.0
    return f"{count}, {failed} failed, {duration(seconds)}, {rate_text(rate)} img/s"


def duration(seconds: float) -> str:
    """'2.3 s' below a minute, then '3 min 05 s', then '1 h 02 min'."""
    if seconds < 59.95:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def clock(seconds: float) -> str:
    """An ETA as 0:07 or 1:02:03."""
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def rate_and_eta(done: float, total: float, elapsed: float, unit: str) -> tuple[str, str]:
    """('12.5 img/s', 'eta 0:07') for `done` of `total` in `elapsed` seconds; ('', '') before any rate."""
    rate = done / elapsed if elapsed > 0 else 0.0
    if rate <= 0:
        return "", ""
    return f"{rate_text(rate)} {unit}", f"eta {clock(max(total - done, 0) / rate)}"


def rate_text(rate: float) -> str:
    return f"{rate:.0f}" if rate >= 99.95 else f"{rate:.1f}"
