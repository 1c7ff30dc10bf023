"""Exact search and dedup at the speed of memory: whichever way rows are pre-scored (numpy,
torch float32, torch bfloat16), the answers equal float64's on random, near-tie and adversarial
rows; the margins hold the measured errors; the row norms kept beside a collection are used only
when they describe it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from bitcli.collection import norms
from bitcli.collection.blocks import MappedRows
from bitcli.collection.dedup import find_groups
from bitcli.collection.index import open_index
from bitcli.collection.queries import search
from bitcli.collection.exact import MIN_NORM, _NumpyScorer, _TorchScorer, exact_search, margin, unit_rows
from collectionfiles import all_pairs_groups, brute_force_top_k, clustered, cosine_matrix, write_embedding

PATHS = ["float32", "bfloat16"]


def near_ties(rows: int, dim: int, seed: int, spread: float = 1e-4) -> tuple[np.ndarray, np.ndarray]:
    """Rows whose cosines with the query all lie within about `spread` of each other near the top."""
    rng = np.random.default_rng(seed)
    query = rng.standard_normal(dim)
    noise = rng.standard_normal((rows, dim))
    noise -= np.outer(noise @ query / (query @ query), query)  # orthogonal to the query
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    angles = 0.3 + spread * rng.random(rows)
    vectors = np.cos(angles)[:, None] * query / np.linalg.norm(query) + np.sin(angles)[:, None] * noise
    vectors *= rng.uniform(0.5, 3.0, (rows, 1))  # norms differ: scores must divide by them
    return vectors.astype(np.float32), query.astype(np.float32)


@pytest.mark.parametrize("scoring", [*PATHS, "float16"])
@pytest.mark.parametrize("block_rows", [1, 5, 64, None])
def test_near_ties_rank_as_float64_whatever_the_path_and_block(tmp_path, scoring, block_rows):
    vectors, query = near_ties(300, 48, seed=1)
    if scoring == "float16":
        vectors = vectors.astype(np.float16)
    index = open_index(write_embedding(tmp_path, vectors))
    for k in (1, 7, 40):
        (matches,) = exact_search(index, query[None], k, block_rows=block_rows, scoring=scoring)
        assert [m.row for m in matches] == brute_force_top_k(vectors, query, k), (scoring, block_rows, k)
        expected = cosine_matrix(query[None], vectors)[0]
        assert all(abs(m.score - expected[m.row]) <= 1e-7 for m in matches)


@pytest.mark.parametrize("scoring", [None, *PATHS, "float16"])
def test_ties_and_top_k_do_not_change_the_order(tmp_path, scoring):
    """The property: for every k and block size the top k is a prefix of the same ranking."""
    rng = np.random.default_rng(3)
    base = rng.standard_normal(40).astype(np.float16)
    vectors = rng.standard_normal((120, 40)).astype(np.float16)
    vectors[rng.choice(120, 30, replace=False)] = base  # 30 byte-identical rows scattered about
    vectors[7] = 0
    index = open_index(write_embedding(tmp_path, vectors))
    queries = np.stack([base.astype(np.float32) + 0.1 * rng.standard_normal(40).astype(np.float32), rng.standard_normal(40)])
    full = exact_search(index, queries, 120, scoring=scoring)
    for j, query in enumerate(queries):
        assert [m.row for m in full[j]] == brute_force_top_k(vectors, query, 120)
    for block_rows in (1, 3, 16, 119):
        for k in (1, 2, 29, 30, 31, 119):
            for j, matches in enumerate(exact_search(index, queries, k, block_rows=block_rows, scoring=scoring)):
                assert matches == full[j][:k], (block_rows, k)


def measured_errors(values: np.ndarray, queries: np.ndarray, scoring: str) -> float:
    unit = unit_rows(queries.astype(np.float64))
    scorer = _NumpyScorer(values, unit) if scoring == "numpy" else _TorchScorer(values, unit, scoring)
    row_norms = norms.row_norms64(values)
    pre = scorer.scores(0, len(values)) / row_norms[:, None].astype(np.float32)
    exact = cosine_matrix(values, queries)
    trusted = np.isfinite(pre) & (row_norms >= MIN_NORM)[:, None]  # search re-scores the rest in float64
    assert trusted.mean() > 0.9
    return float(np.max(np.abs(pre - exact)[trusted]))


@pytest.mark.parametrize("scoring", ["numpy", "float32", "float16", "bfloat16"])
def test_the_margin_holds_the_worst_rounding(scoring):
    """Adversarial rows: every element just below a bfloat16 rounding midpoint, all of one sign, so
    every rounding error points the same way; plus float16 extremes and random rows."""
    dim = 2048
    ulp = 2.0**-7
    coherent = np.full((4, dim), 1 + 0.499 * ulp)  # bfloat16 rounds each element down by ~u
    coherent[1] = 1 + 1.499 * ulp
    coherent[2, ::2] = 3 + 0.499 * 2 * ulp
    extremes = np.full((3, dim), 65504.0)
    extremes[1, ::3] = 6.1e-5
    extremes[2] = 2.0**-14  # float16's smallest normal: products round in the subnormal range
    extremes[2, ::5] = 2.0**-10  # a norm just above MIN_NORM
    random = np.random.default_rng(0).standard_normal((64, dim))
    values = np.concatenate([coherent, extremes, random]).astype(np.float16 if scoring != "numpy" else np.float32)
    queries = np.concatenate([coherent[:2], np.abs(random[:2])]).astype(np.float32)
    error = measured_errors(values, queries, scoring)
    bound = margin("float32" if scoring == "numpy" else scoring, dim)
    assert error < bound, (scoring, error, bound)
    assert bound < {"numpy": 1e-3, "float32": 1e-3, "float16": 5e-3, "bfloat16": 0.05}[scoring]  # and it is not vacuous


@pytest.mark.parametrize("method", ["float32", "bf16"])
def test_dedup_near_the_threshold_equals_float64(tmp_path, method):
    """Pairs whose cosines lie within 1e-3 of the threshold, none within 1e-6 of it: the groups are
    exactly float64's (connected components of the pairs >= threshold)."""
    rng = np.random.default_rng(4)
    dim, pairs = 64, 60
    base = rng.standard_normal((pairs, dim))
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    noise = rng.standard_normal((pairs, dim))
    noise -= np.sum(noise * base, axis=1, keepdims=True) * base
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    threshold = 0.95
    offsets = rng.uniform(-1e-3, 1e-3, pairs)
    offsets[np.abs(offsets) < 1e-5] = 1e-5
    angles = np.arccos(threshold + offsets)
    twins = np.cos(angles)[:, None] * base + np.sin(angles)[:, None] * noise
    vectors = np.empty((2 * pairs, dim))
    vectors[0::2], vectors[1::2] = base * 2.0, twins * 0.7
    vectors = vectors.astype(np.float32)
    expected = all_pairs_groups(vectors, threshold)
    assert 10 < len(expected) < pairs  # some pairs just above, some just below
    index = open_index(write_embedding(tmp_path, vectors))
    groups = find_groups(index, threshold, method=method, block_rows=17)
    assert sorted(g.rows for g in groups) == sorted(expected)
    assert all(g.method == f"exact, {'bfloat16' if method == 'bf16' else 'float32'} pre-filter" for g in groups)


def test_identical_rows_at_threshold_one_on_both_paths(tmp_path):
    rng = np.random.default_rng(8)
    vectors = rng.standard_normal((50, 300)).astype(np.float16)
    vectors[[3, 9, 40]] = vectors[20]
    index = open_index(write_embedding(tmp_path, vectors))
    for method in ("float32", "bf16"):
        assert [g.rows for g in find_groups(index, 1.0, method=method)] == [[3, 9, 20, 40]]


# -- row norms beside the collection -----------------------------------------------------------


def test_norms_are_written_on_first_use_and_then_read(tmp_path):
    vectors = clustered(200, 16, dtype=np.float16)
    out = write_embedding(tmp_path, vectors)
    stored = norms.norms_path(out)
    assert not stored.exists()
    index = open_index(out)
    first = exact_search(index, vectors[:2].astype(np.float32), 5)
    assert stored.exists()
    np.testing.assert_array_equal(norms.load(open_index(out)), np.linalg.norm(vectors.astype(np.float64), axis=1))
    assert exact_search(open_index(out), vectors[:2].astype(np.float32), 5) == first


def test_stale_or_foreign_norms_are_never_used(tmp_path):
    vectors = clustered(100, 8)
    out = write_embedding(tmp_path, vectors)
    norms.ensure(open_index(out))
    stored = norms.norms_path(out)
    # the same shape, other rows: the array's size is the same, its modification time is not
    other = clustered(100, 8, seed=99)
    np.save(out, other)
    os.utime(out, ns=(os.stat(out).st_atime_ns, os.stat(stored).st_mtime_ns + 10**9))
    index = open_index(out)
    assert norms.load(index) is None
    (matches,) = exact_search(index, other[:1], 3)
    assert [m.row for m in matches] == brute_force_top_k(other, other[0], 3)
    # a file of that name that bitcli did not write is left alone
    stored.write_bytes(b"my notes")
    np.save(out, vectors)
    index = open_index(out)
    assert not norms.save(index, norms.compute(index)) and stored.read_bytes() == b"my notes"
    assert [m.row for m in exact_search(index, vectors[:1], 3)[0]] == brute_force_top_k(vectors, vectors[0], 3)


def test_a_search_of_a_replaced_array_leaves_the_new_arrays_norms_alone(tmp_path):
    """A search that opened the array before `bit embed --update` published a new one under its
    name computes the old array's norms, but never writes them over the new array's."""
    vectors = clustered(50, 8)
    out = write_embedding(tmp_path, vectors)
    held = open_index(out)  # a search has the old array open
    replacement = clustered(50, 8, seed=7)
    np.save(tmp_path / "new.npy", replacement)
    os.replace(tmp_path / "new.npy", out)  # a new array published meanwhile, with its norms
    norms.ensure(open_index(out))
    (matches,) = exact_search(held, vectors[:1], 3)  # the old search goes on, on the old rows
    assert [m.row for m in matches] == brute_force_top_k(vectors, vectors[0], 3)
    fresh = norms.load(open_index(out))
    assert fresh is not None
    np.testing.assert_allclose(fresh, np.linalg.norm(replacement.astype(np.float64), axis=1), rtol=1e-14)


def test_a_fifo_at_the_norms_name_is_never_opened_for_reading(tmp_path):
    vectors = clustered(30, 8)
    out = write_embedding(tmp_path, vectors)
    os.mkfifo(norms.norms_path(out))
    code = (
        "import sys, numpy as np; from bitcli.collection.index import open_index; "
        "from bitcli.collection.exact import exact_search; "
        f"i = open_index({str(out)!r}); print(len(exact_search(i, np.ones((1, 8), np.float32), 3)[0]))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "3", done.stderr
    assert norms.norms_path(out).is_fifo()  # and it is not replaced


def test_a_read_only_folder_still_searches(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    vectors = clustered(30, 8)
    out = write_embedding(tmp_path, vectors)
    tmp_path.chmod(0o555)
    try:
        (matches,) = exact_search(open_index(out), vectors[:1], 3)
    finally:
        tmp_path.chmod(0o755)
    assert [m.row for m in matches] == brute_force_top_k(vectors, vectors[0], 3)


def test_mapped_rows_are_the_opened_file_not_the_name(tmp_path):
    """A publication by rename after opening does not change what is read (the map is of the
    opened file)."""
    vectors = clustered(40, 8)
    out = write_embedding(tmp_path, vectors)
    index = open_index(out)
    replacement = tmp_path / "new.npy"
    np.save(replacement, clustered(40, 8, seed=7))
    os.replace(replacement, out)
    with MappedRows(index) as rows:
        np.testing.assert_array_equal(rows.values, vectors)


def test_search_records_say_which_path_ran(tmp_path):
    vectors = clustered(50, 8)
    index = open_index(write_embedding(tmp_path, vectors))
    outcome = search(index, vectors[:1], 3)
    assert outcome.exact and outcome.method == "exact, float32 pre-score"
    assert json.dumps(outcome.method)


def test_rows_beyond_float32_range_are_compared_exactly(tmp_path):
    """float64 rows from elsewhere whose values overflow float32: pre-scoring must not lose them."""
    rng = np.random.default_rng(2)
    vectors = rng.standard_normal((20, 16))
    vectors[[4, 11]] = 1e300 * np.abs(vectors[4])  # scale cancels in the cosine: an exact pair
    vectors[6] = 1e100 * vectors[1]  # beyond float32, within float64 (its norm is finite)
    index = open_index(write_embedding(tmp_path, vectors))
    groups = {tuple(g.rows) for g in find_groups(index, 0.99, method="float32")}
    assert (1, 6) in groups
    (matches,) = exact_search(index, vectors[1:2], 2, scoring="float32")
    assert [m.row for m in matches] == brute_force_top_k(vectors, vectors[1], 2)


@pytest.mark.parametrize("scoring", ["float16", "float32", "bfloat16"])
def test_float16_extremes_rank_as_float64(tmp_path, scoring):
    """Rows at float16's largest values (their products overflow float16) and tiny ones (their
    products round in the subnormal range) are re-scored in float64, never misranked."""
    rng = np.random.default_rng(6)
    vectors = rng.standard_normal((200, 64))
    vectors[:20] *= 30000 / np.abs(vectors[:20]).max(axis=1, keepdims=True)  # near 65504
    vectors[20:40] *= 2.0**-13  # norms around 2^-10: below MIN_NORM
    vectors = vectors.astype(np.float16)
    index = open_index(write_embedding(tmp_path, vectors))
    queries = vectors[[0, 25, 100]].astype(np.float32) + 0.01
    for j, matches in enumerate(exact_search(index, queries, 15, block_rows=33, scoring=scoring)):
        assert [m.row for m in matches] == brute_force_top_k(vectors, queries[j], 15), (scoring, j)


def test_a_one_row_collection_searched_for_its_own_row_answers_no_match(tmp_path, monkeypatch):
    """Its own row excluded, nothing is left to return: an empty list, not a crash."""
    from clihelpers import jsonl, run

    out = write_embedding(tmp_path, np.ones((1, 8), np.float32))
    monkeypatch.chdir(tmp_path)
    result = run(["search", out.name, "img00000.jpg", "-f", "jsonl"])
    assert result.exit_code == 0, result.stderr
    assert jsonl(result.stdout)[0]["matches"] == []
    index = open_index(out)
    assert exact_search(index, np.ones((2, 8), np.float32), 3, exclude=[0, None], scoring="float32") == [[], exact_search(index, np.ones((1, 8)), 1)[0]]


@pytest.mark.parametrize("dtype, scale", [(np.float32, 1e-42), (np.float32, 1e-44), (np.float32, 3.3e38), (np.float64, 2e38), (np.float64, 1e-41), (np.float64, 1e-44)])
def test_rows_with_subnormal_or_huge_norms_are_compared_exactly(tmp_path, dtype, scale):
    """Rows whose float32/bfloat16 products under- or overflow (subnormal elements; a norm beyond
    float32's range with a finite product): bfloat16 flushed them to 0, float32 divided by an
    infinite norm, dedup's float32 inverse norm overflowed. They must rank and pair as float64."""
    rng = np.random.default_rng(1)
    dim = 64
    query = rng.standard_normal(dim)
    unit = query / np.linalg.norm(query)
    others = rng.standard_normal((40, dim))
    others -= np.outer(others @ unit, unit)
    others = 0.1 * unit + others / np.linalg.norm(others, axis=1, keepdims=True)  # cosines 0.1
    target = 0.3 * unit + np.sqrt(0.91) * (others[0] - 0.1 * unit) / np.linalg.norm(others[0] - 0.1 * unit)
    vectors = others.astype(dtype)
    vectors[10] = (target * scale / np.abs(target).max()).astype(dtype)  # cosine 0.3: the best
    vectors[11] = vectors[10] if scale > 1 else vectors[10] * 2  # its copy: a pair at any threshold
    index = open_index(write_embedding(tmp_path, vectors))
    for scoring in PATHS:
        (matches,) = exact_search(index, query[None], 2, scoring=scoring)
        assert [m.row for m in matches] == [10, 11], scoring
    for method in ("float32", "bf16"):
        assert [g.rows for g in find_groups(index, 0.99, method=method)] == [[10, 11]], method


def _npy_header(shape: str) -> bytes:
    text = "{'descr': '<f8', 'fortran_order': False, 'shape': %s, }" % shape
    text += " " * (63 - len(text) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text.encode()


def test_norms_files_that_are_not_ours_are_left_alone_and_cost_nothing(tmp_path):
    """A corrupt zip and a plain .npy at the norms name: search answers, the file stays. A norms
    file of ours whose member claims 2^40 norms (numpy would allocate 8 TB before reading): it
    is ignored, then replaced."""
    import io
    import zipfile

    vectors = clustered(100, 8)
    out = write_embedding(tmp_path, vectors)
    stored = norms.norms_path(out)
    expected = brute_force_top_k(vectors, vectors[0], 3)
    source = io.BytesIO()
    np.save(source, norms._source(open_index(out)))
    for name in ("corrupt zip", "plain npy", "huge header"):
        if name == "corrupt zip":
            stored.write_bytes(b"PK\x03\x04" + b"not a zip" * 10)
        elif name == "plain npy":
            np.save(stored.with_suffix(".npy"), np.linalg.norm(vectors, axis=1).astype(np.float64))
            os.replace(stored.with_suffix(".npy"), stored)
        else:
            with zipfile.ZipFile(stored, "w") as archive:
                archive.writestr("source.npy", source.getvalue())
                archive.writestr("norms.npy", _npy_header(f"({1 << 40},)"))
        before = stored.read_bytes()
        index = open_index(out)
        assert norms.load(index) is None, name
        assert [m.row for m in exact_search(index, vectors[:1], 3)[0]] == expected, name
        if name == "huge header":
            np.testing.assert_array_equal(norms.load(open_index(out)), norms.compute(open_index(out)))
        else:
            assert stored.read_bytes() == before, name


def test_an_array_truncated_in_place_is_a_usage_error_not_sigbus(tmp_path):
    """A tool rewriting the array in place after the index was opened: touching a mapped page past
    the new end would kill the process with SIGBUS; search, dedup and the norms say the file ended
    early, as reading it did before it was mapped."""
    from bitcli.errors import UsageError

    vectors = clustered(5000, 64)
    out = write_embedding(tmp_path, vectors)
    code = (
        "import os, sys, numpy as np\n"
        "from bitcli.collection.index import open_index\n"
        "from bitcli.collection.exact import exact_search\n"
        "from bitcli.collection.dedup import find_groups\n"
        "from bitcli.errors import UsageError\n"
        f"out = {str(out)!r}\n"
        "for name, run in (('search', lambda i: exact_search(i, np.ones((1, 64), np.float32), 3)), ('dedup', find_groups)):\n"
        "    index = open_index(out)\n"
        "    os.truncate(out, 128 + 1000 * 64 * 4)\n"
        "    try:\n"
        "        run(index)\n"
        "    except UsageError as e:\n"
        "        print(name, 'ended early' in str(e))\n"
        f"    np.save(out, np.load({str(tmp_path / 'copy.npy')!r}))\n"
    )
    np.save(tmp_path / "copy.npy", vectors)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.split() == ["search", "True", "dedup", "True"], (done.returncode, done.stdout, done.stderr)
    index = open_index(out)  # truncated after the rows were mapped: the next block says so
    with MappedRows(index) as rows:
        os.truncate(out, 128 + 1000 * 64 * 4)
        rows.populate(0, 500)
        with pytest.raises(UsageError, match="ended early"):
            rows.populate(4000, 5000)


@pytest.mark.parametrize("query", ["a copy", "zero"])
def test_identical_rows_are_rescored_in_bounded_memory(tmp_path, query):
    """20,000 copies of one row (or a zero query): every row of a block is within the margin of
    the k-th best, so all are re-scored in float64; that must not copy a whole block as float64
    (32,768 rows x 256 x 8 bytes: 64 MB; the rows are 20 MB)."""
    import tracemalloc

    rng = np.random.default_rng(5)
    vectors = np.repeat(rng.standard_normal((1, 256)).astype(np.float32), 20000, axis=0)
    vectors[12345] *= 2  # the same cosine: ties are ordered by row
    index = open_index(write_embedding(tmp_path, vectors))
    norms.ensure(index)
    queries = vectors[:1] if query == "a copy" else np.zeros((1, 256), np.float32)
    tracemalloc.start()
    try:
        (matches,) = exact_search(index, queries, 3, exclude=[1])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [m.row for m in matches] == [0, 2, 3]
    assert peak < 24 << 20, peak


def test_the_bfloat16_bound_is_at_most_the_value_and_ends():
    """`_bf16_at_most` near 1, near -1, and just below 0 (it rounded to -0 and looped forever)."""
    torch = pytest.importorskip("torch")
    from bitcli.collection.dedup import _bf16_at_most

    values = [1.0, 1 - 1e-9, 0.99999, 0.9, 0.0, -2e-41, -1e-45, -1e-30, -0.5, -1 + 1e-9, -1.0, -1.03]
    values += list(np.random.default_rng(0).uniform(-1.1, 1.1, 300))
    for value in values:
        bound = _bf16_at_most(torch, value)
        assert bound.dtype == torch.bfloat16 and float(bound) <= value, value
        assert value - float(bound) <= max(abs(value) * 2.0**-6, 2.0**-132), value  # and close below it


def test_a_float64_score_does_not_depend_on_the_layout_of_the_rows():
    """einsum sums a Fortran-ordered matrix's rows in another order: 43 of 50 scores differed in
    the last bit from the same rows in C order, which reorders float64 near-ties."""
    from bitcli.collection.exact import cosine64

    rng = np.random.default_rng(0)
    rows, query = np.asfortranarray(rng.standard_normal((50, 33))), rng.standard_normal(33)
    np.testing.assert_array_equal(cosine64(rows, query), cosine64(np.ascontiguousarray(rows), query))
    np.testing.assert_array_equal(cosine64(rows, query), [cosine64(rows[[i]], query)[0] for i in range(50)])


@pytest.mark.parametrize("how", ["renamed over", "rewritten in place"])
def test_norms_of_another_array_with_the_same_size_and_mtime_are_not_used(tmp_path, how):
    """Another array of the same shape published with the old one's modification time (a
    filesystem with whole-second times, `cp -p`, `touch -r`): dedup decided pairs by the stale
    norms and found no group; the file's identity (inode, change time) tells them apart."""
    rng = np.random.default_rng(6)
    old = rng.standard_normal((60, 16)).astype(np.float32)
    out = write_embedding(tmp_path, old)
    norms.ensure(open_index(out))
    new = 0.3 * rng.standard_normal((60, 16)).astype(np.float32)
    new[1] = new[0]
    mtime = os.stat(out).st_mtime_ns
    if how == "renamed over":
        np.save(tmp_path / "new.npy", new)
        os.utime(tmp_path / "new.npy", ns=(mtime, mtime))
        os.replace(tmp_path / "new.npy", out)
    else:
        with open(out, "r+b") as fh:
            np.lib.format.write_array(fh, new)
        os.utime(out, ns=(mtime, mtime))
    index = open_index(out)
    assert os.stat(out).st_size == os.stat(tmp_path / "e.npy").st_size and os.stat(out).st_mtime_ns == mtime
    assert [g.rows for g in find_groups(index, 0.99)] == all_pairs_groups(new, 0.99) == [[0, 1]]
    np.testing.assert_array_equal(norms.load(index), norms.compute(index))  # and they were replaced


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("scoring", PATHS)
def test_read_only_rows_are_scored_without_a_warning(tmp_path, scoring):
    """A Fortran-ordered array is not mapped by us but read through numpy's read-only map: torch
    warned on stderr that it cannot wrap non-writable arrays (library code never prints)."""
    vectors = np.asfortranarray(clustered(100, 8))
    index = open_index(write_embedding(tmp_path, vectors))
    try:
        (matches,) = exact_search(index, vectors[:1], 3, scoring=scoring)
    finally:
        index.close()
    assert [m.row for m in matches] == brute_force_top_k(vectors, vectors[0], 3)


def test_the_margin_grows_with_the_dimension_and_never_turns_negative():
    """gamma_D = D u / (1 - D u) divided by zero at D = 2^24 and was negative beyond (every row
    would have been dropped): from 2^23 terms on there is no useful bound, every row is re-scored."""
    for scoring in PATHS:
        bounds = [margin(scoring, dim) for dim in (1, 64, 2048, 2**20, 2**23 - 1, 2**23, 2**24, 2**25)]
        assert all(0 < b for b in bounds) and bounds == sorted(bounds), (scoring, bounds)
        assert bounds[-1] == np.inf


def test_copies_at_threshold_one_are_decided_once_per_row(tmp_path):
    """1,500 copies of one row at --threshold 1: no pair is sure from its pre-score (1 is the
    top of the margin band), so each of the 1.1 million pairs was checked in float64 (3,000
    copies: 95 s against 5 s before the margins). Pairs whose rows are already connected need no
    decision: at most a chunk of checks per slice and block, and the same single group."""
    from bitcli.collection.dedup import _UnionFind, threshold_pairs

    rng = np.random.default_rng(9)
    vectors = np.repeat(rng.standard_normal((1, 64)).astype(np.float32), 1500, axis=0)
    vectors[700] = rng.standard_normal(64)  # one row that is no copy
    index = open_index(write_embedding(tmp_path, vectors))
    for method in ("float32", "bf16"):
        components = _UnionFind(index.rows)
        decided = 0
        for a, b in threshold_pairs(index, 1.0, method=method, block_rows=400, components=components):
            decided += a.size
            components.union(a, b)
        assert decided < index.rows**2 / 100, (method, decided)  # of 1.1 million pairs
        labels = components.labels()
        assert (labels[np.arange(1500) != 700] == 0).all() and labels[700] == 700
        assert [g.rows for g in find_groups(index, 1.0, method=method)] == [[r for r in range(1500) if r != 700]]


@pytest.mark.parametrize("block_rows", [None, 8, 64])
def test_the_timed_choice_between_ways_gives_the_same_answer(tmp_path, monkeypatch, block_rows):
    """A big collection times each way of pre-scoring on its first blocks and goes on with the
    fastest: whichever wins, and across the switch, the answer is float64's."""
    import bitcli.collection.exact as exact_module

    monkeypatch.setattr(exact_module, "_TORCH_FROM_ELEMENTS", 0)  # as if the collection were big
    vectors, query = near_ties(400, 48, seed=5)
    vectors = vectors.astype(np.float16)
    index = open_index(write_embedding(tmp_path, vectors))
    queries = np.stack([query, vectors[3].astype(np.float32)])
    outcome = search(index, queries, 12, exact=True, block_rows=block_rows)
    assert outcome.method in {"exact, float32 pre-score", "exact, float16 pre-score", "exact, bfloat16 pre-score"}
    for j, matches in enumerate(outcome.matches):
        assert [m.row for m in matches] == brute_force_top_k(vectors, queries[j], 12)


@pytest.mark.parametrize("scoring", PATHS)
def test_pieces_split_between_worker_threads_score_every_row(tmp_path, monkeypatch, scoring):
    """Pieces of 3 rows shared by two worker threads on one OpenMP thread each: every row's
    pre-score is written once and within the margin of float64's (an unscored row would hold
    whatever the output buffer held), and searches over uneven blocks equal brute force."""
    import torch

    from bitcli.collection import exact as exact_module
    from bitcli.engine import native

    monkeypatch.setattr(exact_module, "_PIECE_BYTES", 3 * 40 * 4)
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        rng = np.random.default_rng(11)
        values = rng.standard_normal((101, 40)).astype(np.float16)
        queries = rng.standard_normal((3, 40)).astype(np.float32)
        scorer = _TorchScorer(values, unit_rows(queries.astype(np.float64)), scoring)
        try:
            assert (scorer.pool is not None) == native.openmp_per_thread()
            exact = cosine_matrix(values, queries) * norms.row_norms64(values)[:, None]
            for start, stop in ((0, 101), (5, 6), (7, 30), (1, 100)):
                pre = scorer.scores(start, stop)
                assert pre.shape == (stop - start, 3)
                assert np.max(np.abs(pre - exact[start:stop])) < margin(scoring, 40) * 10
        finally:
            scorer.close()
        index = open_index(write_embedding(tmp_path, values))
        for block_rows in (7, 50, None):
            found = exact_search(index, queries, 9, block_rows=block_rows, scoring=scoring)
            for j, query in enumerate(queries):
                assert [m.row for m in found[j]] == brute_force_top_k(values, query, 9), block_rows
    finally:
        torch.set_num_threads(previous)


def test_the_private_ops_switch_turns_the_one_thread_workers_off(monkeypatch):
    """BIT_TORCH_PRIVATE_OPS=0: no worker pool, products on torch's own threads, same scores."""
    import torch

    values = np.random.default_rng(12).standard_normal((50, 16)).astype(np.float16)
    unit = unit_rows(np.random.default_rng(13).standard_normal((2, 16)))
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        monkeypatch.setenv("BIT_TORCH_PRIVATE_OPS", "0")
        plain = _TorchScorer(values, unit, "float32")
        assert plain.pool is None
        exact = cosine_matrix(values, unit) * norms.row_norms64(values)[:, None]
        assert np.max(np.abs(plain.scores(0, 50) - exact)) < margin("float32", 16)
    finally:
        torch.set_num_threads(previous)


def test_norms_computed_in_chunks_on_several_threads_equal_one_pass(tmp_path, monkeypatch):
    """Chunks of 7 rows shared by the threads: every row's norm is the one-pass number, bit for bit."""
    monkeypatch.setattr(norms, "_CHUNK_ROWS", 7)
    from bitcli.engine import machine

    monkeypatch.setattr(machine, "usable_cpus", lambda: 3)
    values = np.random.default_rng(14).standard_normal((500, 33)).astype(np.float16)
    index = open_index(write_embedding(tmp_path, values))
    assert np.array_equal(norms.compute(index), norms.row_norms64(values))
