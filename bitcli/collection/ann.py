"""Optional approximate index (faiss, `pip install 'bitcli[search]'`) beside the `.npy`.

    OUT.ann.faiss    a faiss IVF index of 4-bit product-quantized unit-length rows
                     (IVF{nlist},PQ{m}x4fs: "fast scan"), inner product (= cosine)
    OUT.ann.json     what it was built from: rows, dim, the array's size and mtime, the
                     .faiss file's size and SHA-256, parameters

The distances are rough, so the best `max(1000, 10 x (k + 1))` candidates are re-scored
exactly: every score is the exact cosine, only which rows make the top k can differ.
`queries.search` uses the index when fresh; a stale or damaged one is ignored with a notice.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from bitcli.collection.index import EmbeddingIndex
from bitcli.collection.exact import Match, check_k, to_matches, unit_rows
from bitcli.errors import UsageError
from bitcli.util import beside, check_replaceable, open_regular, read_capped, sha256_file, write_atomic

FORMAT = "bitcli.ann"
FORMAT_VERSION = 1
MIN_ROWS = 10_000  # below this exact search takes milliseconds, and the quantizers lack training rows
NPROBE = 32
MIN_CANDIDATES = 1000  # re-scored exactly per query, at least (4-bit codes cannot order near-ties)
RERANK = 10
MAX_NLIST = 1024
_KMEANS_ITERATIONS = 10  # of the coarse quantizer: enough to route queries; re-scoring does the rest
_ADD_ROWS = 1 << 12  # rows normalized (in float64) and added at a time: 64 MB at D = 2048
INFO_MAX_BYTES = 1 << 20  # OUT.ann.json is a few hundred bytes
INSTALL_HINT = "approximate search needs faiss: pip install 'bitcli[search]' (or pip install faiss-cpu)"


@dataclass(frozen=True)
class AnnPaths:
    index: Path
    info: Path

    @classmethod
    def for_array(cls, array_path: Path) -> "AnnPaths":
        return cls(index=beside(array_path, ".ann.faiss"), info=beside(array_path, ".ann.json"))


@dataclass
class AnnIndex:
    """A loaded approximate index; `search` re-scores its candidates exactly."""

    faiss_index: Any
    info: dict[str, Any]

    @property
    def name(self) -> str:
        return f"faiss {self.info['factory']}, nprobe {self.info['nprobe']}"

    def search(self, index: EmbeddingIndex, queries: np.ndarray, k: int, *, exclude: Sequence[int | None] | None = None) -> list[list[Match]]:
        check_k(k)
        unit = unit_rows(queries)
        exclude = list(exclude) if exclude is not None else [None] * len(unit)
        self.faiss_index.nprobe = self.info["nprobe"]
        _, candidates = self.faiss_index.search(unit, min(index.rows, max(MIN_CANDIDATES, RERANK * (k + 1))))
        results = []
        for j, found in enumerate(candidates):
            rows = np.unique(found[(found >= 0) & (found < index.rows)])  # a damaged index: ids out of range
            results.append(to_matches(index, queries[j], rows, k, exclude[j]))
        return results


def build(index: EmbeddingIndex, *, progress: Callable[[int], None] | None = None) -> AnnIndex:
    """Train and fill the index over every row, save it beside the array atomically."""
    try:
        import faiss
    except ImportError as exc:
        raise UsageError(INSTALL_HINT) from exc
    if index.rows < MIN_ROWS:
        raise UsageError(f"{index.array_path} has {index.rows} rows; an approximate index needs at least {MIN_ROWS} (exact search is fast enough)")
    paths = AnnPaths.for_array(index.array_path)
    for path, ours in ((paths.index, _is_our_faiss), (paths.info, _is_our_info)):
        if check_replaceable(path) and not ours(path):  # before the work: only files bitcli wrote are replaced
            raise UsageError(f"{path} exists and was not written by bit search --build-index; move or remove it, then build again")
    started = time.perf_counter()
    # About sqrt(rows) / 4 lists, a power of two (fast scan makes long lists cheap), with the 39
    # training rows per list that k-means needs.
    nlist = 2 ** round(math.log2(max(1.0, math.sqrt(index.rows) / 4)))
    nlist = int(max(1, min(nlist, index.rows // 39, MAX_NLIST)))
    factory = f"IVF{nlist},{_codes(index.dim)}"
    ann = faiss.index_factory(index.dim, factory, faiss.METRIC_INNER_PRODUCT)
    faiss.extract_index_ivf(ann).cp.niter = _KMEANS_ITERATIONS
    sample = np.random.default_rng(0).choice(index.rows, size=min(index.rows, 40 * nlist), replace=False)
    ann.train(unit_rows(index.take(np.sort(sample))))  # 40 rows per list (faiss asks for 39)
    for first, block in index.iter_blocks(_ADD_ROWS):
        ann.add(unit_rows(block))
        if progress is not None:
            progress(len(block))
    info = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "factory": factory,
        "metric": "inner_product of unit-length rows (cosine)",
        "nprobe": NPROBE,
        "rows": index.rows,
        "dim": index.dim,
        **_array_identity(index.array_path),
        "build_seconds": round(time.perf_counter() - started, 3),
    }
    write_atomic(paths.index, lambda fh: faiss.write_index(ann, fh.name))  # faiss writes to a path
    info.update(_file_identity(paths.index))
    write_atomic(paths.info, (json.dumps(info, indent=1) + "\n").encode("ascii"))
    return AnnIndex(ann, info)


def load_fresh(index: EmbeddingIndex) -> tuple[AnnIndex | None, str | None]:
    """(the approximate index, None) when one is present and fresh; else (None, why not or None)."""
    paths = AnnPaths.for_array(index.array_path)
    if not paths.info.exists():
        return None, None
    try:
        info = json.loads(read_capped(paths.info, INFO_MAX_BYTES))
    except (OSError, ValueError):
        return None, f"{paths.info} is unreadable; exact search used (rebuild the approximate index)"
    expected = {"rows": index.rows, "dim": index.dim, **_array_identity(index.array_path)}
    if not isinstance(info, dict) or info.get("format") != FORMAT or not {"factory", "nprobe"} <= set(info):
        return None, f"{paths.info} is not an approximate index description; exact search used (rebuild it)"
    if any(info.get(k) != v for k, v in expected.items()):
        return None, f"{paths.index} was built for an earlier {index.array_path.name}; exact search used (rebuild it)"
    try:
        import faiss
    except ImportError:
        return None, f"{paths.index} is present but faiss is not installed; exact search used ({INSTALL_HINT})"
    damaged = f"{paths.index} is damaged (it does not match {paths.info.name}); exact search used (rebuild it)"
    if "index_sha256" in info:  # indexes built before the digest was recorded skip this check
        try:
            if _file_identity(paths.index) != {k: info.get(k) for k in ("index_size", "index_sha256")}:
                return None, damaged
        except OSError as exc:
            return None, f"{paths.index} cannot be read ({exc.strerror or exc}); exact search used"
    try:
        loaded = faiss.read_index(str(paths.index))
    except RuntimeError as exc:
        return None, f"{paths.index} cannot be read ({str(exc).strip().splitlines()[-1]}); exact search used"
    if getattr(loaded, "ntotal", None) != index.rows or getattr(loaded, "d", None) != index.dim:
        return None, damaged
    return AnnIndex(loaded, info), None


def recall_at_k(exact: list[list[Match]], approximate: list[list[Match]]) -> float:
    """Mean over queries of |approximate top-k rows ∩ exact top-k rows| / |exact top-k|."""
    shares = [len({m.row for m in a} & {m.row for m in e}) / len(e) for e, a in zip(exact, approximate) if e]
    return float(np.mean(shares)) if shares else 1.0


def _codes(dim: int) -> str:
    """128 4-bit sub-quantizers, or D/2 for smaller D: an even count that divides D, else SQ8."""
    for m in range(min(128, dim // 2), dim + 1):
        if m >= 2 and m % 2 == 0 and dim % m == 0:
            return f"PQ{m}x4fs"
    return "SQ8"


def _is_our_faiss(path: Path) -> bool:
    """What `build` writes: a faiss file that starts with the fourcc of one of `_codes`' kinds
    (IVF with a fast-scan product quantizer, or with SQ8)."""
    try:
        with open_regular(path) as fh:
            return fh.read(4) in (b"IwPf", b"IwSq")
    except OSError:
        return False


def _is_our_info(path: Path) -> bool:
    try:
        return json.loads(read_capped(path, INFO_MAX_BYTES)).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):  # unreadable, too large, not JSON, not an object
        return False


def _file_identity(path: Path) -> dict[str, Any]:
    """The index file's size and SHA-256 (a regular file only)."""
    with open_regular(path) as file:
        size = os.fstat(file.fileno()).st_size
        return {"index_size": size, "index_sha256": sha256_file(file, size)}


def _array_identity(path: Path) -> dict[str, int]:
    info = os.stat(path)
    return {"array_size": info.st_size, "array_mtime_ns": info.st_mtime_ns}
