"""Pooled features for the linear probe, from the `bit embed` engine, cached on disk.

The cache lives in bitcli's one cache folder (`$BITCLI_CACHE_DIR`, else `$XDG_CACHE_HOME/bitcli`,
else `~/.cache/bitcli`), under `features/`, one folder per model key, holding chunk files of
(file key, vector) rows.
A second run over the same images with other hyper-parameters (another `--shots`, `--seed`,
`--val-split`) reads the vectors instead of running the network again.

Model key: the collection's settings record (`store.settings.EmbedSettings`: model reference,
commit, the weights' content digest, so retraining into the same folder invalidates it,
preprocessing, precision, pixel limit, JPEG draft decoding), as `bit embed` records it. Left out,
as there: the batch size, device and convolution path, which change features only in the last
bits of float32 (well below anything a linear classifier resolves).
File key: the absolute path, size and modification time (nanoseconds) of each image; an edited
image gets a new key. Failed images are not cached (they are decoded again, and fail fast).
Chunks are written with the store's atomic writer (temporary file, fsync, rename), so an
interrupted run leaves no half rows; concurrent runs at worst both compute the same rows.
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

from bitcli.inputs import InputItem
from bitcli.store.settings import EmbedSettings
from bitcli.util import write_atomic

CHUNK_PREFIX = "chunk-"
_MERGE_ABOVE = 16  # chunks: merged into one when a folder holds more


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


def file_key(path: str) -> str | None:
    """sha256 of (absolute path, size, mtime_ns), or None when the file cannot be stat'ed."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    text = f"{os.path.abspath(path)}\0{info.st_size}\0{info.st_mtime_ns}"
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()


class FeatureCache:
    """One model's cached vectors: a folder of chunk files (keys [N] and vectors [N, D])."""

    def __init__(self, root: Path, model_key: dict[str, Any]):
        digest = hashlib.sha256(json.dumps(model_key, sort_keys=True, default=str).encode()).hexdigest()
        self.dir = Path(root) / digest[:24]
        self.model_key = model_key

    def load(self) -> dict[str, np.ndarray]:
        table: dict[str, np.ndarray] = {}
        for chunk in self._chunks():
            try:
                with np.load(chunk, allow_pickle=False) as data:
                    table.update(zip(data["keys"].tolist(), data["vectors"]))
            except (OSError, ValueError, KeyError):
                continue  # a damaged chunk is only a cache miss
        return table

    def add(self, keys: list[str], vectors: np.ndarray) -> None:
        if not keys:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        info = self.dir / "model.json"
        if not info.exists():
            write_atomic(info, json.dumps(self.model_key, indent=2, default=str).encode())
        arrays = {"keys": np.array(keys), "vectors": np.asarray(vectors, dtype=np.float32)}
        write_atomic(self.dir / f"{CHUNK_PREFIX}{uuid.uuid4().hex}.npz", lambda f: np.savez(f, **arrays))
        if len(self._chunks()) > _MERGE_ABOVE:
            self._merge()

    def _chunks(self) -> list[Path]:
        if not self.dir.is_dir():
            return []
        return sorted(p for p in self.dir.iterdir() if p.name.startswith(CHUNK_PREFIX) and p.suffix == ".npz")

    def _merge(self) -> None:
        old = self._chunks()
        table = self.load()
        keys = list(table)
        arrays = {"keys": np.array(keys), "vectors": np.stack([table[k] for k in keys])}
        write_atomic(self.dir / f"{CHUNK_PREFIX}{uuid.uuid4().hex}.npz", lambda f: np.savez(f, **arrays))
        for chunk in old:
            chunk.unlink(missing_ok=True)


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
    cache = FeatureCache(cache_dir or default_cache_dir(), model_key(embedder))
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
