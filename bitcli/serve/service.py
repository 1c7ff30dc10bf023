"""The model side of `bit serve`: one loaded model, run on batches of uploaded files.

Uploaded files are written to a private temporary folder and go through the very classifier and
embedder the commands use (`bitcli.pipeline`), so a record is the line `bit classify --format
jsonl` writes for the same file, up to the last float bits of a different batch composition.
The record's `path` is the upload's filename; the temporary path never appears in an answer.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Hashable

from bitcli.pipeline import Classifier, Embedder, RunOptions


@dataclass(frozen=True)
class Upload:
    """One uploaded file, saved: where it lies now and the name the client gave it."""

    path: str
    name: str


class Service:
    """`run(key, uploads)` for the batcher: ("classify", top_k) or ("embed", normalize); searches
    of `indexes` (name -> opened collection, see `add_index`); `report`: the model's `bit inspect`
    report (/v1/models)."""

    def __init__(self, model: Any, *, max_batch: int, max_pixels: int | None, workers: int | None = None,
                 indexes: dict[str, Any] | None = None) -> None:
        from bitcli.inspection import build_report

        self.model = model
        self.options = RunOptions(batch_size=max_batch, max_pixels=max_pixels, workers=workers)
        self._classifiers: dict[int, Classifier] = {}
        self._embedders: dict[bool, Embedder] = {}
        self.scratch = Path(tempfile.mkdtemp(prefix="bit-serve-"))
        self._counter = 0
        self._lock = threading.Lock()
        self.labels = self.classifier(1).labels if model.config.num_labels > 0 else None
        self.indexes: dict[str, Any] = {}
        for name, index in (indexes or {}).items():
            self.add_index(name, index)
        self.report = build_report(model, self.labels)

    def close(self) -> None:
        shutil.rmtree(self.scratch, ignore_errors=True)
        for collection in self.indexes.values():
            collection.close()

    def add_index(self, name: str, index: Any) -> None:
        """Serve searches of `index` (an opened EmbeddingIndex) as `name`; its rows must come
        from this model and settings (UsageError with one line otherwise)."""
        from bitcli.collection.queries import settings_differ
        from bitcli.errors import UsageError

        differs = settings_differ(index, self.embedder(False).fingerprint())
        if differs:
            raise UsageError(f"--index {index.array_path}: made with other settings than this server's model ({differs}); serve it with the model it was made with")
        self.indexes[name] = index

    def search(self, name: str, vectors: list[Any], k: int) -> tuple[list[Any], str | None]:
        """Top-k matches of each vector (None: that query failed) in index `name`, and how they
        were found (`SearchOutcome.method`)."""
        import numpy as np

        from bitcli.collection.search import search

        ready = [v for v in vectors if v is not None]
        outcome = search(self.indexes[name], np.stack(ready), k, exact=False) if ready else None
        answers = iter(outcome.matches if outcome else [])
        return [next(answers) if v is not None else None for v in vectors], outcome.method if outcome else None

    def thumbnail(self, name: str, row: int, size: int = 256) -> bytes | None:
        """A JPEG of row `row`'s file of index `name` (the path comes from the collection, never
        from a request), or None when the file is gone or not an image."""
        from io import BytesIO

        from bitcli.decode import open_image
        from bitcli.errors import InputError

        index = self.indexes[name]
        found = index.locate(index.recorded[row])
        if found is None:
            return None
        try:
            image = open_image(found, max_pixels=self.options.max_pixels)
        except InputError:
            return None
        image.thumbnail((size, size))
        out = BytesIO()
        image.save(out, format="JPEG", quality=85)
        return out.getvalue()

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
        with self._lock:
            self._counter += 1
            number = self._counter
        path = self.scratch / f"{number:012d}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        return Upload(str(path), name)

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
            for u in uploads:
                try:
                    os.unlink(u.path)
                except OSError:
                    pass


def _renamed(result: Any, upload: Upload) -> Any:
    """The result under the upload's own name (also inside an error message, if it names the file)."""
    from dataclasses import replace

    error = result.error
    if error is not None:
        error = error.replace(upload.path, upload.name)
    return replace(result, path=upload.name, error=error)


def open_collections(paths: list[Path]) -> dict[str, Any]:
    """Each collection (`bit embed`'s OUT.npy, or OUT) opened and checked, named by its file's
    stem (photos.npy: photos); two of one name are a UsageError."""
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
