"""Every hub operation ends in bounded time: `BIT_HUB_TIMEOUT` seconds (default 60).

huggingface_hub bounds each socket operation (`timeout=` of its API calls, `etag_timeout=` of a
download's metadata request, `HF_HUB_DOWNLOAD_TIMEOUT` for each read of a download), but a hub
that sends a byte every few seconds keeps a request alive forever, and its retries only add to
that. So `bounded` runs one operation (a metadata request, or one file download) in a worker
thread and waits for it at most `BIT_HUB_TIMEOUT` seconds; when it is not done by then,
`HubTimeout` is raised in the caller and the worker is left to end on its own (a daemon thread:
the `bit` command exits without waiting for it; in a long-lived program it ends when
huggingface_hub's own socket timeouts or the server end its request).

A download may take longer than the deadline while it keeps moving: each chunk huggingface_hub
reports to its progress bar (10 MB) starts a new period, so a steady link finishes a
multi-gigabyte model, while a hub that trickles is cut off after one period.

Only public means: huggingface_hub's API and its `tqdm_class` hook. Downloads through hf_xet run
outside huggingface_hub's HTTP client; the `bit` command turns them off (`cli/process.py`).
"""

from __future__ import annotations

import math
import os
import threading
import time
from typing import Callable, TypeVar

from bitcli.errors import UsageError

DEFAULT_TIMEOUT_S = 60.0
TIMEOUT_ENV = "BIT_HUB_TIMEOUT"

T = TypeVar("T")


class HubTimeout(Exception):
    """The hub did not finish an operation within the deadline."""

    def __init__(self, seconds: float):
        super().__init__(f"no answer within {seconds:g} s ({TIMEOUT_ENV})")
        self.seconds = seconds


def hub_timeout() -> float:
    """`BIT_HUB_TIMEOUT` in seconds, as set now (default 60); anything but a positive number is a UsageError."""
    value = os.environ.get(TIMEOUT_ENV, "").strip()
    if not value:
        return DEFAULT_TIMEOUT_S
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise UsageError(f"{TIMEOUT_ENV}={value!r}: give the seconds a hub operation may take, a number above 0 (default 60)")
    return seconds


class Deadline:
    """When the current operation must end; `moved` (a download that received more) starts a new period."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self._last = time.monotonic()

    def moved(self) -> None:
        self._last = time.monotonic()

    def remaining(self) -> float:
        return self._last + self.seconds - time.monotonic()


def bounded(operation: Callable[[], T], deadline: Deadline) -> T:
    """`operation()`, run in a worker thread; HubTimeout once `deadline` passes without it ending.

    Its exception, if any, is raised here. Ctrl-C in the caller interrupts the wait.
    """
    outcome: dict[str, object] = {}
    done = threading.Event()

    def work() -> None:
        try:
            outcome["value"] = operation()
        except BaseException as error:  # handed to the caller, whatever it is
            outcome["error"] = error
        finally:
            done.set()

    threading.Thread(target=work, name="bitcli-hub", daemon=True).start()
    while not done.wait(max(deadline.remaining(), 0.0)):
        if deadline.remaining() <= 0:
            raise HubTimeout(deadline.seconds)
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["value"]  # type: ignore[return-value]
