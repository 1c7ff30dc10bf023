"""Opening an embedding: validation of the array, manifest and metadata; streaming blocks."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from bitcli.collection.index import open_index
from bitcli.errors import UsageError
from bitcli.store.metadata import SidecarPaths
from collectionfiles import write_embedding


def test_opens_an_embedding_with_its_manifest_and_metadata(tmp_path):
    vectors = np.arange(12, dtype=np.float32).reshape(4, 3)
    out = write_embedding(tmp_path, vectors, ["a.jpg", "b.jpg", "c.jpg", "d.jpg"])
    index = open_index(out)
    assert (index.rows, index.dim) == (4, 3)
    assert index.paths == ["a.jpg", "b.jpg", "c.jpg", "d.jpg"]
    assert index.meta is not None and index.meta.rows == 4
    np.testing.assert_array_equal(index.take([2, 0]), vectors[[2, 0]])


def test_manifest_row_count_must_match_the_array(tmp_path):
    out = write_embedding(tmp_path, np.ones((3, 4), np.float32), meta=False)
    (tmp_path / "e.paths.txt").write_text("a\nb\n")
    with pytest.raises(UsageError, match=r"lists 2 paths but .* has 3 rows"):
        open_index(out)


def test_metadata_must_describe_this_array(tmp_path):
    out = write_embedding(tmp_path, np.ones((3, 4), np.float32))
    np.save(out, np.ones((3, 5), np.float32))  # replaced behind the metadata's back
    with pytest.raises(UsageError, match="4-dimensional rows but"):
        open_index(out)


def test_an_empty_index_is_a_usage_error_unless_allowed(tmp_path):
    out = write_embedding(tmp_path, np.zeros((0, 8), np.float32), [])
    with pytest.raises(UsageError, match="has no rows"):
        open_index(out)
    assert open_index(out, allow_empty=True).rows == 0


def test_a_plain_npy_without_metadata_opens_with_meta_none(tmp_path):
    out = write_embedding(tmp_path, np.ones((2, 4), np.float32), meta=False)
    index = open_index(out)
    assert index.meta is None and index.paths == ["img00000.jpg", "img00001.jpg"]


def test_a_missing_manifest_names_the_file_and_the_option(tmp_path):
    np.save(tmp_path / "x.npy", np.ones((2, 4), np.float32))
    with pytest.raises(UsageError, match=r"x\.paths\.txt.*--manifest"):
        open_index(tmp_path / "x.npy")
    (tmp_path / "rows.txt").write_text("p\nq\n")
    assert open_index(tmp_path / "x.npy", manifest=tmp_path / "rows.txt").paths == ["p", "q"]


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p.write_bytes(b"not numpy"), "not a .npy"),
        (lambda p: np.save(p, np.ones((2, 3, 4), np.float32)), "not \\[rows, dim\\]"),
        (lambda p: np.save(p, np.ones((2, 3), np.int64)), "int64 values"),
        (lambda p: np.save(p, np.array([{"a": 1}], dtype=object)), "not a .npy"),
        (lambda p: p.mkdir(), "is a directory"),
    ],
)
def test_bad_arrays_are_usage_errors(tmp_path, make, message):
    path = tmp_path / "bad.npy"
    make(path)
    with pytest.raises(UsageError, match=message):
        open_index(path)


def test_a_missing_array_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="no such file"):
        open_index(tmp_path / "nothing.npy")


@pytest.mark.parametrize("dtype", ["<f2", "<f4", "<f8", ">f4", ">f2"])
@pytest.mark.parametrize("block_rows", [1, 3, 7, 100])
def test_blocks_cover_every_row_exactly_once_as_float32(tmp_path, dtype, block_rows):
    vectors = np.random.default_rng(1).standard_normal((17, 5)).astype(dtype)
    out = write_embedding(tmp_path, vectors, meta=False)
    index = open_index(out)
    seen = [(first, block.copy()) for first, block in index.iter_blocks(block_rows)]
    assert [first for first, _ in seen] == list(range(0, 17, block_rows))
    assert all(block.dtype == np.float32 for _, block in seen)
    np.testing.assert_array_equal(np.concatenate([b for _, b in seen]), vectors.astype(np.float32))


def test_fortran_ordered_arrays_are_read_correctly(tmp_path):
    vectors = np.asfortranarray(np.random.default_rng(2).standard_normal((9, 4)).astype(np.float32))
    out = write_embedding(tmp_path, vectors, meta=False)
    blocks = [b.copy() for _, b in open_index(out).iter_blocks(4)]
    np.testing.assert_array_equal(np.concatenate(blocks), vectors)


def test_find_rows_matches_the_string_or_the_same_file_from_another_directory(tmp_path, monkeypatch):
    photos = tmp_path / "photos"
    photos.mkdir()
    out = write_embedding(tmp_path, np.eye(3, dtype=np.float32), ["photos/a.jpg", "photos/b.jpg", "photos/a.jpg"], cwd=str(tmp_path))
    index = open_index(out)
    monkeypatch.chdir(photos)
    found = index.find_rows(["photos/a.jpg", "b.jpg", str(photos / "a.jpg"), "c.jpg"])
    assert found == {"photos/a.jpg": 0, "b.jpg": 1, str(photos / "a.jpg"): 0}


def test_locate_resolves_stored_relative_paths_against_the_embedding_directory(tmp_path, monkeypatch):
    (tmp_path / "a.jpg").write_bytes(b"x")
    out = write_embedding(tmp_path / "out", np.eye(2, dtype=np.float32), ["a.jpg", "gone.jpg"], cwd=str(tmp_path))
    index = open_index(out)
    monkeypatch.chdir(tmp_path / "out")
    assert index.locate("a.jpg") == os.path.join(str(tmp_path), "a.jpg")
    assert index.locate("gone.jpg") is None


def test_the_manifest_named_in_the_metadata_is_used(tmp_path):
    out = write_embedding(tmp_path, np.eye(2, dtype=np.float32), ["a", "b"])
    meta_path = SidecarPaths.for_output(out).meta
    header = json.loads(meta_path.read_text())
    (tmp_path / "e.paths.txt").rename(tmp_path / "rows.txt")
    header["manifest"] = "rows.txt"
    meta_path.write_text(json.dumps(header))
    assert open_index(out).paths == ["a", "b"]


@pytest.mark.parametrize("dtype", ["<f2", "<f4", ">f4", "<f8"])
def test_take_reads_any_rows_in_the_order_given(tmp_path, dtype):
    vectors = np.random.default_rng(3).standard_normal((11, 6)).astype(dtype)
    index = open_index(write_embedding(tmp_path, vectors, meta=False))
    rows = [10, 0, 3, 3, 7]
    np.testing.assert_array_equal(index.take(rows), vectors[rows].astype(np.float32))
    assert index.take([]).shape == (0, 6)
    with pytest.raises(IndexError):
        index.take([11])


def test_a_manifest_far_longer_than_the_rows_need_is_not_read_whole(tmp_path):
    out = write_embedding(tmp_path, np.ones((2, 4), np.float32), meta=False)
    (tmp_path / "e.paths.txt").write_bytes(b"x" * 100_000)  # no path is that long: not this array's manifest
    with pytest.raises(UsageError, match="far longer"):
        open_index(out)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_reads_come_from_the_array_as_opened_even_after_a_rename_over_it(tmp_path, dtype):
    """`bit embed --update`/`--overwrite` publish by renaming a new .npy over the name: an index
    opened before (another update's plan, a long dedup) must keep reading the rows its manifest
    describes, not the new file's rows under the old paths."""
    old = np.arange(40, dtype=dtype).reshape(10, 4)
    out = write_embedding(tmp_path, old)
    index = open_index(out)
    replacement = tmp_path / "new.npy"
    np.save(replacement, (np.arange(40, dtype=dtype).reshape(10, 4) + 1000)[::-1].copy())
    os.replace(replacement, out)
    np.testing.assert_array_equal(index.take([0, 7]), old[[0, 7]].astype(np.float32))
    np.testing.assert_array_equal(np.concatenate([b.copy() for _, b in index.iter_blocks(3)]), old.astype(np.float32))
    assert index.stat().st_ino != os.stat(out).st_ino


def test_an_empty_array_opens_as_zero_rows(tmp_path):
    out = write_embedding(tmp_path, np.zeros((0, 4), np.float32), [])
    index = open_index(out, allow_empty=True)
    assert (index.rows, index.dim, list(index.iter_blocks())) == (0, 4, [])


def test_rows_wider_than_one_read_are_read_in_chunks(tmp_path, monkeypatch):
    """One preadv reads at most about 2 GiB, so rows of 2^29 float32 take several reads: with the
    chunk made tiny, every row (and every block) still comes back whole."""
    from bitcli.collection import blocks

    monkeypatch.setattr(blocks, "_READ_CHUNK", 7)
    vectors = np.random.default_rng(5).standard_normal((4, 33)).astype(np.float32)
    index = open_index(write_embedding(tmp_path, vectors, meta=False))
    assert np.array_equal(index.take([3, 0]), vectors[[3, 0]])
    assert np.array_equal(np.concatenate([b.copy() for _, b in index.iter_blocks(block_rows=3)]), vectors)


def test_find_rows_equals_a_row_by_row_scan_on_tricky_paths(tmp_path, monkeypatch):
    """Suffix look-alikes (xa.jpg / a.jpg), one name in several folders, ./ and absolute
    spellings, repeated rows: the first matching row, as a plain scan of every row finds it."""
    rng = np.random.default_rng(5)
    pool = ["a.jpg", "xa.jpg", "d/a.jpg", "./d/a.jpg", "e/d/a.jpg", "b c.jpg", "d/xa.jpg", str(tmp_path / "abs.jpg"), "abs.jpg"]
    paths = [pool[i] for i in rng.integers(0, len(pool), 60)]
    out = write_embedding(tmp_path / "out", np.zeros((60, 2), np.float32) + 1, paths, cwd=str(tmp_path))
    index = open_index(out)
    (tmp_path / "d").mkdir()
    monkeypatch.chdir(tmp_path / "d")
    queries = ["a.jpg", "xa.jpg", "../a.jpg", "./a.jpg", str(tmp_path / "d" / "a.jpg"), "d/a.jpg", "b c.jpg", "../abs.jpg", "abs.jpg", "nope.jpg", "e/d/a.jpg"]

    def absolute(path, base):
        return os.path.normpath(os.path.abspath(os.path.join(base, path) if base and not os.path.isabs(path) else path))

    expected = {}
    for query in queries:
        for row, (shown, stored) in enumerate(zip(index.paths, index.recorded)):
            if stored == query or absolute(shown, str(tmp_path)) == absolute(query, None):
                expected[query] = row
                break
    assert index.find_rows(queries) == expected
    assert len(expected) >= 6
