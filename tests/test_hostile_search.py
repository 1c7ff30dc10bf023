"""Search against hostile collections: byte-identical rows (ties) and a damaged approximate index.

Ties: the documented order, score (highest first) then row (lowest first), holds whatever --top-k
and however the rows are split into blocks. A damaged `.ann.faiss` never crashes a search nor
answers with rows that do not exist: exact search answers, with one notice.
"""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest

from bitcli.collection.index import open_index
from bitcli.collection.queries import search
from bitcli.collection.exact import exact_search
from collectionfiles import clustered, write_embedding

COPIES = 12


def exact_order(vectors: np.ndarray, query: np.ndarray) -> list[int]:
    """Rows by (score desc, row asc), scores as correctly rounded sums (math.fsum): a reference
    that cannot depend on any row's position."""
    q = [float(v) for v in query]
    qn = math.sqrt(math.fsum(v * v for v in q))
    scores = []
    for row in vectors.astype(np.float64):
        norm = math.sqrt(math.fsum(float(v) * float(v) for v in row))
        scores.append(math.fsum(float(a) * b for a, b in zip(row, q)) / (norm * qn) if norm and qn else 0.0)
    return sorted(range(len(vectors)), key=lambda r: (-scores[r], r))


@pytest.mark.parametrize("dim", [7, 1000])
def test_ties_follow_score_then_row_whatever_k_and_block_size(tmp_path, dim):
    rng = np.random.default_rng(dim)
    base = rng.standard_normal(dim).astype(np.float32)
    others = rng.standard_normal((9, dim)).astype(np.float32)
    vectors = np.concatenate([others[:3], np.repeat(base[None], COPIES, 0), others[3:]])  # copies at rows 3..14
    query = (base + 0.05 * rng.standard_normal(dim)).astype(np.float32)[None]
    index = open_index(write_embedding(tmp_path, vectors))
    expected = exact_order(vectors, query[0])
    assert expected[:COPIES] == list(range(3, 3 + COPIES))  # the copies are the best, in row order
    for block_rows in (1, 2, 3, 5, 7, 13, None):
        for k in range(1, len(vectors) + 1):
            (matches,) = exact_search(index, query, k, block_rows=block_rows)
            assert [m.row for m in matches] == expected[:k], (block_rows, k)
            copies = [m.score for m in matches if 3 <= m.row < 3 + COPIES]
            assert len(set(copies)) <= 1  # byte-identical rows score identically


def test_ties_against_many_queries_at_once(tmp_path):
    rng = np.random.default_rng(5)
    base = rng.standard_normal(33).astype(np.float32)
    vectors = np.concatenate([rng.standard_normal((4, 33)), np.repeat(base[None], COPIES, 0)]).astype(np.float32)
    queries = (base + 0.1 * rng.standard_normal((6, 33))).astype(np.float32)
    index = open_index(write_embedding(tmp_path, vectors))
    for k in (1, 4, 11):
        for j, matches in enumerate(exact_search(index, queries, k, block_rows=5)):
            assert [m.row for m in matches] == exact_order(vectors, queries[j])[:k]


# -- a damaged approximate index ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    pytest.importorskip("faiss")
    from bitcli.collection import ann

    directory = tmp_path_factory.mktemp("ann")
    vectors = clustered(12_000, 32, seed=1, clusters=300, dtype=np.float16)
    index = open_index(write_embedding(directory, vectors))
    ann.build(index)
    return directory, vectors


def copy_of(built, into):
    directory, vectors = built
    for path in directory.iterdir():
        shutil.copy2(path, into / path.name)
    return into / "e.npy", vectors


def test_every_byte_corruption_falls_back_to_exact_with_one_notice(built, tmp_path):
    array, vectors = copy_of(built, tmp_path)
    faiss_file = tmp_path / "e.ann.faiss"
    pristine = faiss_file.read_bytes()
    index = open_index(array)
    queries = vectors[:3].astype(np.float32)
    exact = exact_search(index, queries, 5)
    rng = np.random.default_rng(0)
    for position in rng.choice(len(pristine), 40, replace=False):
        damaged = bytearray(pristine)
        damaged[position] ^= 1 + int(rng.integers(255))
        faiss_file.write_bytes(bytes(damaged))
        outcome = search(open_index(array), queries, 5)
        assert outcome.exact and "damaged" in outcome.notice, position
        assert outcome.matches == exact
    faiss_file.write_bytes(pristine)
    assert search(open_index(array), queries, 5).exact is False


def test_an_index_without_a_digest_never_answers_rows_that_do_not_exist(built, tmp_path):
    """Out-of-range ids (what random corruption made faiss return) are dropped, never looked up."""
    from bitcli.collection import ann

    array, vectors = copy_of(built, tmp_path)
    index = open_index(array)
    info = json.loads((tmp_path / "e.ann.json").read_text())

    class Lying:
        nprobe = 1

        def search(self, unit, wanted):
            ids = np.full((len(unit), wanted), -1, dtype=np.int64)
            ids[:, :3] = [index.rows + 5, 2**40, 7]
            return np.zeros(ids.shape, np.float32), ids

    matches = ann.AnnIndex(Lying(), info).search(index, vectors[:1].astype(np.float32), 3)
    assert [m.row for m in matches[0]] == [7]


def test_a_replaced_index_of_another_size_is_not_used(built, tmp_path):
    from bitcli.collection import ann

    array, vectors = copy_of(built, tmp_path)
    info_path = tmp_path / "e.ann.json"
    info = json.loads(info_path.read_text())
    del info["index_sha256"], info["index_size"]  # as an index built before the digest existed
    info_path.write_text(json.dumps(info))
    index = open_index(array)
    found, notice = ann.load_fresh(index)
    assert found is not None and notice is None
    import faiss

    small = faiss.IndexFlatIP(32)
    small.add(np.zeros((3, 32), np.float32))
    faiss.write_index(small, str(tmp_path / "e.ann.faiss"))
    found, notice = ann.load_fresh(open_index(array))
    assert found is None and "damaged" in notice
