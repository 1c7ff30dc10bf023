"""Exact cosine top-k search over an embedding, streamed from disk in blocks.

For each block of index rows (float32, about 64 MB) the scores of every query are one matrix
product, divided by the rows' norms; a running top-k per query is merged with the block's best.
Memory is bounded by the block size and the number of queries, never by the index size.

Scores and ranking: `scoring.py` (float32 cosine; by score, then by row, whatever the blocks).

`search` picks the approximate index (`ann.py`) when one was built for this array and is
fresh, unless `exact=True`; its candidates are re-scored exactly, so scores never differ.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from bitcli.collection.index import EmbeddingIndex
from bitcli.collection.scoring import Match, block_scores, check_k, check_queries, normalize_rows, to_matches, top_k

__all__ = ["Match", "SearchOutcome", "block_scores", "exact_search", "normalize_rows", "search", "top_k"]

QUERY_CHUNK = 1024  # queries scored per pass over the index (bounds the [block, queries] matrix)


@dataclass
class SearchOutcome:
    """Matches per query and how they were found ("exact" or the approximate index's name)."""

    matches: list[list[Match]]
    method: str = "exact"
    notice: str | None = None  # e.g. why an approximate index beside the array was not used


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
        raw = queries[first : first + QUERY_CHUNK]
        results += _search_chunk(index, raw, k, exclude[first : first + QUERY_CHUNK], block_rows)
    return results


def _search_chunk(index: EmbeddingIndex, raw: np.ndarray, k: int, exclude: list[int | None], block_rows: int | None) -> list[list[Match]]:
    queries = normalize_rows(raw)
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
    return [to_matches(index, raw[j], r, k, exclude[j]) for j, (_, r) in enumerate(best)]
