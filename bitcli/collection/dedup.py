"""Near-duplicate groups: connected components of the pairs with cosine similarity >= threshold.

Exact, in bounded memory: for every pair of 32 MB blocks the similarities are computed a slice
at a time and the pairs at or above the threshold go straight into a vectorized union-find (no
N x N matrix, no list of pairs). Big indexes are pre-scored in bfloat16 where native and the
pairs within the margin re-checked in float64. Every root is its component's smallest row, so
the result does not depend on the order pairs arrive in. Groups come largest first, paths in
index order, with the lowest and highest similarity between members.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np

from bitcli.collection import DEFAULT_THRESHOLD  # 0.9: why, in the package's __init__
from bitcli.collection import norms as norms_mod
from bitcli.collection.blocks import MappedRows
from bitcli.collection.index import EmbeddingIndex
from bitcli.collection.exact import beyond_margin, bf16_native, margin, unit_rows
from bitcli.errors import UsageError

_BLOCK_BYTES = 32 << 20  # float32 bytes per block of rows
_PREPARED_BYTES = 1 << 30  # unit rows kept prepared between passes (100,000 x 2048 bfloat16: 400 MB)
_SLICE_ROWS = 512  # rows per similarity slice: at most 512 x block pairs materialize at once
_STATS_ROWS = 2048  # rows per chunk when measuring a (large) group
# Below N^2 * D = 2^40 importing torch for the bf16 pre-filter does not pay.
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
    method: str | None = None  # how the pairs were found: "exact, bfloat16 pre-filter" (or float32)

    def to_dict(self) -> dict:
        record = {"group": self.group, "paths": self.paths, "min_score": self.min_score, "max_score": self.max_score}
        return {**record, "method": self.method} if self.method else record


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
    components = _UnionFind(index.rows)
    for a, b in threshold_pairs(index, threshold, block_rows=block_rows, method=method, progress=progress, components=components):
        components.union(a, b)
    labels = components.labels()  # label[i]: the smallest row of row i's component
    order = np.argsort(labels, kind="stable")
    cuts = np.flatnonzero(np.diff(labels[order])) + 1
    members = [chunk.tolist() for chunk in np.split(order, cuts) if chunk.size > 1]
    members.sort(key=lambda rows: (-len(rows), rows[0]))
    found_by = f"exact, {chosen_method(index, method)} pre-filter"
    return [_describe(index, number, rows, found_by) for number, rows in enumerate(members, start=1)]


def threshold_pairs(
    index: EmbeddingIndex,
    threshold: float,
    *,
    block_rows: int | None = None,
    method: str = "auto",
    progress: Progress | None = None,
    components: "_UnionFind | None" = None,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Batches of row pairs (a < b) whose float64 cosine, rounded to float32, is >= threshold.
    Pairs are pre-scored in bulk (`method`: "float32", "bf16", or "auto"); those within
    `exact.margin` of the threshold are decided in float64. With `components` (the caller's
    union-find) pairs it already connects are not decided, and only enough pairs for the
    components are yielded. `progress` hears of the work done in rows' worth."""
    scorer = _scorer(method, index)
    norms = norms_mod.ensure(index)
    block_rows = block_rows or max(1, _BLOCK_BYTES // (index.dim * 4))
    slack = margin(scorer.name, index.dim)
    reported = 0
    with MappedRows(index) as mapped:
        values = mapped.values
        prepared = _Prepared(lambda first, stop: scorer.prepare(values[first:stop], norms[first:stop]))
        for first in range(0, index.rows, block_rows):
            stop = min(first + block_rows, index.rows)
            left = prepared.get(first, stop)
            for other in range(first, index.rows, block_rows):
                last = min(other + block_rows, index.rows)
                mapped.check(last)
                right = prepared.get(other, last)
                for start in range(0, stop - first, _SLICE_ROWS):
                    sure, a, b = scorer.pairs(left, start, right, threshold, slack)
                    a += first + start
                    b += other
                    if other == first:  # the diagonal block: each pair once, never a row with itself
                        keep = b > a
                        sure, a, b = sure[keep], a[keep], b[keep]
                    if components is not None:
                        components.union(a[sure], b[sure])
                    if a.size:
                        keep = sure | _exact_at_least(values, norms, a, b, threshold, sure, components)
                        a, b = a[keep], b[keep]
                    if a.size:
                        yield a, b
                mapped.release(other, last)
            prepared.forget(first)
            if progress is not None:
                done = _work_done(stop, index.rows)
                progress(done - reported)
                reported = done


class _Prepared:
    """Blocks of unit rows as the scorer wants them, kept for the later passes while they fit in
    `_PREPARED_BYTES` (the rest is prepared again when needed)."""

    def __init__(self, prepare: Callable[[int, int], Any]):
        self.prepare, self.kept, self.bytes = prepare, {}, 0

    def get(self, first: int, stop: int) -> Any:
        if first in self.kept:
            return self.kept[first]
        block = self.prepare(first, stop)
        if self.bytes + block.nbytes <= _PREPARED_BYTES:  # numpy arrays and torch tensors alike
            self.kept[first] = block
            self.bytes += block.nbytes
        return block

    def forget(self, first: int) -> None:
        """A left block is done: no later pass needs it."""
        block = self.kept.pop(first, None)
        if block is not None:
            self.bytes -= block.nbytes


def _work_done(rows_done: int, rows: int) -> int:
    """Rows' worth of the triangle covered once rows [0, rows_done) are compared with all later."""
    pairs = rows_done * rows - rows_done * (rows_done - 1) // 2
    return round(rows * pairs / (rows * (rows + 1) // 2)) if rows else 0


def _exact_at_least(
    values: np.ndarray, norms: np.ndarray, a: np.ndarray, b: np.ndarray, threshold: float, skip: np.ndarray, components: "_UnionFind | None" = None
) -> np.ndarray:
    """For each pair not already decided (`skip`): whether its float64 cosine, rounded to float32
    (identical rows must reach --threshold 1), is >= threshold. With `components`, pairs it
    connects are left out (False) and the duplicates found joined in it."""
    out = np.zeros(a.size, dtype=bool)
    todo = np.flatnonzero(~skip)
    for start in range(0, todo.size, _STATS_ROWS):
        pick = todo[start : start + _STATS_ROWS]
        if components is not None:
            pick = pick[components.parent[a[pick]] != components.parent[b[pick]]]  # roots: kept compressed
            if pick.size == 0:
                continue
        left, right = values[a[pick]].astype(np.float64), values[b[pick]].astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            cosine = np.einsum("ij,ij->i", left, right) / (norms[a[pick]] * norms[b[pick]])
        cosine[~np.isfinite(cosine)] = 0.0  # a zero or non-finite row: similarity 0
        out[pick] = np.clip(cosine, -1.0, 1.0).astype(np.float32) >= np.float32(threshold)
        if components is not None:
            components.union(a[pick[out[pick]]], b[pick[out[pick]]])
    return out


def _unit32(rows: np.ndarray, norms: np.ndarray) -> np.ndarray:
    """float32 unit rows (within the margins); a zero or non-finite row becomes zeros."""
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        if rows.dtype == np.float64:  # values beyond float32's range would overflow before the scaling
            unit = (rows * (1.0 / norms)[:, None]).astype(np.float32)
        else:
            unit = np.asarray(rows, dtype=np.float32) * (1.0 / norms).astype(np.float32)[:, None]
        odd = np.flatnonzero(beyond_margin(norms))
        if odd.size:
            unit[odd] = (np.asarray(rows[odd], dtype=np.float64) / norms[odd, None]).astype(np.float32)
    unit[(norms == 0) | ~np.isfinite(norms)] = 0.0
    return unit


class _Float32:
    """Pre-scores of a slice of unit rows with a block, as one float32 matrix product (numpy)."""

    name = "float32"

    def prepare(self, rows: np.ndarray, norms: np.ndarray) -> np.ndarray:
        return _unit32(rows, norms)

    def pairs(self, left: np.ndarray, start: int, right: np.ndarray, threshold: float, slack: float):
        """(sure, a, b): the pairs that may reach the threshold, and which surely do."""
        sims = left[start : start + _SLICE_ROWS] @ right.T
        a, b = np.nonzero(sims >= threshold - slack)
        return sims[a, b] >= threshold + slack, a, b


class _Bf16PreFilter:
    """The same with bfloat16 products (torch, oneDNN); the margin is bfloat16's."""

    name = "bfloat16"

    def __init__(self) -> None:
        import torch

        self.torch = torch

    def prepare(self, rows: np.ndarray, norms: np.ndarray):
        return self.torch.from_numpy(_unit32(rows, norms)).to(self.torch.bfloat16)

    def pairs(self, left, start: int, right, threshold: float, slack: float):
        torch = self.torch
        rough = left[start : start + _SLICE_ROWS] @ right.T  # bfloat16
        low = _bf16_at_most(torch, threshold - slack)
        if not bool((rough >= low).any()):
            return np.empty(0, bool), np.empty(0, np.int64), np.empty(0, np.int64)
        a, b = torch.nonzero(rough >= low, as_tuple=True)
        sure = rough[a, b].float() >= threshold + slack
        return sure.numpy(), a.numpy(), b.numpy()


def _bf16_at_most(torch, value: float):
    """The largest bfloat16 value <= `value` (comparing bfloat16 scores with it loses nothing)."""
    rounded = torch.tensor(value, dtype=torch.float32).to(torch.bfloat16)
    if float(rounded) > value:
        rounded = torch.nextafter(rounded.float(), torch.tensor(-np.inf)).to(torch.bfloat16)
        while float(rounded) > value:
            step = abs(float(rounded)) * 2.0**-7 or 2.0**-133  # from 0: the smallest subnormal
            rounded = (rounded.float() - step).to(torch.bfloat16)
    return rounded


def chosen_method(index: EmbeddingIndex, method: str = "auto") -> str:
    """Which way `threshold_pairs` pre-scores pairs here: "float32" or "bfloat16"."""
    return _scorer(method, index).name


def _scorer(method: str, index: EmbeddingIndex):
    if method not in ("auto", "float32", "bf16", "bfloat16"):
        raise ValueError(f"method {method!r}: use auto, float32 or bf16")
    if method == "float32" or (method == "auto" and float(index.rows) ** 2 * index.dim < _BF16_FROM_WORK):
        return _Float32()
    if method == "auto" and not bf16_native():
        return _Float32()
    return _Bf16PreFilter()


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


def _describe(index: EmbeddingIndex, number: int, rows: list[int], method: str) -> DuplicateGroup:
    from bitcli.pipeline import short_float

    low, high, to_first = _group_scores(index, rows)
    return DuplicateGroup(
        group=number,
        rows=rows,
        paths=[index.paths[r] for r in rows],
        min_score=short_float(low),
        max_score=short_float(high),
        scores_to_first=[1.0] + [short_float(s) for s in to_first[1:]],
        method=method,
    )


def _group_scores(index: EmbeddingIndex, rows: list[int]) -> tuple[float, float, np.ndarray]:
    """(lowest, highest) float64 similarity over all pairs of members, and each member's to the first."""
    low, high = np.inf, -np.inf
    to_first = []
    for start in range(0, len(rows), _STATS_ROWS):
        left = unit_rows(index.vectors[rows[start : start + _STATS_ROWS]], np.float64)
        for other in range(start, len(rows), _STATS_ROWS):
            right = left if other == start else unit_rows(index.vectors[rows[other : other + _STATS_ROWS]], np.float64)
            sims = np.clip(left @ right.T, -1.0, 1.0)
            if start == 0:
                to_first.append(sims[0])
            values = sims[np.triu_indices(len(left), 1)] if other == start else sims.ravel()
            if values.size:
                low, high = min(low, float(values.min())), max(high, float(values.max()))
    return low, high, np.concatenate(to_first)
