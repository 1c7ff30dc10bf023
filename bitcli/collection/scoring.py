"""What exact search and the approximate index share: the `Match` record and float64 cosines.

Ranking is by score, then row; a score depends on the row's bytes and the query alone (never
on blocks or --top-k), so dot products are numpy's `einsum`: one summation order for every row
(BLAS sums a remainder group of rows in another order).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bitcli.errors import UsageError


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
