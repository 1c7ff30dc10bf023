"""Exact cosine top-k search over an embedding, streamed from disk in blocks.

For each block of index rows (float32, about 64 MB) the scores of every query are one matrix
product, divided by the rows' norms; a running top-k per query is merged with the block's best.
Memory is bounded by the block size and the number of queries, never by the index size.

Ranking is deterministic: by score, highest first, and among equal scores by row, lowest first
(byte-identical rows give equal scores, and the order must not depend on the block size). A
row whose norm is 0 (or that holds NaN) has cosine 0 with everything.

`search` picks the approximate index (`ann.py`) when one was built for this array and is
fresh, unless `exact=True`; its candidates are re-scored exactly, so scores never differ.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from bitcli.collection.index import EmbeddingIndex
from bitcli.errors import UsageError

QUERY_CHUNK = 1024  # queries scored per pass over the index (bounds the [block, queries] matrix)


@dataclass(frozen=True)
class Match:
    """One search result: the `rank`-th most similar row (1 = best)."""

    rank: int
    row: int
    path: str
    score: float  # cosine similarity, a float32 value as its shortest decimal

    def to_dict(self) -> dict:
        return {"rank": self.rank, "path": self.path, "score": self.score}


@dataclass
class SearchOutcome:
    """Matches per query and how they were found ("exact" or the approximate index's name)."""

    matches: list[list[Match]]
    method: str = "exact"
    notice: str | None = None  # e.g. why an approximate index beside the array was not used


def normalize_rows(vectors: np.ndarray) -> np.ndarray:
    """float32 rows scaled to unit length (zero rows stay zero)."""
    out = np.array(vectors, dtype=np.float32, copy=True, ndmin=2)
    norms = np.sqrt(np.einsum("ij,ij->i", out, out))
    norms[norms == 0] = 1.0
    out /= norms[:, None]
    return out


def check_k(k: int) -> None:
    if k < 1:
        raise UsageError("--top-k must be at least 1")


def check_queries(index: EmbeddingIndex, queries: np.ndarray) -> np.ndarray:
    """Query vectors must be [q, D] with the index's D (a model with another width: exit 2)."""
    queries = np.asarray(queries)
    if queries.ndim != 2 or queries.shape[1] != index.dim:
        raise UsageError(f"query vectors of shape {queries.shape} cannot be compared with {index.dim}-dimensional rows; use the model the index was made with")
    return queries


def search(
    index: EmbeddingIndex,
    queries: np.ndarray,
    k: int,
    *,
    exclude: Sequence[int | None] | None = None,
    exact: bool = False,
    block_rows: int | None = None,
) -> SearchOutcome:
    """Top-k rows for each query vector; `exclude[i]`: a row query i must not return (its own)."""
    check_k(k)
    check_queries(index, queries)
    notice = None
    if not exact:
        from bitcli.collection import ann

        found, notice = ann.load_fresh(index)
        if found is not None:
            return SearchOutcome(found.search(index, queries, k, exclude=exclude), method=found.name)
    return SearchOutcome(exact_search(index, queries, k, exclude=exclude, block_rows=block_rows), notice=notice)


def exact_search(
    index: EmbeddingIndex,
    queries: np.ndarray,
    k: int,
    *,
    exclude: Sequence[int | None] | None = None,
    block_rows: int | None = None,
) -> list[list[Match]]:
    """Brute-force cosine top-k, one streamed pass over the index per chunk of queries."""
    check_k(k)
    queries = check_queries(index, queries)
    exclude = list(exclude) if exclude is not None else [None] * len(queries)
    results: list[list[Match]] = []
    for first in range(0, len(queries), QUERY_CHUNK):
        chunk = normalize_rows(queries[first : first + QUERY_CHUNK])
        results += _search_chunk(index, chunk, k, exclude[first : first + QUERY_CHUNK], block_rows)
    return results


def _search_chunk(index: EmbeddingIndex, queries: np.ndarray, k: int, exclude: list[int | None], block_rows: int | None) -> list[list[Match]]:
    q = len(queries)
    best = [(np.empty(0, np.float32), np.empty(0, np.int64)) for _ in range(q)]
    keep = k + 1  # one spare for a query's own row, dropped at the end
    # The keep-th best score so far per query: a later row must beat it (an equal score loses
    # to the earlier row), so most of a block is skipped once the lists are full.
    bar = np.full(q, -np.inf, dtype=np.float32)
    for first, block in index.iter_blocks(block_rows):
        scores = block_scores(block, queries)  # [q, n]
        for j in range(q):
            hits = np.flatnonzero(scores[j] > bar[j]) if len(best[j][0]) == keep else np.arange(len(block))
            if hits.size == 0:
                continue
            s, r = best[j]
            best[j] = top_k(np.concatenate([s, scores[j, hits]]), np.concatenate([r, hits + first]), keep)
            if len(best[j][0]) == keep:
                bar[j] = best[j][0][-1]
    return [to_matches(index, s, r, k, exclude[j]) for j, (s, r) in enumerate(best)]


def block_scores(block: np.ndarray, unit_queries: np.ndarray) -> np.ndarray:
    """Cosine similarity [q, n] of unit-length queries with raw rows (a NaN row scores 0)."""
    norms = np.sqrt(np.einsum("ij,ij->i", block, block))
    norms[norms == 0] = 1.0
    scores = unit_queries @ block.T
    scores /= norms[None, :]
    np.clip(scores, -1.0, 1.0, out=scores)  # rounding can step just past +-1
    scores[np.isnan(scores)] = 0.0
    return scores


def top_k(scores: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k best (score desc, row asc) of the candidates, in that order; exact under ties."""
    if scores.size > k:
        part = np.argpartition(-scores, k - 1)[:k]
        kth = scores[part].min()
        above = np.flatnonzero(scores > kth)
        ties = np.flatnonzero(scores == kth)
        ties = ties[np.argsort(rows[ties], kind="stable")[: k - above.size]]
        chosen = np.concatenate([above, ties])
        scores, rows = scores[chosen], rows[chosen]
    order = np.lexsort((rows, -scores))
    return scores[order], rows[order]


def to_matches(index: EmbeddingIndex, scores: np.ndarray, rows: np.ndarray, k: int, own: int | None) -> list[Match]:
    from bitcli.pipeline import short_float

    out: list[Match] = []
    for score, row in zip(scores, rows):
        if row == own or not np.isfinite(score):
            continue
        if len(out) == k:
            break
        out.append(Match(rank=len(out) + 1, row=int(row), path=index.paths[int(row)], score=short_float(score)))
    return out
