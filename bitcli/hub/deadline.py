"""Every hub operation ends in bounded time: `BIT_HUB_TIMEOUT` seconds (default 60).

huggingface_hub bounds each socket operation, but a hub that trickles keeps a request alive
forever. `bounded` runs one operation in a daemon worker thread and raises `HubTimeout` when it
is not done in time; each 10 MB chunk a download reports starts a new period, so a steady link
finishes a large model. Public means only (the API and its `tqdm_class` hook); hf_xet runs
outside them, so the `bit` command turns it off."""

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
    """`operation()` in a worker thread, its exception raised here; HubTimeout once `deadline` passes."""
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
