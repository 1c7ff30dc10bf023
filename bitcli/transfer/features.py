"""Pooled features for the linear probe, from the `bit embed` engine, cached on disk.

The cache is a folder of collections: in bitcli's one cache folder (`util.cache_dir()`), under
`features/`, one folder per settings record, each chunk `chunk-*.npy` a collection the embed
store wrote (array, manifest, sidecar with each row's file identity). A second run over the same
images with other hyper-parameters (another `--shots`, `--seed`, `--val-split`) reads the
vectors instead of running the network again.

Model key: the collection's settings record (`store.settings.EmbedSettings`: model reference,
commit, the weights' content digest, so retraining into the same folder invalidates it,
preprocessing, precision, pixel limit, JPEG draft decoding); a chunk is used only when its
header's settings show no difference (`EmbedSettings.diff`). Left out, as in `bit embed`: the
batch size, device and convolution path, which change features only in the last bits of float32.
A row is found by its file: the resolved path, size and modification time, as `--update` does;
an edited image gets a new row. Failed images are not cached (they are decoded again, and fail
fast). Chunks are published by the store, so an interrupted run leaves no half rows;
concurrent runs at worst both compute the same rows.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bitcli.errors import BitError
from bitcli.inputs import InputItem, path_problem
from bitcli.store.metadata import FileIdentity, identify, read_file_rows
from bitcli.store.paths import EmbedPaths
from bitcli.store.settings import EmbedSettings
from bitcli.store.writer import EmbedWriter

CHUNK_PREFIX = "chunk-"
_MERGE_ABOVE = 16  # chunks: merged into one when a folder holds more
Key = tuple[str, int, int]  # a file: resolved path, size, mtime_ns


def default_cache_dir() -> Path:
    from bitcli.util import cache_dir

    return cache_dir() / "features"


@dataclass
class Features:
    """Rows for the images that could be read; `failed` lists the others with the reason."""

    vectors: np.ndarray  # float32 [N, D]
    rows: list[int]  # rows[i]: the index (in the requested paths) of vectors[i]
    failed: list[tuple[str, str]]  # (path, reason)
    cached: int  # how many rows came from the cache


def file_key(path: str) -> Key | None:
    """The file's key, or None when it cannot be stat'ed (or cannot be a manifest line)."""
    try:
        identity = identify(path)
    except OSError:
        return None
    real = os.path.realpath(path)
    return None if path_problem(real) else (real, identity.size, identity.mtime_ns)


class FeatureCache:
    """One model's cached vectors: a folder of collections (`chunk-*.npy`)."""

    def __init__(self, root: Path, fingerprint: dict[str, Any], dim: int):
        self.settings = EmbedSettings.from_fingerprint(fingerprint)
        digest = hashlib.sha256(json.dumps(self.settings.to_json(), sort_keys=True).encode()).hexdigest()
        self.dir = Path(root) / digest[:24]
        self.fingerprint, self.dim = fingerprint, dim

    def load(self) -> dict[Key, np.ndarray]:
        from bitcli.collection.index import open_index

        table: dict[Key, np.ndarray] = {}
        for chunk in self._chunks():
            try:
                index = open_index(chunk, allow_empty=True)
                try:
                    if index.meta is None or index.meta.settings.diff(self.settings):
                        continue  # made with other settings: not these features
                    rows = read_file_rows(index.meta_path, index.meta)
                    vectors = np.array(index.vectors, dtype=np.float32)
                finally:
                    index.close()
            except (BitError, OSError, ValueError):
                continue  # a damaged chunk is only a cache miss
            table.update(((p, i.size, i.mtime_ns), v) for (p, i), v in zip(rows, vectors) if i is not None)
        return table

    def add(self, keys: list[Key], vectors: np.ndarray) -> None:
        """A new chunk; more than `_MERGE_ABOVE` of them are merged into one."""
        self._write(keys, vectors)
        old = self._chunks()
        if len(old) > _MERGE_ABOVE:
            table = self.load()
            self._write(list(table), np.stack(list(table.values())))
            for chunk in old:
                for path in EmbedPaths.for_output(chunk).set_files().values():
                    path.unlink(missing_ok=True)

    def _write(self, keys: list[Key], vectors: np.ndarray) -> None:
        paths = EmbedPaths.for_output(self.dir / f"{CHUNK_PREFIX}{uuid.uuid4().hex}.npy")
        with EmbedWriter(paths, dim=self.dim, fingerprint=self.fingerprint) as writer:
            writer.commit([k[0] for k in keys], vectors, (), [FileIdentity(k[1], k[2]) for k in keys])
            writer.finish()

    def _chunks(self) -> list[Path]:
        if not self.dir.is_dir():
            return []
        return sorted(p for p in self.dir.iterdir() if p.name.startswith(CHUNK_PREFIX) and p.suffix == ".npy")


def model_key(embedder: Any) -> dict[str, Any]:
    """The cache key of an `bitcli.Embedder`: its settings record (see the module docstring)."""
    return EmbedSettings.from_fingerprint(embedder.fingerprint()).to_json()


def extract(
    paths: Sequence[str],
    embedder: Any,
    *,
    cache_dir: Path | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Features:
    """Pooled features of `paths` with a `bitcli.Embedder`, reading and filling the cache.

    `cache_dir=None`: the default cache; pass a folder to use another. `progress(done, total)`
    is called as images are embedded (cached rows count as done at once).
    """
    cache = FeatureCache(cache_dir or default_cache_dir(), embedder.fingerprint(), embedder.feature_dim)
    table = cache.load()
    keys = [file_key(p) for p in paths]
    vectors: dict[int, np.ndarray] = {i: table[k] for i, k in enumerate(keys) if k is not None and k in table}
    cached = len(vectors)
    todo = [i for i in range(len(paths)) if i not in vectors]
    failed: dict[int, str] = {}
    done = cached
    if progress is not None:
        progress(done, len(paths))
    new_keys, new_rows = [], []
    # InputItems, not strings: a list entry is one file, never expanded as a folder or a glob.
    items = [InputItem(index=n, path=paths[i]) for n, i in enumerate(todo)]
    try:
        # Results come back in input order, one per input (failures in their place).
        for index, result in zip(todo, embedder.embed(items)):
            if result.ok:
                vectors[index] = result.vector
                if keys[index] is not None:
                    new_keys.append(keys[index])
                    new_rows.append(result.vector)
            else:
                failed[index] = str(result.error)
            done += 1
            if progress is not None:
                progress(done, len(paths))
            if len(new_keys) >= 4096:  # bound what an interruption loses
                cache.add(new_keys, np.stack(new_rows))
                new_keys, new_rows = [], []
    finally:
        if new_keys:
            cache.add(new_keys, np.stack(new_rows))
    rows = sorted(vectors)
    dim = embedder.feature_dim
    matrix = np.stack([vectors[i] for i in rows]).astype(np.float32) if rows else np.zeros((0, dim), np.float32)
    return Features(matrix, rows, [(paths[i], failed[i]) for i in sorted(failed)], cached)
