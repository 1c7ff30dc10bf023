"""What exact search and the approximate index share: cosine scores of a block, exact top-k under
ties, and the `Match` records they produce.

Scores are float32 cosine similarities from the stored rows (so `--normalize` does not matter),
clipped to [-1, 1]; a row whose norm is 0 (or that holds NaN) scores 0. Ranking: score, highest
first, then row, lowest first: byte-identical rows give equal scores, and the order must not
depend on how the rows were split into blocks, nor on --top-k.

That needs every score to depend on the row's bytes and the query alone, never on where the row
sits in the matrix: BLAS's matrix-vector kernels accumulate rows in groups and the rows of a
remainder group in another order, so byte-identical rows can score a last bit apart (12 copies:
`-k 1` returned copy 1, `-k 11` copies 9 and 10 first). So dot products are numpy's `einsum`
(one loop per output element, the same summation order for every row; as fast as BLAS for a few
queries, slower for hundreds), float32 for choosing candidates and float64 for the final scores.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bitcli.collection.index import EmbeddingIndex
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


def block_scores(block: np.ndarray, unit_queries: np.ndarray) -> np.ndarray:
    """Cosine similarity [q, n] of unit-length queries with raw rows (a NaN row scores 0)."""
    norms = np.sqrt(np.einsum("ij,ij->i", block, block))
    norms[norms == 0] = 1.0
    scores = np.einsum("qd,nd->qn", unit_queries, block)  # not `@`: see the module docstring
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


def to_matches(index: EmbeddingIndex, query: np.ndarray, rows: np.ndarray, k: int, own: int | None) -> list[Match]:
    """The best k of the candidate `rows` (chosen in float32), scored again in float64 from the
    stored rows: a match's score does not depend on which other queries or rows shared its
    matrix product (float32 products of different shapes differ in the last bit)."""
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
