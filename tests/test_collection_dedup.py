"""Dedup: blocked threshold pairs + union-find equal connected components over all pairs."""

from __future__ import annotations

import os
from itertools import combinations

import numpy as np
import pytest
from PIL import Image

from bitcli.collection.dedup import _UnionFind, bf16_native, check_threshold, find_groups
from bitcli.collection.keep import paths_to_delete
from bitcli.collection.index import open_index
from bitcli.errors import UsageError
from collectionfiles import all_pairs_groups, clustered, cosine_matrix, write_embedding


def planted(rows: int = 400, dim: int = 32, seed: int = 0) -> np.ndarray:
    """Clustered rows with planted near-duplicates: pairs, a chain, a byte-identical triple."""
    rng = np.random.default_rng(seed)
    x = clustered(rows, dim, seed=seed, clusters=rows // 4)
    for a, b in [(3, 200), (10, 399), (50, 51)]:
        x[b] = x[a] + 0.05 * rng.standard_normal(dim)
    x[101] = x[100] + 0.3 * rng.standard_normal(dim)  # a chain 100 - 101 - 102
    x[102] = x[101] + 0.3 * rng.standard_normal(dim)
    x[[300, 301]] = x[7]
    return x


NEEDS_BF16 = pytest.mark.skipif(not bf16_native(), reason="no native bfloat16 on this CPU")
BLOCKS_AND_METHODS = [(7, "float32"), (128, "float32"), (None, "float32"), pytest.param(64, "bf16", marks=NEEDS_BF16), pytest.param(None, "bf16", marks=NEEDS_BF16)]


@pytest.mark.parametrize("threshold", [0.999, 0.98, 0.9, 0.6])
@pytest.mark.parametrize("block_rows, method", BLOCKS_AND_METHODS)
def test_groups_equal_all_pairs_connected_components(tmp_path, threshold, block_rows, method):
    vectors = planted()
    index = open_index(write_embedding(tmp_path, vectors))
    groups = find_groups(index, threshold, block_rows=block_rows, method=method)
    assert [g.rows for g in groups] == all_pairs_groups(vectors, threshold)
    assert [g.group for g in groups] == list(range(1, len(groups) + 1))
    assert all(g.paths == [index.paths[r] for r in g.rows] for g in groups)


def test_group_scores_are_the_extremes_over_all_member_pairs(tmp_path):
    vectors = planted()
    index = open_index(write_embedding(tmp_path, vectors))
    sims = cosine_matrix(vectors, vectors)
    groups = find_groups(index, 0.9, block_rows=64)
    assert groups, "the planted duplicates form groups"
    for g in groups:
        pairs = [sims[a, b] for a, b in combinations(g.rows, 2)]
        assert g.min_score == pytest.approx(min(pairs), abs=1e-7)
        assert g.max_score == pytest.approx(max(pairs), abs=1e-7)
        assert g.scores_to_first[0] == 1.0
        assert g.scores_to_first[1:] == pytest.approx([sims[g.rows[0], r] for r in g.rows[1:]], abs=1e-7)


def test_largest_group_first_then_by_first_row(tmp_path):
    vectors = planted()
    groups = find_groups(open_index(write_embedding(tmp_path, vectors)), 0.98)
    keys = [(-len(g.rows), g.rows[0]) for g in groups]
    assert keys == sorted(keys) and len(groups[0].rows) == 3


def test_a_chain_joins_members_below_the_threshold(tmp_path):
    vectors = planted()
    sims = cosine_matrix(vectors, vectors)
    threshold = float(min(sims[100, 101], sims[101, 102]))
    assert sims[100, 102] < threshold  # the ends are further apart than the links
    groups = find_groups(open_index(write_embedding(tmp_path, vectors)), threshold - 1e-4)
    chain = next(g for g in groups if 100 in g.rows)
    assert {100, 101, 102} <= set(chain.rows) and chain.min_score < threshold


@pytest.mark.parametrize("threshold", [1.5, -1.01, float("nan"), float("inf")])
def test_threshold_outside_minus_one_to_one_is_a_usage_error(tmp_path, threshold):
    with pytest.raises(UsageError, match="between -1 and 1"):
        check_threshold(threshold)
    with pytest.raises(UsageError):
        find_groups(open_index(write_embedding(tmp_path, clustered(40, 8))), threshold)


@pytest.mark.parametrize("method", ["float32", pytest.param("bf16", marks=NEEDS_BF16)])
def test_threshold_one_groups_byte_identical_rows(tmp_path, method):
    """Identical float32 unit rows often score 0.99999994 in float32; their cosine (what dedup
    reports) is 1, so --threshold 1 must still group them, and nothing else."""
    x = clustered(40, 2048, seed=3)
    copies = {0: [20, 39], 5: [6], 11: [30], 17: [18], 25: [26], 33: [34]}
    for source, targets in copies.items():
        x[targets] = x[source]
    x[1] = x[2] * np.float32(1.0001)  # parallel, not identical: cosine 1 too
    groups = find_groups(open_index(write_embedding(tmp_path, x)), 1.0, method=method)
    expected = sorted(([s, *t] for s, t in copies.items()), key=lambda g: (-len(g), g[0]))
    assert [g.rows for g in groups if g.rows != [1, 2]] == expected
    assert all(g.min_score == 1.0 for g in groups)


def test_threshold_minus_one_puts_every_row_in_one_group(tmp_path):
    groups = find_groups(open_index(write_embedding(tmp_path, clustered(60, 8))), -1.0, block_rows=16)
    assert [g.rows for g in groups] == [list(range(60))]


def test_blocks_of_one_row_give_the_same_groups(tmp_path):
    vectors = planted()[:120]
    vectors[[60, 61]] = vectors[3]
    groups = find_groups(open_index(write_embedding(tmp_path, vectors)), 0.95, block_rows=1, method="float32")
    assert [g.rows for g in groups] == all_pairs_groups(vectors, 0.95)


@NEEDS_BF16
def test_the_bf16_pre_filter_keeps_pairs_just_above_the_threshold(tmp_path):
    """Pairs at threshold + 1e-4 .. 5e-3 (where bfloat16 alone would misjudge) are all found."""
    rng = np.random.default_rng(8)
    base = rng.standard_normal((40, 256))
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    noise = rng.standard_normal((40, 256))
    noise -= (noise * base).sum(1, keepdims=True) * base  # orthogonal to base
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    cos = 0.9 + np.geomspace(1e-4, 5e-3, 40)
    twins = cos[:, None] * base + np.sqrt(1 - cos[:, None] ** 2) * noise
    vectors = np.concatenate([base, twins]).astype(np.float32)
    groups = find_groups(open_index(write_embedding(tmp_path, vectors)), 0.9, method="bf16")
    assert [g.rows for g in groups] == all_pairs_groups(vectors, 0.9)
    assert len(groups) == 40


def test_union_find_agrees_with_a_plain_one_on_random_pairs():
    rng = np.random.default_rng(4)
    n = 500
    uf = _UnionFind(n)
    parent = list(range(n))

    def find(x):
        while parent[x] != x:
            x = parent[x]
        return x

    for _ in range(20):
        a, b = rng.integers(0, n, 40), rng.integers(0, n, 40)
        uf.union(a, b)
        for x, y in zip(a, b):
            parent[find(x)] = find(y)
    labels = uf.labels()
    for x, y in combinations(range(0, n, 7), 2):
        assert (labels[x] == labels[y]) == (find(x) == find(y))
    assert all(labels[x] == min(r for r in range(n) if find(r) == find(x)) for x in range(0, n, 31))


def test_groups_are_labelled_by_their_smallest_member(tmp_path):
    vectors = planted()
    first = {row: g.rows[0] for g in find_groups(open_index(write_embedding(tmp_path, vectors)), 0.98) for row in g.rows}
    assert first[200] == 3 and first[301] == 7 and first.get(5, 5) == 5


# -- --keep ------------------------------------------------------------------------------------


def _image(path, size, seed):
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)


@pytest.fixture
def photo_index(tmp_path, monkeypatch):
    """Group 1: a.png (small, newest), b.png (largest), c.png; group 2: d.png + a second row for d.png."""
    monkeypatch.chdir(tmp_path)
    _image("a.png", (20, 10), 1)
    _image("b.png", (40, 30), 2)
    _image("c.png", (30, 20), 3)
    _image("d.png", (8, 8), 4)
    for name, mtime in [("a.png", 3_000_000_000), ("b.png", 1_000_000_000), ("c.png", 2_000_000_000)]:
        os.utime(name, ns=(mtime, mtime))
    base = np.random.default_rng(0).standard_normal(16)
    other = np.random.default_rng(1).standard_normal(16)
    vectors = np.stack([base, base * 1.01, base + 0.01, other, other, -base]).astype(np.float32)
    index = open_index(write_embedding(tmp_path / "out", vectors, ["a.png", "b.png", "c.png", "d.png", "d.png", "gone.png"], cwd=str(tmp_path)))
    return index, find_groups(index, 0.99)


@pytest.mark.parametrize(
    "keep, deleted",
    [("first", ["b.png", "c.png"]), ("largest", ["a.png", "c.png"]), ("newest", ["b.png", "c.png"])],
)
def test_keep_lists_every_member_but_the_kept_one(photo_index, keep, deleted):
    index, groups = photo_index
    assert [g.paths for g in groups] == [["a.png", "b.png", "c.png"], ["d.png", "d.png"]]
    assert paths_to_delete(index, groups, keep).delete == deleted  # d.png twice is one file: kept


def test_keep_newest_prefers_the_latest_mtime(photo_index, tmp_path):
    index, _ = photo_index
    os.utime("c.png", ns=(4_000_000_000, 4_000_000_000))
    vectors = index.take(range(index.rows))
    index = open_index(write_embedding(tmp_path / "again", vectors, index.paths, cwd=str(tmp_path)))
    assert paths_to_delete(index, find_groups(index, 0.99), "newest").delete == ["a.png", "b.png"]


def test_keep_never_lists_a_file_changed_since_it_was_embedded(photo_index):
    """Overwritten after embedding (another mtime): reported, neither deleted nor kept."""
    index, groups = photo_index
    os.utime("a.png", ns=(5_000_000_000, 5_000_000_000))
    deletions = paths_to_delete(index, groups, "first")
    assert (deletions.delete, deletions.changed) == (["c.png"], ["a.png"])


def test_keep_never_lists_a_hard_link_to_the_kept_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _image("x.png", (10, 10), 1)
    os.link("x.png", "y.png")
    v = np.random.default_rng(0).standard_normal((1, 8)).astype(np.float32)
    index = open_index(write_embedding(tmp_path / "o", np.concatenate([v, v]), ["x.png", "y.png"], cwd=str(tmp_path)))
    assert paths_to_delete(index, find_groups(index, 0.99), "first").delete == []


def test_keep_skips_files_that_are_gone(photo_index):
    index, groups = photo_index
    os.remove("a.png")
    assert paths_to_delete(index, groups, "first").delete == ["c.png"]


def test_unknown_keep_policy_is_a_usage_error(photo_index):
    index, groups = photo_index
    with pytest.raises(UsageError, match="--keep"):
        paths_to_delete(index, groups, "oldest")


def test_keep_says_run_again_when_the_collection_was_republished_meanwhile(photo_index, tmp_path):
    """An `--update` published between finding the groups and checking the members: the row file
    is the new set's, so nothing is listed and the advice is to run again, not to embed anew."""
    index, groups = photo_index
    os.utime("a.png", ns=(6_000_000_000, 6_000_000_000))
    write_embedding(tmp_path / "out", index.take(range(index.rows)), index.recorded, cwd=str(tmp_path))
    with pytest.raises(UsageError) as caught:
        paths_to_delete(index, groups, "first")
    assert "again" in str(caught.value) and "--overwrite" not in str(caught.value)
