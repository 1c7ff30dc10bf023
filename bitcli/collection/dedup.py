"""Near-duplicate groups: connected components of the pairs with cosine similarity >= threshold.

Exact, in bounded memory. The index is streamed in blocks of rows (about 32 MB of float32
each); for every pair of blocks (i, j >= i) the similarities are computed a slice of rows at a
time, and the pairs at or above the threshold go straight into a union-find. No N x N matrix
exists at any point, and no list of pairs either: memory is a few blocks plus the union-find's
one integer per row, whatever the number of duplicates (a folder of 10,000 copies of one
photo is as cheap as one with none). The cost is the all-pairs one, N^2/2 dot products; on CPUs
with native bfloat16 (AVX512-BF16, AMX) big indexes take them in bfloat16 first, about 4x faster,
and re-check every pair within a proven error margin of the threshold in float32, so the pairs
found are the float32 ones (`threshold_pairs`).

The union-find is vectorized: a batch of pairs hooks the larger of each pair's two roots onto
the smaller, then compresses paths, until every pair shares a root; every root is the
smallest row of its component, so the result does not depend on the order pairs arrive in.

Groups are reported largest first (ties: the group whose first row comes first), each group's
paths in index order, with the lowest and highest similarity between any two members (the
lowest can be below the threshold: members may join through others) and each member's
similarity to the group's first path. `paths_to_delete` turns groups into the files one would
delete to keep one per group (`--keep first|largest|newest`); it never deletes anything.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

from bitcli.collection import DEFAULT_THRESHOLD  # 0.9: why, in the package's __init__
from bitcli.collection.index import EmbeddingIndex
from bitcli.errors import UsageError

_BLOCK_BYTES = 32 << 20  # float32 bytes per block of rows
_SLICE_ROWS = 512  # rows per similarity slice: at most 512 x block pairs materialize at once
_STATS_ROWS = 2048  # rows per chunk when measuring a (large) group
# Below N^2 * D = 2^40 (about 12 s of float32 products on 2 cores) importing torch for the bf16
# pre-filter (2-3 s) does not pay.
_BF16_FROM_WORK = float(1 << 40)


@dataclass(frozen=True)
class DuplicateGroup:
    """One group of near-duplicates (`group` numbers from 1, in output order)."""

    group: int
    rows: list[int]
    paths: list[str]
    min_score: float
    max_score: float
    scores_to_first: list[float]

    def to_dict(self) -> dict:
        return {"group": self.group, "paths": self.paths, "min_score": self.min_score, "max_score": self.max_score}


def check_threshold(threshold: float) -> None:
    """Cosine similarity lies in [-1, 1]: anything else is a usage error (NaN too)."""
    if not (-1.0 <= threshold <= 1.0):
        raise UsageError(f"--threshold {threshold}: must be between -1 and 1 (a cosine similarity); the default is {DEFAULT_THRESHOLD}")


Progress = Callable[[int], None]  # called with a number of rows' worth of work done (sums to N)


def find_groups(
    index: EmbeddingIndex,
    threshold: float = DEFAULT_THRESHOLD,
    *,
    block_rows: int | None = None,
    method: str = "auto",
    progress: Progress | None = None,
) -> list[DuplicateGroup]:
    """Every group of two or more rows, largest first (`method`: see `threshold_pairs`)."""
    check_threshold(threshold)
    labels = component_labels(index, threshold, block_rows=block_rows, method=method, progress=progress)
    members = _members(labels)
    members.sort(key=lambda rows: (-len(rows), rows[0]))
    return [_describe(index, number, rows) for number, rows in enumerate(members, start=1)]


def component_labels(
    index: EmbeddingIndex, threshold: float, *, block_rows: int | None = None, method: str = "auto", progress: Progress | None = None
) -> np.ndarray:
    """label[i] = the smallest row of row i's component."""
    components = _UnionFind(index.rows)
    for a, b in threshold_pairs(index, threshold, block_rows=block_rows, method=method, progress=progress):
        components.union(a, b)
    return components.labels()


def threshold_pairs(
    index: EmbeddingIndex,
    threshold: float,
    *,
    block_rows: int | None = None,
    method: str = "auto",
    progress: Progress | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Batches of row pairs (a < b) whose cosine similarity is >= threshold, each batch bounded.

    method: "float32" (numpy), "bf16" (a bfloat16 pre-filter, re-checked in float32: the same
    pairs, about 4x faster on CPUs with bf16 units), or "auto" (bf16 when the CPU has native
    bf16 and the index is big enough for torch's import to pay). `progress` hears of the work
    done in rows' worth (row r is compared with rows r..N-1: later rows cost less)."""
    scorer = _scorer(method, index)
    block_rows = block_rows or index.block_rows(_BLOCK_BYTES)
    reported = 0
    for first, block in index.iter_blocks(block_rows):
        left = scorer.prepare(_unit(block.copy()))  # the reader reuses its buffer for the inner loop
        yield from _block_pairs(scorer, left, first, left, first, threshold)  # the block with itself
        for other_first, other in index.iter_blocks(block_rows, start=first + len(block)):
            yield from _block_pairs(scorer, left, first, scorer.prepare(_unit(other)), other_first, threshold)
        if progress is not None:
            done = _work_done(first + len(block), index.rows)
            progress(done - reported)
            reported = done


def _work_done(rows_done: int, rows: int) -> int:
    """Rows' worth of the triangle covered once rows [0, rows_done) are compared with all later."""
    pairs = rows_done * rows - rows_done * (rows_done - 1) // 2
    return round(rows * pairs / (rows * (rows + 1) // 2)) if rows else 0


def _block_pairs(scorer: "_Float32", left: tuple, first: int, right: tuple, other_first: int, threshold: float) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    for start in range(0, len(left[0]), _SLICE_ROWS):
        a, b = scorer.pairs(left, start, right, threshold)
        a += first + start
        b += other_first
        if other_first == first:  # the diagonal block: each pair once, never a row with itself
            keep = b > a
            a, b = a[keep], b[keep]
        if a.size:
            yield a, b


class _Float32:
    """Similarities of a slice of rows with a block, as one float32 matrix product (numpy)."""

    name = "float32"

    def prepare(self, rows: np.ndarray) -> tuple:
        return (rows,)

    def pairs(self, left: tuple, start: int, right: tuple, threshold: float) -> tuple[np.ndarray, np.ndarray]:
        rows = left[0][start : start + _SLICE_ROWS]
        return _settle(rows @ right[0].T, rows, right[0], threshold)


def _margin(dim: int) -> float:
    """A bound on how far a float32 dot product of two float32 unit rows can be from its float64
    value: D products and sums, each rounded by at most 2^-24 relative, on terms summing to <= 1."""
    return (dim + 4) * 2.0**-24


def _settle(sims: np.ndarray, rows: np.ndarray, others: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """(i, j) where rows[i] and others[j] are near-duplicates, from their float32 similarities.

    A pair whose float32 similarity lies within rounding distance of the threshold is decided by
    its float64 cosine rounded to float32, the score dedup reports: byte-identical rows score
    0.99999994 in float32 as often as not, and at --threshold 1 they must still be a group."""
    margin = _margin(rows.shape[1])
    a, b = np.nonzero(sims >= threshold - margin)
    if a.size == 0:
        return a, b
    near = sims[a, b] < threshold + margin
    if near.any():
        left, i = np.unique(a[near], return_inverse=True)
        right, j = np.unique(b[near], return_inverse=True)
        exact = (_unit64(rows[left]) @ _unit64(others[right]).T)[i, j]  # at most a slice x a block
        keep = np.ones(a.size, dtype=bool)
        keep[near] = exact.astype(np.float32) >= np.float32(threshold)
        a, b = a[keep], b[keep]
    return a, b


class _Bf16PreFilter(_Float32):
    """bfloat16 products (torch, oneDNN) keep the pairs within BF16_MARGIN of the threshold; those
    are re-scored in float32, so the result is the float32 one.

    Why the margin is safe: for unit rows, rounding each element to bfloat16 (relative error
    u = 2^-9) moves a dot product by at most (2u + u^2) * sum|a_i b_i| <= 0.0039; fp32
    accumulation adds at most D * 2^-24 (1.2e-4 at D = 2048); rounding the result to bfloat16
    at most 2^-9 <= 0.002. Total under 0.0061 < 0.01."""

    name = "bf16"
    margin = 0.01

    def __init__(self) -> None:
        import torch

        self.torch = torch

    def prepare(self, rows: np.ndarray) -> tuple:
        return (rows, self.torch.from_numpy(rows).to(self.torch.bfloat16))

    def pairs(self, left: tuple, start: int, right: tuple, threshold: float) -> tuple[np.ndarray, np.ndarray]:
        rough = left[1][start : start + _SLICE_ROWS] @ right[1].T
        # Compared in float32: a bfloat16 cut would itself be rounded by up to 2^-9.
        a, b = (t.numpy() for t in self.torch.nonzero(rough.float() >= threshold - self.margin, as_tuple=True))
        if a.size == 0:
            return a, b
        exact = np.einsum("ij,ij->i", left[0][start + a], right[0][b])
        keep = exact >= threshold
        near = np.flatnonzero(np.abs(exact - threshold) < _margin(left[0].shape[1]))
        if near.size:  # as `_settle` decides them: the float64 cosine, rounded to float32
            exact64 = np.einsum("ij,ij->i", _unit64(left[0][start + a[near]]), _unit64(right[0][b[near]]))
            keep[near] = exact64.astype(np.float32) >= np.float32(threshold)
        return a[keep], b[keep]


def chosen_method(index: EmbeddingIndex, method: str = "auto") -> str:
    """Which way `threshold_pairs` computes similarities here: "float32" or "bf16"."""
    return _scorer(method, index).name


def _scorer(method: str, index: EmbeddingIndex) -> _Float32:
    if method not in ("auto", "float32", "bf16"):
        raise ValueError(f"method {method!r}: use auto, float32 or bf16")
    if method == "float32" or (method == "auto" and float(index.rows) ** 2 * index.dim < _BF16_FROM_WORK):
        return _Float32()
    if method == "auto" and not bf16_native():
        return _Float32()
    return _Bf16PreFilter()


def bf16_native() -> bool:
    """Whether torch can run bfloat16 matrix products natively here (AVX512-BF16 or AMX)."""
    try:
        import torch

        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (ImportError, AttributeError, RuntimeError):
        return False


def _unit(rows: np.ndarray) -> np.ndarray:
    """Scale float32 rows to unit length in place (zero rows stay zero; NaN rows match nothing)."""
    norms = np.sqrt(np.einsum("ij,ij->i", rows, rows))
    norms[norms == 0] = 1.0
    rows /= norms[:, None]
    rows[~np.isfinite(norms)] = 0.0
    return rows


class _UnionFind:
    """Disjoint sets over rows 0..n-1; every root is its set's smallest member."""

    def __init__(self, n: int):
        self.parent = np.arange(n, dtype=np.int64)

    def union(self, a: np.ndarray, b: np.ndarray) -> None:
        while a.size:
            ra, rb = self.parent[a], self.parent[b]  # roots: parent is kept fully compressed
            differ = ra != rb
            if not differ.any():
                return
            a, b, ra, rb = a[differ], b[differ], ra[differ], rb[differ]
            # Hook each larger root under the smaller one: pointers only ever go down, so no cycle.
            np.minimum.at(self.parent, np.maximum(ra, rb), np.minimum(ra, rb))
            self._compress()

    def _compress(self) -> None:
        parent = self.parent
        while True:
            grand = parent[parent]
            if np.array_equal(grand, parent):
                break
            parent = grand
        self.parent = parent

    def labels(self) -> np.ndarray:
        return self.parent.copy()


def _members(labels: np.ndarray) -> list[list[int]]:
    """Rows of every label shared by two or more rows, each list in index order."""
    order = np.argsort(labels, kind="stable")
    sorted_labels = labels[order]
    cuts = np.flatnonzero(np.diff(sorted_labels)) + 1
    return [chunk.tolist() for chunk in np.split(order, cuts) if chunk.size > 1]


def _describe(index: EmbeddingIndex, number: int, rows: list[int]) -> DuplicateGroup:
    from bitcli.pipeline import short_float

    low, high, to_first = _group_scores(index, rows)
    return DuplicateGroup(
        group=number,
        rows=rows,
        paths=[index.paths[r] for r in rows],
        min_score=short_float(low),
        max_score=short_float(high),
        scores_to_first=[1.0] + [short_float(s) for s in to_first[1:]],
    )


def _group_scores(index: EmbeddingIndex, rows: list[int]) -> tuple[float, float, np.ndarray]:
    """(lowest, highest) similarity over all pairs of members, and each member's to the first, in
    float64 from the stored rows (so they do not depend on how the pairs were found). The
    similarities to the first are row 0 of the first chunk's products."""
    low, high = np.inf, -np.inf
    to_first = []
    for start in range(0, len(rows), _STATS_ROWS):
        left = _unit64(index.take(rows[start : start + _STATS_ROWS]))
        for other in range(start, len(rows), _STATS_ROWS):
            right = left if other == start else _unit64(index.take(rows[other : other + _STATS_ROWS]))
            sims = np.clip(left @ right.T, -1.0, 1.0)
            if start == 0:
                to_first.append(sims[0])
            values = sims[np.triu_indices(len(left), 1)] if other == start else sims.ravel()
            if values.size:
                low, high = min(low, float(values.min())), max(high, float(values.max()))
    return low, high, np.concatenate(to_first)


def _unit64(rows: np.ndarray) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.float64)
    norms = np.linalg.norm(rows, axis=1)
    norms[(norms == 0) | ~np.isfinite(norms)] = np.inf  # zero or NaN rows: similarity 0
    return np.nan_to_num(rows / norms[:, None])
