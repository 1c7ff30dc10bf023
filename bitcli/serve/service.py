"""The model side of `bit serve`: one loaded model, run on batches of uploaded files.

Uploads are saved to a private temporary folder and go through the commands' own classifier and
embedder (`bitcli.pipeline`); a record's `path` is the upload's filename, never the temporary one.

Batching across requests: each request submits its images under a key (classify with top-k K,
embed normalized or not). One consumer takes the oldest image, gathers up to `max_batch` of its
key arriving within `max_wait_s`, and runs them in one call (`run`) on a single model thread;
other keys wait for the next round. Past `max_queue` waiting images `submit` raises QueueFull
(503 with Retry-After). A request that went away leaves futures that are skipped.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Hashable

from bitcli.pipeline import Classifier, Embedder, RunOptions


@dataclass(frozen=True)
class Upload:
    """One uploaded file, saved: where it lies now and the name the client gave it."""

    path: str
    name: str


@dataclass(frozen=True)
class ServeSettings:
    max_body: int = 100_000_000
    max_batch: int = 16
    max_wait_s: float = 0.01
    max_queue: int = 256
    token: str | None = None


class QueueFull(Exception):
    """More images wait than the server takes at once."""


@dataclass
class _Item:
    key: Hashable
    upload: Upload
    future: asyncio.Future
    queued: float  # loop time when submitted


class Service:
    """`await submit(key, uploads)` between `start()` and `stop()`, run in batches (`run`); searches
    of `indexes` (`add_index`); `report` (/v1/models)."""

    def __init__(self, model: Any, settings: ServeSettings, *, max_pixels: int | None, indexes: dict[str, Any] | None = None) -> None:
        from bitcli.checkpoint.describe import build_report

        self.model = model
        self.settings = settings
        self._items: collections.deque[_Item] = collections.deque()
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bit-model")
        self.stats = {"batches": 0, "images": 0, "largest_batch": 0}
        self.options = RunOptions(batch_size=self.settings.max_batch, max_pixels=max_pixels)
        self._classifiers: dict[int, Classifier] = {}
        self._embedders: dict[bool, Embedder] = {}
        self.scratch = Path(tempfile.mkdtemp(prefix="bit-serve-"))
        self.labels = self.classifier(1).labels if model.config.num_labels > 0 else None
        self.indexes: dict[str, Any] = {}
        for name, index in (indexes or {}).items():
            self.add_index(name, index)
        self.report = build_report(model, self.labels)

    def add_index(self, name: str, index: Any) -> None:
        """Serve searches of `index` as `name`; UsageError unless its rows come from this model and settings."""
        from bitcli.collection.queries import settings_differ
        from bitcli.errors import UsageError

        differs = settings_differ(index, self.embedder(False).fingerprint())
        if differs:
            raise UsageError(f"--index {index.array_path}: made with other settings than this server's model ({differs}); serve it with the model it was made with")
        self.indexes[name] = index

    def search(self, name: str, vectors: list[Any], k: int) -> tuple[list[Any], str | None]:
        """Top-k matches of each vector (None: a failed query) in index `name`, and how they were found."""
        import numpy as np

        from bitcli.collection.queries import search

        ready = [v for v in vectors if v is not None]
        outcome = search(self.indexes[name], np.stack(ready), k, exact=False) if ready else None
        answers = iter(outcome.matches if outcome else [])
        return [next(answers) if v is not None else None for v in vectors], outcome.method if outcome else None

    def thumbnail(self, name: str, row: int, size: int = 256) -> bytes | None:
        """A JPEG of row `row`'s file (its path from the collection, never a request), None when unreadable."""
        from bitcli.collection.html import thumbnail_jpeg

        index = self.indexes[name]
        found = index.locate(index.recorded[row])
        return None if found is None else thumbnail_jpeg(found, size, max_pixels=self.options.max_pixels)

    def classifier(self, top_k: int) -> Classifier:
        top_k = min(top_k, max(1, int(self.model.config.num_labels)))
        if top_k not in self._classifiers:
            self._classifiers[top_k] = Classifier(self.model, top_k=top_k, options=self.options)
        return self._classifiers[top_k]

    def embedder(self, normalize: bool) -> Embedder:
        if normalize not in self._embedders:
            self._embedders[normalize] = Embedder(self.model, normalize=normalize, options=self.options)
        return self._embedders[normalize]

    def save(self, name: str, data: bytes) -> Upload:
        """Write one upload into the scratch folder (a fresh private name; `name` is only a label)."""
        fd, path = tempfile.mkstemp(dir=self.scratch)  # private (0600), never an existing file
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        return Upload(path, name)

    def run(self, key: Hashable, uploads: list[Upload]) -> list[Any]:
        """Results for one batch (on the batcher's worker thread); the uploads are deleted after."""
        kind, value = key  # type: ignore[misc]
        try:
            paths = [u.path for u in uploads]
            if kind == "classify":
                results = list(self.classifier(int(value)).classify(paths))
            else:
                results = list(self.embedder(bool(value)).embed(paths))
            return [_renamed(r, u) for r, u in zip(results, uploads)]
        finally:
            _delete(uploads)

    # -- batching across requests -----------------------------------------------------------------

    def start(self) -> None:
        """Start taking batches (in the running event loop)."""
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._consume())

    async def stop(self) -> None:
        """Stop the batches, then remove the uploads' folder and close the collections."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._worker.shutdown(wait=True)
        shutil.rmtree(self.scratch, ignore_errors=True)
        for collection in self.indexes.values():
            collection.close()

    @property
    def waiting(self) -> int:
        return len(self._items)

    async def submit(self, key: Hashable, uploads: list[Upload]) -> list[Any]:
        """The results for `uploads`, in their order; QueueFull (the uploads deleted) when the queue has no room."""
        if not uploads:
            return []
        if len(self._items) + len(uploads) > self.settings.max_queue:
            _delete(uploads)
            raise QueueFull(f"{len(self._items)} images are waiting; try again shortly")
        loop = asyncio.get_running_loop()
        futures = []
        now = loop.time()
        for upload in uploads:
            future = loop.create_future()
            self._items.append(_Item(key, upload, future, now))
            futures.append(future)
        assert self._wake is not None, "Service.start() was not called"
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
            deadline = first.queued + self.settings.max_wait_s
            while self._count(first.key) < self.settings.max_batch and loop.time() < deadline:
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), max(0.0, deadline - loop.time()))
                except asyncio.TimeoutError:
                    break
            batch = self._take(first.key)
            if not batch:
                continue
            try:
                results = await loop.run_in_executor(self._worker, self.run, first.key, [i.upload for i in batch])
            except Exception as exc:  # the model failed: every request of the batch learns it
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(exc)
                continue
            self.stats["batches"] += 1
            self.stats["images"] += len(batch)
            self.stats["largest_batch"] = max(self.stats["largest_batch"], len(batch))
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
            if item.key == key and len(taken) < self.settings.max_batch:
                taken.append(item)
            else:
                kept.append(item)
        self._items = kept
        return taken


def _delete(uploads: list[Upload]) -> None:
    for upload in uploads:
        with contextlib.suppress(OSError):
            os.unlink(upload.path)


def _renamed(result: Any, upload: Upload) -> Any:
    """The result under the upload's own name (also inside an error message, if it names the file)."""
    from dataclasses import replace

    error = result.error
    if error is not None:
        error = error.replace(upload.path, upload.name)
    return replace(result, path=upload.name, error=error)


def open_collections(paths: list[Path]) -> dict[str, Any]:
    """Each collection opened and checked, named by its file's stem; two of one name are a UsageError."""
    from bitcli.collection import open_index
    from bitcli.errors import UsageError
    from bitcli.util import npy_name

    opened: dict[str, Any] = {}
    for path in paths:
        collection = open_index(npy_name(path))
        name = collection.array_path.stem
        if name in opened:
            raise UsageError(f"--index {path}: another collection is already named {name!r}; rename one of the files")
        opened[name] = collection
    return opened
