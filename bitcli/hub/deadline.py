"""Every network operation ends in bounded time: `BIT_HUB_TIMEOUT` seconds (default 60).

huggingface_hub (2.x) makes its requests through one shared httpx2 client whose timeouts are
per socket read: a hub that sends a byte every few seconds keeps a request alive forever, and
its retries (with their sleeps) only add to that. bitcli therefore wraps the network backend of
that client (through `huggingface_hub.set_client_factory`, chaining any factory already set):
while a `deadline` is active in the calling thread, each connect, read and write waits at most
until the deadline, and one after it raises `HubTimeout`, which is not among the errors
huggingface_hub retries, so the whole operation ends at once. Outside a deadline the wrapper
passes everything through unchanged, so other users of huggingface_hub in the same process see
no difference.

An operation is one metadata request (`model_info`) or one file download (its HEAD and GET,
redirects included). A download may run longer than the deadline as long as it keeps moving:
every `PROGRESS_BYTES` received start a new period, so a slow but steady link finishes a
multi-gigabyte model, while a hub that trickles is cut off after one period.

The CLI routes downloads through plain HTTP (it sets `HF_HUB_DISABLE_XET=1` unless the
environment says otherwise): transfers through hf_xet run outside httpx, where this deadline
cannot reach.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
import time
from contextvars import ContextVar
from typing import Any, Iterator

try:  # huggingface_hub 2.x speaks httpx2 (over httpcore2); 1.x spoke httpx
    import httpcore2
except ImportError:  # pragma: no cover
    import httpcore as httpcore2  # type: ignore[no-redef]

from bitcli.errors import UsageError

DEFAULT_TIMEOUT_S = 60.0
TIMEOUT_ENV = "BIT_HUB_TIMEOUT"
PROGRESS_BYTES = 1 << 20  # a download that brings this much in a period gets another period


class HubTimeout(Exception):
    """The hub did not finish an operation within the deadline (not an error hf_hub retries)."""

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
    """When the current operation must end; moved on by a download that keeps receiving."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.expires = time.monotonic() + seconds
        self._received = 0

    def remaining(self) -> float:
        return self.expires - time.monotonic()

    def check(self) -> None:
        if self.remaining() <= 0:
            raise HubTimeout(self.seconds)

    def clamp(self, timeout: float | None) -> float:
        """A socket timeout that ends no later than the deadline."""
        self.check()
        remaining = self.remaining()
        return remaining if timeout is None else min(timeout, remaining)

    def received(self, count: int) -> None:
        self._received += count
        if self._received >= PROGRESS_BYTES:
            self._received = 0
            self.expires = time.monotonic() + self.seconds


_current: ContextVar[Deadline | None] = ContextVar("bitcli_hub_deadline", default=None)
_installed = False
_install_lock = threading.Lock()


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[Deadline]:
    """Bound every network operation made in this thread inside the block by `seconds`."""
    _install()
    token = _current.set(Deadline(seconds))
    try:
        yield _current.get()
    finally:
        _current.reset(token)


def _install() -> None:
    """Wrap huggingface_hub's client factory (once per process)."""
    global _installed
    if _installed:
        return
    with _install_lock:
        if _installed:
            return
        from huggingface_hub import set_client_factory
        from huggingface_hub.utils import _http

        previous = getattr(_http, "_GLOBAL_CLIENT_FACTORY", _http.default_client_factory)

        def factory() -> Any:
            return _with_deadlines(previous())

        set_client_factory(factory)
        _installed = True


def _with_deadlines(client: Any) -> Any:
    """`client` with the network backend of each of its connection pools wrapped."""
    transports = [getattr(client, "_transport", None), *(getattr(client, "_mounts", None) or {}).values()]
    for transport in transports:
        pool = getattr(transport, "_pool", None)
        backend = getattr(pool, "_network_backend", None)
        if backend is not None and not isinstance(backend, _DeadlineBackend):
            pool._network_backend = _DeadlineBackend(backend)
    return client


class _DeadlineBackend(httpcore2.NetworkBackend):
    def __init__(self, inner: httpcore2.NetworkBackend):
        self._inner = inner

    def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        limit = _current.get()
        if limit is not None:
            timeout = limit.clamp(timeout)
        stream = self._inner.connect_tcp(host, port, timeout, local_address, socket_options)
        return _DeadlineStream(stream)

    def connect_unix_socket(self, path, timeout=None, socket_options=None):
        limit = _current.get()
        if limit is not None:
            timeout = limit.clamp(timeout)
        return _DeadlineStream(self._inner.connect_unix_socket(path, timeout, socket_options))

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class _DeadlineStream(httpcore2.NetworkStream):
    """A connection whose every read and write ends by the deadline of the operation using it."""

    def __init__(self, inner: httpcore2.NetworkStream):
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        limit = _current.get()
        if limit is None:
            return self._inner.read(max_bytes, timeout)
        try:
            data = self._inner.read(max_bytes, limit.clamp(timeout))
        except httpcore2.ReadTimeout:
            limit.check()  # the deadline, not the per-read timeout, ended the wait: HubTimeout
            raise
        limit.received(len(data))
        return data

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        limit = _current.get()
        if limit is None:
            return self._inner.write(buffer, timeout)
        try:
            return self._inner.write(buffer, limit.clamp(timeout))
        except httpcore2.WriteTimeout:
            limit.check()
            raise

    def close(self) -> None:
        self._inner.close()

    def start_tls(self, ssl_context, server_hostname=None, timeout=None):
        limit = _current.get()
        if limit is not None:
            timeout = limit.clamp(timeout)
        return _DeadlineStream(self._inner.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)
