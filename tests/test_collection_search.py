"""Exact search: scores equal numpy's cosine on the stored rows; blocks never change the answer."""

from __future__ import annotations

import numpy as np
import pytest

from bitcli.collection.index import open_index
from bitcli.collection.queries import search
from bitcli.collection.exact import exact_search, to_matches
from bitcli.errors import UsageError
from collectionfiles import brute_force_top_k, clustered, cosine_matrix, write_embedding


@pytest.fixture
def tied_vectors():
    """Clustered rows plus byte-identical copies (equal scores: order must be by row)."""
    vectors = clustered(300, 24, seed=3, dtype=np.float16)
    vectors[[40, 41, 250, 299]] = vectors[7]
    vectors[120] = 0  # a zero row scores 0 with everything
    return vectors


@pytest.mark.parametrize("block_rows", [1, 2, 7, 64, 299, 300, 1000, None])
def test_blocked_search_equals_brute_force(tmp_path, tied_vectors, block_rows):
    index = open_index(write_embedding(tmp_path, tied_vectors))
    queries = np.concatenate([tied_vectors[[7, 0, 120]].astype(np.float32), clustered(5, 24, seed=9)])
    results = exact_search(index, queries, 8, block_rows=block_rows)
    for query, matches in zip(queries, results):
        assert [m.row for m in matches] == brute_force_top_k(tied_vectors, query, 8)
        assert [m.rank for m in matches] == list(range(1, 9))


def test_scores_equal_numpy_cosine_on_the_stored_rows(tmp_path, tied_vectors):
    index = open_index(write_embedding(tmp_path, tied_vectors))
    queries = clustered(6, 24, seed=11)
    expected = cosine_matrix(queries, tied_vectors)
    for j, matches in enumerate(exact_search(index, queries, 20, block_rows=50)):
        for m in matches:
            assert m.score == pytest.approx(expected[j, m.row], abs=1e-7)
            assert m.path == index.paths[m.row]
            assert m.score == float(str(np.float32(m.score)))  # shortest float32 form


def test_a_query_from_the_index_can_exclude_its_own_row(tmp_path, tied_vectors):
    index = open_index(write_embedding(tmp_path, tied_vectors))
    (matches,) = exact_search(index, index.take([7]), 5, exclude=[7], block_rows=33)
    assert [m.row for m in matches] == [40, 41, 250, 299, brute_force_top_k(tied_vectors, tied_vectors[7], 6, exclude=7)[4]]
    assert matches[0].score == pytest.approx(1.0, abs=1e-6)


def test_top_k_larger_than_the_index_returns_every_row(tmp_path):
    vectors = clustered(5, 8)
    index = open_index(write_embedding(tmp_path, vectors))
    (matches,) = exact_search(index, vectors[:1], 50, exclude=[0])
    assert sorted(m.row for m in matches) == [1, 2, 3, 4]


def test_the_zero_row_scores_zero(tmp_path, tied_vectors):
    index = open_index(write_embedding(tmp_path, tied_vectors))
    (matches,) = exact_search(index, clustered(1, 24, seed=5), 300)
    assert [m.score for m in matches if m.row == 120] == [0.0]


def test_bad_queries_are_usage_errors(tmp_path):
    index = open_index(write_embedding(tmp_path, clustered(5, 8)))
    with pytest.raises(UsageError, match="--top-k"):
        exact_search(index, clustered(1, 8), 0)
    with pytest.raises(UsageError, match="cannot be compared with 8-dimensional"):
        exact_search(index, np.ones((1, 9), np.float32), 3)


def test_search_without_an_approximate_index_is_exact(tmp_path):
    vectors = clustered(50, 8)
    index = open_index(write_embedding(tmp_path, vectors))
    outcome = search(index, vectors[:2], 3)
    assert outcome.exact and outcome.notice is None
    assert outcome.matches == exact_search(index, vectors[:2], 3)


def test_candidates_are_ranked_by_score_then_row_whatever_their_order(tmp_path):
    """The approximate index's candidates come in any order: ties still go to the lowest row."""
    vectors = np.array([[0, 1], [1, 0], [1, 1], [1, 0], [3, 1], [1, 0]], dtype=np.float32)
    index = open_index(write_embedding(tmp_path, vectors))
    matches = to_matches(index, np.array([1.0, 0.0]), np.array([5, 4, 3, 0, 1, 2]), 4, None)
    assert [m.row for m in matches] == [1, 3, 5, 4] and matches[0].score == matches[2].score == 1.0
    assert [m.row for m in to_matches(index, np.array([1.0, 0.0]), np.array([5, 3, 1]), 2, own=1)] == [3, 5]


COLLECTION_EXPORTS = (
    "DEFAULT_THRESHOLD", "DuplicateGroup", "EmbeddingIndex", "KEEP_POLICIES", "Match", "SearchOutcome",
    "check_threshold", "exact_search", "find_groups", "open_index", "paths_to_delete", "search",
)


@pytest.mark.parametrize("first", COLLECTION_EXPORTS)
def test_every_export_of_the_package_is_itself_whatever_was_imported_first(first):
    """`from bitcli.collection import search` is the search function, never a module of that name
    that an earlier import (`Match`, `exact_search`, ...) loaded (a fresh interpreter each)."""
    import subprocess
    import sys

    code = (
        f"from bitcli.collection import {first}\n"
        "import types, bitcli.collection as c\n"
        "from bitcli.collection import search\n"
        "assert callable(search) and not isinstance(search, types.ModuleType), search\n"
        "modules = [n for n in c.__all__ if isinstance(getattr(c, n), types.ModuleType)]\n"
        "assert not modules, modules\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    import bitcli.collection

    assert sorted(bitcli.collection.__all__) == sorted(COLLECTION_EXPORTS)
