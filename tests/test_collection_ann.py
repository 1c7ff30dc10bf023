"""The optional faiss index: built beside the array, used when fresh, exact scores, good recall."""

from __future__ import annotations

import json
import os
import shutil
import sys

import numpy as np
import pytest

from bitcli.collection import ann
from bitcli.collection.index import open_index
from bitcli.collection.queries import search
from bitcli.collection.exact import exact_search
from bitcli.errors import UsageError
from collectionfiles import clustered, cosine_matrix, write_embedding

pytest.importorskip("faiss")

ROWS, DIM = 12_000, 32


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    directory = tmp_path_factory.mktemp("ann")
    vectors = clustered(ROWS, DIM, seed=1, clusters=300, dtype=np.float16)
    index = open_index(write_embedding(directory, vectors))
    ann.build(index)
    return index, vectors


@pytest.mark.slow
def test_build_writes_the_index_and_its_description_beside_the_array(built):
    index, _ = built
    paths = ann.AnnPaths.for_array(index.array_path)
    assert paths.index.name == "e.ann.faiss" and paths.index.stat().st_size > 0
    info = json.loads(paths.info.read_text())
    assert info["rows"] == ROWS and info["dim"] == DIM and info["factory"].startswith("IVF")
    assert not [p for p in os.listdir(index.array_path.parent) if p.endswith(".tmp")]


def test_search_uses_it_with_exact_scores_and_high_recall(built):
    index, vectors = built
    rng = np.random.default_rng(3)
    queries = vectors[rng.choice(ROWS, 40)].astype(np.float32) + 0.3 * rng.standard_normal((40, DIM)).astype(np.float32)
    approx = search(index, queries, 10)
    assert approx.method.startswith("faiss IVF") and approx.notice is None
    exact = exact_search(index, queries, 10)
    assert ann.recall_at_k(exact, approx.matches) >= 0.9
    sims = cosine_matrix(queries, vectors)
    for j, matches in enumerate(approx.matches):
        assert [m.score for m in matches] == pytest.approx([sims[j, m.row] for m in matches], abs=1e-7)
        assert [m.score for m in matches] == sorted((m.score for m in matches), reverse=True)
    assert search(index, queries[:3], 10, exact=True).matches == exact[:3]


def test_a_query_row_is_excluded_from_its_own_results(built):
    index, _ = built
    (matches,) = search(index, index.take([17]), 5, exclude=[17]).matches
    assert 17 not in [m.row for m in matches] and len(matches) == 5


def test_a_stale_index_is_ignored_with_a_notice(built, tmp_path):
    index, vectors = built
    for name in os.listdir(index.array_path.parent):
        shutil.copy2(index.array_path.parent / name, tmp_path / name)
    assert search(open_index(tmp_path / "e.npy"), vectors[:1], 3).exact is False  # the copy is fresh
    np.save(tmp_path / "e.npy", vectors[::-1].copy())  # the array changed after the build
    outcome = search(open_index(tmp_path / "e.npy"), vectors[:2], 3)
    assert outcome.exact and "rebuild" in outcome.notice


def test_too_small_an_index_is_refused(tmp_path):
    index = open_index(write_embedding(tmp_path, clustered(500, 8)))
    with pytest.raises(UsageError, match="at least 10000"):
        ann.build(index)


@pytest.mark.parametrize("name", ["e.ann.faiss", "e.ann.json"])
def test_a_link_or_special_file_where_the_index_goes_is_refused_before_any_work(tmp_path, name):
    index = open_index(write_embedding(tmp_path, clustered(10_000, 8)))
    (tmp_path / "target").write_text("precious")
    (tmp_path / name).symlink_to(tmp_path / "target")
    with pytest.raises(UsageError, match="symbolic link"):
        ann.build(index)
    assert (tmp_path / name).is_symlink() and (tmp_path / "target").read_text() == "precious"


def test_without_faiss_build_explains_how_to_install_and_search_falls_back(built, monkeypatch):
    index, vectors = built
    monkeypatch.setitem(sys.modules, "faiss", None)  # import faiss -> ImportError
    with pytest.raises(UsageError, match=r"pip install 'bitcli\[search\]'"):
        ann.build(index)
    outcome = search(index, vectors[:1].astype(np.float32), 3)
    assert outcome.exact and "faiss is not installed" in outcome.notice


def test_recall_at_k_counts_shared_rows():
    from bitcli.collection.exact import Match

    def matches(rows):
        return [Match(rank=i + 1, row=r, path=str(r), score=0.0) for i, r in enumerate(rows)]

    assert ann.recall_at_k([matches([1, 2, 3, 4])], [matches([4, 3, 9, 8])]) == 0.5


@pytest.mark.parametrize("name", ["e.ann.faiss", "e.ann.json"])
def test_a_file_bitcli_did_not_write_where_the_index_goes_is_kept(tmp_path, name):
    index = open_index(write_embedding(tmp_path, clustered(10_000, 8)))
    (tmp_path / name).write_text("precious notes\n")
    with pytest.raises(UsageError, match="was not written by bit search --build-index"):
        ann.build(index)
    assert (tmp_path / name).read_text() == "precious notes\n"


@pytest.mark.slow
def test_a_rebuild_replaces_the_index_bitcli_wrote(built, tmp_path):
    index, vectors = built
    for name in os.listdir(index.array_path.parent):
        shutil.copy2(index.array_path.parent / name, tmp_path / name)
    copy = open_index(tmp_path / "e.npy")
    ann.build(copy)  # over the index and description it wrote before
    assert search(copy, vectors[:1].astype(np.float32), 3).exact is False


def test_a_rebuild_replaces_an_sq8_index_bitcli_wrote(tmp_path):
    """An odd width has no even product-quantizer split: the index is SQ8, a faiss file of another kind."""
    index = open_index(write_embedding(tmp_path, clustered(10_000, 9)))
    assert ann.build(index).info["factory"].endswith("SQ8")
    assert ann.build(index).info["factory"].endswith("SQ8")  # over its own files
