"""`bit search`'s queries: a QUERY that names a row of the index and is still the file embedded
uses that row (no model; the row is not its own match); anything else is embedded with the
index's own model and settings (`query_settings`), or `--model` for a plain `.npy`. `search`
answers query vectors from the approximate index (`ann.py`) when fresh, else exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import IO, Any, Callable, Iterable, Sequence

import numpy as np

from bitcli.collection.index import EmbeddingIndex
from bitcli.collection.exact import Match, check_k, check_queries, exact_matches
from bitcli.errors import InputError, UsageError
from bitcli.results import Outcome
from bitcli.store.metadata import still_embedded


@dataclass
class SearchOutcome:
    """Matches per query and how they were found ("exact, float32 pre-score", or the approximate index's name)."""

    matches: list[list[Match]]
    method: str = "exact"
    notice: str | None = None  # e.g. why an approximate index beside the array was not used

    @property
    def exact(self) -> bool:
        return self.method.startswith("exact")


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
        from bitcli.collection import ann  # faiss only when an index is there

        found, notice = ann.load_fresh(index)
        if found is not None:
            return SearchOutcome(found.search(index, queries, k, exclude=exclude), method=found.name)
    matches, scoring = exact_matches(index, queries, k, exclude, block_rows, None)
    return SearchOutcome(matches, method=f"exact, {scoring} pre-score", notice=notice)


@dataclass
class Query:
    """One query, in input order: a stored `row`, an `item` to embed, or an `error`."""

    path: str
    row: int | None = None
    item: Any = None  # bitcli.inputs.InputItem
    vector: Any = None  # float32 [D] once known
    error: str | None = None


@dataclass
class QueryResult(Outcome):
    """What `bit search` prints for one query (jsonl: one object per query, in input order)."""

    NAME = "query"
    query: str
    matches: list[Match] = field(default_factory=list)
    error: str | None = None
    method: str | None = None  # how the matches were found (`SearchOutcome.method`)

    def fields(self) -> dict[str, Any]:
        record = {"matches": [m.to_dict() for m in self.matches]}
        return {**record, "method": self.method} if self.method else record


def answer(
    index: EmbeddingIndex,
    args: Iterable[str],
    k: int,
    embed: Callable[[list[Query]], Iterable[Any]],
    *,
    exact: bool = False,
    stdin: IO[str] | None = None,
    null: bool = False,
) -> tuple[list[QueryResult], SearchOutcome | None]:
    """One result per QUERY, in order, and the search's outcome (None when no query has a vector).
    Queries that are rows use their stored rows; `embed` gets the others (when there are any) and
    returns their EmbedResults in order. `null`: paths on stdin (`-`) are NUL-separated."""
    queries = _plan(index, list(args), stdin, null)
    pending = [q for q in queries if q.item is not None]
    embedded = embed(pending) if pending else []
    rows = [q for q in queries if q.row is not None]
    for query, vector in zip(rows, index.take([q.row for q in rows])):
        query.vector = vector
    for result, query in zip(embedded, pending):
        if result.ok:
            query.vector = np.asarray(result.vector, dtype=np.float32)
        else:
            query.error = str(result.error)
    ready = [q for q in queries if q.vector is not None]
    outcome = search(index, np.stack([q.vector for q in ready]), k, exclude=[q.row for q in ready], exact=exact) if ready else None
    answered = iter(outcome.matches if outcome else [])
    results = []
    for q in queries:
        if q.vector is None:
            results.append(QueryResult(q.path, error=q.error or "no vector"))
        else:
            results.append(QueryResult(q.path, next(answered), method=outcome.method))
    return results, outcome


def _plan(index: EmbeddingIndex, args: list[str], stdin: IO[str] | None, null: bool) -> list[Query]:
    """Every query, in order, as a stored row, an input to embed, or an input that failed."""
    from bitcli.inputs import expand_inputs

    direct = _unchanged(index, index.find_rows([a for a in args if a != "-"]))
    queries: list[Query] = []
    for arg in args:
        if arg != "-" and arg in direct:
            queries.append(Query(arg, row=direct[arg]))
            continue
        for found in expand_inputs([arg], stdin=stdin if arg == "-" else None, null=null):
            if isinstance(found, InputError):
                queries.append(Query(found.path, error=found.reason))
            else:
                queries.append(Query(found.path, item=found))
    rows = _unchanged(index, index.find_rows([q.path for q in queries if q.item is not None]))
    for query in queries:
        if query.item is not None and query.path in rows:
            query.row, query.item = rows[query.path], None
    return queries


def _unchanged(index: EmbeddingIndex, found: dict[str, int]) -> dict[str, int]:
    """The queries of `found` (query -> row) whose stored row still describes the file they name
    (a file overwritten since is embedded again); a query naming no file from here keeps its row."""
    try:
        recorded = index.identities(set(found.values())) if found else None
    except UsageError:
        return found  # no readable row file: nothing to check against
    if recorded is None:
        return found
    kept = {}
    for query, row in found.items():
        try:
            if still_embedded(query, recorded[row]):
                kept[query] = row
        except FileNotFoundError:
            kept[query] = row
        except OSError:
            pass  # not readable as a file: embedding reports why
    return kept


def query_settings(index: EmbeddingIndex, model: str | None, first_query: str) -> tuple[str, dict[str, Any]]:
    """(model reference, RunOptions fields) to embed queries as the index's rows were embedded."""
    meta = index.meta
    if model is None and meta is None:
        raise UsageError(
            f"{index.array_path} has no metadata ({index.array_path.stem}.meta.json) saying which model made it; "
            f"pass --model to embed {first_query}, or query with paths that are in the index"
        )
    if meta is None:
        return model, {}
    settings = {
        "precision": meta.settings.model.get("precision") or "fp32",
        "fast_jpeg": bool(meta.settings.decode.get("fast_jpeg", False)),
        "max_pixels": meta.settings.decode.get("max_pixels"),
    }
    return model or meta.model_reference(), settings


def settings_differ(index: EmbeddingIndex, fingerprint: dict[str, Any]) -> str | None:
    """Why queries embedded with `fingerprint` would not be comparable with the rows (or None).
    UsageError when the index's model was changed in place (same reference, other content)."""
    from bitcli.store.metadata import EmbeddingMetadata, check_compatible

    if index.meta is None:
        return None
    current = EmbeddingMetadata.from_fingerprint(
        {**fingerprint, "dtype": index.meta.settings.dtype, "normalize": index.meta.settings.normalize}, rows=0, feature_dim=index.dim
    )
    try:
        check_compatible(index.meta, current, str(index.array_path))
    except UsageError as exc:
        if index.meta.settings.model_changed(current.settings):
            raise  # the same model's name, other weights: every score would mislead
        return str(exc).split("; update with", 1)[0]
    return None


def check_min_score(min_score: float | None) -> None:
    """A cosine similarity lies in [-1, 1]: anything else (NaN too) is a usage error."""
    if min_score is not None and not (-1.0 <= min_score <= 1.0):
        raise UsageError(f"--min-score {min_score}: must be between -1 and 1 (a cosine similarity)")


def at_least(found: list[QueryResult], min_score: float | None) -> list[QueryResult]:
    """The results with only the matches scoring `min_score` or more (of the top k)."""
    for result in found if min_score is not None else ():
        result.matches = [m for m in result.matches if m.score >= min_score]
    return found
