"""Decode and preprocess images in a small thread pool, ahead of the model, in input order; at most
`lookahead` inputs in flight, pulled from the lazy input iterator as results are consumed."""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeoutError
from dataclasses import dataclass

import torch

from bitcli.decode import open_image
from bitcli.errors import InputError
from bitcli.inputs import InputItem
from bitcli.preprocess import ImageTooLarge, PreprocessConfig, preprocess
from bitcli.util import DEFAULT_MAX_PIXELS

# How often the consumer wakes while waiting on a worker, so Ctrl-C is handled promptly
# (a lock wait without a timeout is not interrupted by SIGINT).
_POLL_SECONDS = 0.1


@dataclass(frozen=True)
class Loaded:
    """One decoded and preprocessed input."""

    index: int
    path: str
    tensor: torch.Tensor  # float32 [3, H, W]


def image_loader(
    cfg: PreprocessConfig,
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    fast_jpeg: bool = False,
) -> Callable[[str], torch.Tensor]:
    """path -> tensor: `open_image` then `preprocess`; over `max_pixels` or out of memory: an InputError."""
    draft_size = cfg.draft_size() if fast_jpeg else None

    def load(path: str) -> torch.Tensor:
        try:
            return preprocess(open_image(path, max_pixels=max_pixels, draft_size=draft_size), cfg, max_pixels=max_pixels)
        except ImageTooLarge as error:
            raise InputError(path, str(error)) from None
        except MemoryError:  # one image's size must never sink the batch
            raise InputError(path, "not enough memory to preprocess this image") from None

    return load


def default_workers() -> int:
    """Two threads per available core, at most 8: decoding waits on I/O as well as the CPU."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(8, 2 * (cores or 1)))


def load_ordered(
    items: Iterable[InputItem | InputError],
    load_fn: Callable[[str], torch.Tensor],
    *,
    workers: int = 2,
    lookahead: int = 32,
) -> Iterator[Loaded | InputError]:
    """`load_fn` on every item in a thread pool; results and InputErrors in input order.

    Any other exception propagates. Closing the iterator (or an exception) cancels what has not
    started and shuts the pool down."""
    if workers < 1 or lookahead < 1:
        raise ValueError("workers and lookahead must be at least 1")
    source = iter(items)
    pending: deque[tuple[InputItem | InputError, Future[torch.Tensor] | None]] = deque()
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="bitcli-load")
    finished = False
    try:
        while True:
            while len(pending) < lookahead and (item := next(source, None)) is not None:
                pending.append((item, None if isinstance(item, InputError) else pool.submit(load_fn, item.path)))
            if not pending:
                break
            yield _result(*pending.popleft())
        finished = True
    finally:
        # On normal completion nothing is left to wait for; otherwise do not wait for
        # running decodes (at most `workers` of them), they finish in the background.
        pool.shutdown(wait=finished, cancel_futures=True)


def _result(item: InputItem | InputError, future: Future[torch.Tensor] | None) -> Loaded | InputError:
    if future is None:
        return item  # an InputError of the input list
    while True:
        try:
            return Loaded(index=item.index, path=item.path, tensor=future.result(timeout=_POLL_SECONDS))
        except FutureTimeoutError:
            continue
        except InputError as error:
            return error
