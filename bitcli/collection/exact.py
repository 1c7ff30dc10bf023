"""Exact cosine top-k search, at the speed of memory.

Each block of the mapped rows is pre-scored by one matrix product with all the queries (float32,
or bfloat16 where native) and divided by the stored norms (`norms.py`). A pre-score is within a
proven `margin` of the exact cosine, so only the rows that could still make a query's top k are
re-scored in float64: the answer does not depend on block size, dtype, query count or --top-k.
Where several dtypes are possible the first blocks time each; small collections use numpy alone.

Ranking is by score, then row; a score depends on the row's bytes and the query alone, so dot
products are numpy's `einsum`: one summation order for every row (BLAS sums a remainder group of
rows in another order). `Match`, `cosine64` and `to_matches` serve the approximate index too.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from bitcli.collection import norms as norms_mod
from bitcli.collection.blocks import MappedRows
from bitcli.collection.index import EmbeddingIndex
from bitcli.errors import UsageError

QUERY_CHUNK = 1024  # queries scored per pass over the index (bounds the [block, queries] matrix)
_BLOCK_ELEMENTS = 1 << 23  # pre-scores per block ([rows, queries] float32: 32 MB)
_MAX_BLOCK_ROWS = 1 << 15  # rows per block: few large products (small ones wait on a second thread when busy)
_PIECE_BYTES = 1 << 22  # float32 bytes of rows converted at a time for one matrix product (4 MB)
_EXACT_BYTES = 1 << 23  # float64 rows re-scored at a time (a block's candidates can be all its rows)
_TORCH_FROM_ELEMENTS = 1 << 26  # below this numpy scores the rows: importing torch would cost more
_U32 = 2.0**-24  # unit roundoff of float32
_U16 = 2.0**-11  # of float16
_UBF16 = 2.0**-8  # of bfloat16 (8 significant bits)
MIN_NORM = 2.0**-8  # rows with a smaller norm are scored in float64 (subnormal products would dominate)
_MAX_NORM = 2.0**60  # and with a larger one: float32 products and norms overflow (`beyond_margin`)


@dataclass(frozen=True)
class Match:
    """One search result: the `rank`-th most similar row (1 = best)."""

    rank: int
    row: int
    path: str
    score: float  # cosine similarity, a float32 value as its shortest decimal

    def to_dict(self) -> dict:
        return {"rank": self.rank, "path": self.path, "score": self.score}


def unit_rows(vectors: np.ndarray, dtype: type = np.float32) -> np.ndarray:
    """Rows scaled to unit length in float64, as `dtype`; a zero, NaN or overflowing row becomes zeros."""
    rows = np.array(vectors, dtype=np.float64, ndmin=2)
    with np.errstate(all="ignore"):
        unit = rows / np.sqrt(np.einsum("ij,ij->i", rows, rows))[:, None]
    unit[~np.isfinite(unit).all(axis=1)] = 0.0
    return unit.astype(dtype, copy=False)


def check_k(k: int) -> None:
    if k < 1:
        raise UsageError("--top-k must be at least 1")


def to_matches(index, query: np.ndarray, rows: np.ndarray, k: int, own: int | None) -> list[Match]:
    """The best k of the candidate `rows` but `own`, by their float64 cosine with `query`."""
    from bitcli.pipeline import short_float

    rows = np.asarray([r for r in np.asarray(rows).tolist() if r != own], dtype=np.int64)
    if rows.size == 0:
        return []
    scores = cosine64(index.take(rows), query)
    order = np.lexsort((rows, -scores))[:k]
    return [Match(rank=n + 1, row=int(rows[i]), path=index.paths[int(rows[i])], score=short_float(scores[i])) for n, i in enumerate(order)]


def cosine64(rows: np.ndarray, query: np.ndarray) -> np.ndarray:
    """float64 cosine of each row with `query` (0 for a zero or NaN row or query), in [-1, 1]."""
    rows = np.ascontiguousarray(rows, dtype=np.float64)  # one summation order whatever the layout
    query = np.asarray(query, dtype=np.float64).ravel()
    norms = np.sqrt(np.einsum("ij,ij->i", rows, rows)) * np.sqrt(np.einsum("j,j->", query, query))
    with np.errstate(invalid="ignore", divide="ignore"):
        scores = np.einsum("ij,j->i", rows, query) / norms  # not `@`: see the module docstring
    scores[~np.isfinite(scores)] = 0.0
    return np.clip(scores, -1.0, 1.0)


def exact_search(
    index: EmbeddingIndex,
    queries: np.ndarray,
    k: int,
    *,
    exclude: Sequence[int | None] | None = None,
    block_rows: int | None = None,
    scoring: str | None = None,
) -> list[list[Match]]:
    """Exact cosine top-k (float64 scores; ties by row). `scoring`: "float32", "float16",
    "bfloat16" or None (chosen here); every choice gives the same answer."""
    return exact_matches(index, queries, k, exclude, block_rows, scoring)[0]


def margin(scoring: str, dim: int) -> float:
    """A bound on |pre-score - cosine| for rows of dimension `dim` with norms in [MIN_NORM, 2^60],
    doubled for safety: the factors' rounding in the named dtype (u each; float16 queries also
    2^-25 absolute), `dim` terms accumulated in float32 (gamma_dim, by Cauchy-Schwarz), the result
    rounded (u)."""
    if dim * _U32 >= 0.5:  # 2^23 or more terms: no useful bound (and at 2^24 the formula breaks)
        return np.inf  # every row is re-scored in float64
    gamma = dim * _U32 / (1 - dim * _U32)
    if scoring == "float32":
        bound = gamma * (1 + 2 * _U32) ** 2 + 4 * _U32
    elif scoring == "float16":
        query = _U16 + 2.0**-25 * np.sqrt(dim)
        accumulated = query + gamma * (1 + query)
        bound = accumulated + _U16 * (1 + accumulated) + 2.0**-25 / MIN_NORM + 2 * _U32
    elif scoring == "bfloat16":
        inputs = 2 * _UBF16 + _UBF16**2
        accumulated = inputs + gamma * (1 + inputs)
        bound = accumulated + _UBF16 * (1 + accumulated) + 2 * _U32
    else:
        raise ValueError(f"scoring {scoring!r}: use float32, float16 or bfloat16")
    return float(2 * bound + 1e-12)


def beyond_margin(norms: np.ndarray) -> np.ndarray:
    """Rows whose (nonzero, finite) norms lie outside [MIN_NORM, 2^60]: their products may under-
    or overflow, which `margin` does not bound; callers decide them in float64."""
    with np.errstate(invalid="ignore"):
        return (norms > 0) & np.isfinite(norms) & ((norms < MIN_NORM) | (norms > _MAX_NORM))


def check_queries(index: EmbeddingIndex, queries: np.ndarray) -> np.ndarray:
    """Query vectors must be [q, D] with the index's D (a model with another width: exit 2)."""
    queries = np.asarray(queries)
    if queries.ndim != 2 or queries.shape[1] != index.dim:
        raise UsageError(f"query vectors of shape {queries.shape} cannot be compared with {index.dim}-dimensional rows; use the model the index was made with")
    return queries


def exact_matches(index, queries, k, exclude, block_rows, scoring) -> tuple[list[list[Match]], str]:
    """`exact_search`'s matches, and the pre-scoring that scored most rows."""
    from bitcli.pipeline import short_float

    check_k(k)
    queries = check_queries(index, queries)
    exclude = list(exclude) if exclude is not None else [None] * len(queries)
    norms = norms_mod.ensure(index)
    results: list[list[Match]] = []
    used: dict[str, int] = {}
    with MappedRows(index) as rows:
        for first in range(0, len(queries), QUERY_CHUNK):
            chunk = np.asarray(queries[first : first + QUERY_CHUNK], dtype=np.float64)
            skip = exclude[first : first + QUERY_CHUNK]
            best = [_Best(min(k, rows.count - (1 if own is not None and 0 <= own < rows.count else 0))) for own in skip]
            block = block_rows or min(_MAX_BLOCK_ROWS, max(256, _BLOCK_ELEMENTS // len(chunk)))
            scorers = _scorers(rows.values, unit_rows(chunk), scoring)
            try:
                used_here = _scan(rows, norms, chunk, skip, best, block, scorers)
            finally:
                for scorer in scorers:
                    scorer.close()
            for name, count in used_here.items():
                used[name] = used.get(name, 0) + count
            for b in best:
                results.append(
                    [Match(rank=n + 1, row=int(r), path=index.paths[int(r)], score=short_float(s)) for n, (s, r) in enumerate(zip(b.scores, b.rows))]
                )
    return results, max(used, key=used.get) if used else "float32"  # the way that scored most rows


class _Best:
    """The best `keep` rows of one query so far, by (float64 score desc, row asc)."""

    def __init__(self, keep: int):
        self.keep = keep
        self.scores = np.empty(0, np.float64)
        self.rows = np.empty(0, np.int64)

    def bar(self, slack: float) -> float:
        """Pre-scores below this cannot enter (the list is full and beats them by the margin)."""
        if self.keep == 0:  # a one-row collection searched for its own row: nothing can enter
            return np.inf
        return float(self.scores[-1]) - 2 * slack if self.scores.size == self.keep else -np.inf

    def offer(self, pre: np.ndarray, rows: np.ndarray, exact: Callable[[np.ndarray], np.ndarray], slack: float) -> None:
        """Rows with pre-scores `pre`: keep those that can make the list, scored by `exact`."""
        if self.keep == 0:
            return
        finite = np.isfinite(pre)
        if self.scores.size + rows.size > self.keep:
            # The keep-th best of what is known: the list's exact scores and the finite pre-scores.
            known = np.concatenate([self.scores, pre[finite]])
            if known.size >= self.keep:
                cut = np.partition(known, known.size - self.keep)[known.size - self.keep]
                chosen = ~finite | (pre >= cut - 2 * slack)
                pre, rows = pre[chosen], rows[chosen]
        if rows.size == 0:
            return
        scores = np.concatenate([self.scores, exact(rows)])
        rows = np.concatenate([self.rows, rows])
        order = np.lexsort((rows, -scores))[: self.keep]
        self.scores, self.rows = scores[order], rows[order]


def _scan(rows: MappedRows, norms: np.ndarray, queries: np.ndarray, exclude: list, best: list, block: int, scorers: list):
    timings: dict[str, float] = {}
    used: dict[str, int] = {}
    trials = 2 * len(scorers) if len(scorers) > 1 else 0  # each way timed twice (the first call warms up)
    n, first = 0, 0
    while first < rows.count:
        if n < trials:  # small blocks: a slower way costs little
            scorer, stop = scorers[n % len(scorers)], min(first + max(256, block // 8), rows.count)
        else:
            scorer = min(scorers, key=lambda s: timings[s.name]) if trials else scorers[0]
            stop = min(first + block, rows.count)
        n += 1
        started = time.perf_counter()
        rows.populate(first, stop)
        with np.errstate(all="ignore"):  # an overflowing row pre-scores inf: it is re-scored exactly
            pre = scorer.scores(first, stop)  # [n, q] float32, not yet divided by the norms
        timings[scorer.name] = min(timings.get(scorer.name, np.inf), (time.perf_counter() - started) / (stop - first))
        used[scorer.name] = used.get(scorer.name, 0) + stop - first
        block_norms = norms[first:stop]
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            pre = pre / block_norms[:, None].astype(np.float32)
        pre[(block_norms == 0) | ~np.isfinite(block_norms)] = 0.0  # exactly their cosine (0)
        pre[beyond_margin(block_norms)] = np.inf  # always re-scored in float64 (see `margin`)
        slack = margin(scorer.name, rows.dim)
        bars = np.array([b.bar(slack) for b in best], dtype=np.float32)
        hit = (pre >= bars[None, :]) | ~np.isfinite(pre)
        for j in np.flatnonzero(hit.any(axis=0)):
            found = np.flatnonzero(hit[:, j])
            if exclude[j] is not None and first <= exclude[j] < stop:
                found = found[found != exclude[j] - first]
            values = _exact_scorer(rows.values, queries[j])
            best[j].offer(pre[found, j], found + first, values, slack)
        rows.release(first, stop)
        first = stop
    return used


def _exact_scorer(values: np.ndarray, query: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """float64 cosines of the given rows with `query`, `_EXACT_BYTES` of rows at a time."""
    piece = max(1, _EXACT_BYTES // (8 * max(1, values.shape[1])))

    def scores(rows: np.ndarray) -> np.ndarray:
        return np.concatenate([cosine64(values[rows[i : i + piece]], query) for i in range(0, rows.size, piece)] or [np.empty(0)])

    return scores


def _scorers(values: np.ndarray, unit: np.ndarray, scoring: str | None) -> list:
    """The ways to pre-score here: float32, float16 rows as stored, bfloat16 where native; rows
    torch cannot wrap (another byte order, read-only) with numpy."""
    if scoring is None and values.size < _TORCH_FROM_ELEMENTS or not values.dtype.isnative or not values.flags.writeable:
        return [_NumpyScorer(values, unit)]
    stored = "float16" if values.dtype == np.float16 else "float32"
    if scoring == "float16" and stored != "float16":
        raise ValueError("float16 pre-scoring is for rows stored as float16 (its margin counts no rounding of them)")
    if scoring is not None:
        return [_TorchScorer(values, unit, scoring)]
    ways = ["float32", "float16"] if stored == "float16" else ["float32"]
    if bf16_native():
        ways.append("bfloat16")
    return [_TorchScorer(values, unit, way) for way in ways]


def bf16_native() -> bool:
    """Whether torch runs bfloat16 matrix products natively here (AVX512-BF16 or AMX)."""
    try:
        from bitcli.engine.native import bf16_supported
    except ImportError:
        return False
    return bf16_supported()


class _NumpyScorer:
    name = "float32"

    def __init__(self, values: np.ndarray, unit: np.ndarray):
        self.values, self.unit_t = values, np.ascontiguousarray(unit.T)

    def scores(self, start: int, stop: int) -> np.ndarray:
        return np.asarray(self.values[start:stop], dtype=np.float32) @ self.unit_t

    def close(self) -> None:
        pass


class _TorchScorer:
    """Rows already in the scorer's dtype: one product (queries x rows^T) per block; others
    converted 4 MB at a time, the pieces split between worker threads of one OpenMP thread each
    (small two-thread products spend more time meeting than multiplying: docs/collection.md)."""

    def __init__(self, values: np.ndarray, unit: np.ndarray, name: str):
        import torch

        self.torch, self.name = torch, name
        dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]
        self.rows = torch.from_numpy(values)  # the writable copy-on-write map: nothing is copied
        self.unit = torch.from_numpy(unit).to(dtype)
        self.direct = self.rows.dtype == dtype
        self.piece = max(16, _PIECE_BYTES // max(1, values.shape[1] * 4))
        self.pool = None
        workers = 1
        if not self.direct:
            from bitcli.engine import native

            if native.openmp_per_thread():
                workers = torch.get_num_threads()
            if workers > 1:
                from concurrent.futures import ThreadPoolExecutor

                self.pool = ThreadPoolExecutor(workers, thread_name_prefix="bit-search", initializer=native.one_openmp_thread)
        self.buffers = [] if self.direct else [torch.empty((self.piece, values.shape[1]), dtype=dtype) for _ in range(workers)]

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)  # no worker reads the map after this

    def scores(self, start: int, stop: int) -> np.ndarray:
        """[stop - start, q] float32 (a transposed view of the [q, n] product)."""
        torch = self.torch
        if self.direct:
            return torch.mm(self.unit, self.rows[start:stop].t()).float().numpy().T
        out = torch.empty((self.unit.shape[0], stop - start), dtype=torch.float32)
        if self.pool is None:
            self._pieces(self.buffers[0], out, start, start, stop)
        else:
            share = -(-(stop - start) // len(self.buffers))
            share = -(-share // self.piece) * self.piece  # whole pieces to each worker
            jobs = [(buffer, out, start, first, min(first + share, stop)) for buffer, first in zip(self.buffers, range(start, stop, share))]
            for done in [self.pool.submit(self._pieces, *job) for job in jobs]:
                done.result()
        return out.numpy().T

    def _pieces(self, buffer, out, origin: int, start: int, stop: int) -> None:
        for first in range(start, stop, self.piece):
            last = min(first + self.piece, stop)
            rows = buffer[: last - first]
            rows.copy_(self.rows[first:last])
            out[:, first - origin : last - origin] = self.torch.mm(self.unit, rows.t())  # bfloat16's is bfloat16
