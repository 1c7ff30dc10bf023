"""Batching across requests: concurrent requests' images run through the model together.

Each request submits its images under a key (what the model must compute for them: classify
with top-k K, embed normalized or not). One consumer task takes the oldest image, gathers up to
`max_batch` images of the same key that arrive within `max_wait_s` of it, and runs them in one
call of `run` on a single worker thread (the model is never run by two threads at once, and the
event loop stays free to receive the next requests meanwhile). Images of another key wait for
the next round, in their order. At most `max_queue` images wait at once: past that, `submit`
raises QueueFull (the API answers 503 with Retry-After).

A request that goes away (client disconnect, cancellation) leaves futures that are skipped.
"""

from __future__ import annotations

import asyncio
import collections
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Hashable


class QueueFull(Exception):
    """More images wait than the server takes at once."""


@dataclass
class _Item:
    key: Hashable
    payload: Any
    future: asyncio.Future
    queued: float  # loop time when submitted


@dataclass
class Stats:
    """What the batcher has done: batches run, images in them, the largest batch."""

    batches: int = 0
    images: int = 0
    largest: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"batches": self.batches, "images": self.images, "largest_batch": self.largest}


class Batcher:
    """`await submit(key, payloads)` -> results, computed by `run(key, payloads)` in batches."""

    def __init__(
        self,
        run: Callable[[Hashable, list[Any]], list[Any]],
        *,
        max_batch: int,
        max_wait_s: float,
        max_queue: int,
    ) -> None:
        self._run = run
        self.max_batch, self.max_wait_s, self.max_queue = max_batch, max_wait_s, max_queue
        self._items: collections.deque[_Item] = collections.deque()
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bit-model")
        self.stats = Stats()

    def start(self) -> None:
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._consume())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._worker.shutdown(wait=True)

    @property
    def waiting(self) -> int:
        return len(self._items)

    async def submit(self, key: Hashable, payloads: list[Any]) -> list[Any]:
        """The results for `payloads`, in their order; QueueFull when the queue has no room."""
        if not payloads:
            return []
        if len(self._items) + len(payloads) > self.max_queue:
            raise QueueFull(f"{len(self._items)} images are waiting; try again shortly")
        loop = asyncio.get_running_loop()
        futures = []
        now = loop.time()
        for payload in payloads:
            future = loop.create_future()
            self._items.append(_Item(key, payload, future, now))
            futures.append(future)
        assert self._wake is not None, "Batcher.start() was not called"
        self._wake.set()
        return list(await asyncio.gather(*futures))

    async def _consume(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._wake is not None
        while True:
            while not self._items:
                self._wake.clear()
                await self._wake.wait()
            first = self._items[0]
            deadline = first.queued + self.max_wait_s
            while self._count(first.key) < self.max_batch and loop.time() < deadline:
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), max(0.0, deadline - loop.time()))
                except asyncio.TimeoutError:
                    break
            batch = self._take(first.key)
            if not batch:
                continue
            try:
                results = await loop.run_in_executor(self._worker, self._run, first.key, [i.payload for i in batch])
            except Exception as exc:  # the model failed: every request of the batch learns it
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(exc)
                continue
            self.stats.batches += 1
            self.stats.images += len(batch)
            self.stats.largest = max(self.stats.largest, len(batch))
            for item, result in zip(batch, results):
                if not item.future.done():
                    item.future.set_result(result)

    def _count(self, key: Hashable) -> int:
        return sum(1 for item in self._items if item.key == key and not item.future.done())

    def _take(self, key: Hashable) -> list[_Item]:
        """Remove and return up to max_batch live items of `key`, oldest first; drop dead ones."""
        taken: list[_Item] = []
        kept: collections.deque[_Item] = collections.deque()
        while self._items:
            item = self._items.popleft()
            if item.future.done():  # its request went away
                continue
            if item.key == key and len(taken) < self.max_batch:
                taken.append(item)
            else:
                kept.append(item)
        self._items = kept
        return taken
