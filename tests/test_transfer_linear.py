"""The linear probe: cached features from the `bit embed` engine, logistic regression equal to scikit-learn's."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

import bitcli
from bitcli.transfer import features, linear
from bitcli.transfer.data import load_dataset, stratified_split
from clihelpers import make_checkpoint
from transferdata import shared, transfer_env, write_digits  # noqa: F401  (autouse fixture)

PER_CLASS = 60  # 600 digits: enough to compare solvers, quick to embed


@pytest.fixture(scope="module")
def digit_features(tmp_path_factory):
    """(train x, train y, test x, test y) of tiny-model features of the digits."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)  # module fixtures run before the per-test `transfer_env`
    root = shared(tmp_path_factory, "digits60", lambda p: write_digits(p, per_class=PER_CLASS))
    ckpt = shared(tmp_path_factory, "tiny-ckpt", make_checkpoint)
    data = load_dataset(root)
    train, test = stratified_split(data, 0.3, seed=0)
    embedder = bitcli.Embedder(bitcli.load(str(ckpt), device="cpu"))
    cache = tmp_path_factory.mktemp("features")
    tr = features.extract(train.paths, embedder, cache_dir=cache)
    te = features.extract(test.paths, embedder, cache_dir=cache)
    assert not tr.failed and not te.failed
    torch.set_num_threads(before)
    return tr.vectors, train.labels, te.vectors, test.labels


def _sklearn(x, y, c):
    from sklearn.linear_model import LogisticRegression

    scaler = linear.Standardizer(x)
    model = LogisticRegression(C=c, max_iter=10_000, tol=1e-8).fit(scaler(x), y)
    return lambda rows: model.predict(scaler(rows))


@pytest.mark.slow
@pytest.mark.parametrize("c", [1.0, 0.05])
def test_probe_equals_sklearn_logistic_regression(digit_features, c):
    x, y, xt, yt = digit_features
    ours = linear.train_probe(x, y, 10, l2=1.0 / (c * len(y)))
    assert ours.sklearn_c == pytest.approx(c)
    theirs = _sklearn(x, y, c)
    ours_pred, theirs_pred = ours.head.predict(xt), theirs(xt)
    assert abs((ours_pred == yt).mean() - (theirs_pred == yt).mean()) <= 0.01
    assert (ours_pred == theirs_pred).mean() >= 0.95
    assert (ours_pred == yt).mean() > 0.3  # random-weight features, but far above chance (0.1)


@pytest.mark.slow
def test_chosen_regularization_is_as_good_as_sklearn_at_that_strength(digit_features):
    x, y, xt, yt = digit_features
    x, y = x[::3], y[::3]  # 140 rows: 5 folds x 7 strengths stay quick
    ours = linear.train_probe(x, y, 10, seed=0)
    assert ours.selection == "5-fold cross-validation" and ours.l2 in linear.L2_GRID
    assert set(ours.scores) == set(linear.L2_GRID)
    theirs = _sklearn(x, y, ours.sklearn_c)
    assert abs((ours.head.predict(xt) == yt).mean() - (theirs(xt) == yt).mean()) <= 0.01


def test_head_applies_to_raw_features():
    rng = np.random.default_rng(0)
    x = rng.normal(5.0, 0.1, size=(60, 4)) * np.array([1, 10, 100, 1])
    x[:, 3] = 2.0  # a constant feature must not break the standardization
    y = (x[:, 0] > 5.0).astype(np.int64) + (x[:, 1] > 50.0)
    scaler = linear.Standardizer(x)
    weight, bias = linear.fit(scaler(x), y, 3, 1e-3)
    head = scaler.fold(weight, bias)
    np.testing.assert_allclose(head.logits(x), scaler(x) @ weight.T + bias, atol=1e-4)


def test_one_shot_falls_back_to_the_default_strength():
    x = np.eye(3, 5)
    y = np.arange(3)
    probe = linear.train_probe(x, y, 3)
    assert probe.selection.startswith("default") and probe.l2 == pytest.approx(1 / 3)
    assert (probe.head.predict(x) == y).all()


def test_second_run_reads_the_cache_and_a_changed_file_is_embedded_again(tmp_path, tmp_path_factory, monkeypatch):
    root = shared(tmp_path_factory, "digits60", lambda p: write_digits(p, per_class=PER_CLASS))
    ckpt = shared(tmp_path_factory, "tiny-ckpt", make_checkpoint)
    paths = sorted(str(p) for p in (root / "3").iterdir())[:6]
    copies = []
    for p in paths:  # private copies, so the test may touch them
        copy = tmp_path / os.path.basename(p)
        copy.write_bytes(open(p, "rb").read())
        copies.append(str(copy))
    copies.append(str(tmp_path / "missing.png"))
    embedder = bitcli.Embedder(bitcli.load(str(ckpt), device="cpu"))
    first = features.extract(copies, embedder, cache_dir=tmp_path / "c")
    assert first.cached == 0 and len(first.rows) == 6 and first.failed[0][0].endswith("missing.png")

    calls = []
    original = embedder.embed
    monkeypatch.setattr(embedder, "embed", lambda items: calls.append(len(items)) or original(items))
    second = features.extract(copies, embedder, cache_dir=tmp_path / "c")
    assert second.cached == 6 and calls == [1]  # only the missing file is tried again
    np.testing.assert_array_equal(second.vectors, first.vectors)

    info = os.stat(copies[2])
    os.utime(copies[2], ns=(info.st_atime_ns, info.st_mtime_ns + 10**9))
    third = features.extract(copies, embedder, cache_dir=tmp_path / "c")
    assert third.cached == 5 and calls[-1] == 2


def test_cache_key_changes_with_the_weights_file(tmp_path, tmp_path_factory):
    ckpt = make_checkpoint(tmp_path / "m")
    embedder = bitcli.Embedder(bitcli.load(str(ckpt), device="cpu"))
    key = features.model_key(embedder)
    assert "batch_size" not in key and key["preprocessing"]
    weights = ckpt / "model.safetensors"
    info = os.stat(weights)
    os.utime(weights, ns=(info.st_atime_ns, info.st_mtime_ns + 10**9))
    assert features.model_key(embedder) == key  # touched, same content: the same features
    other = make_checkpoint(tmp_path / "other", num_labels=3)  # other weights under the same name
    shutil.copyfile(other / "model.safetensors", weights)
    assert features.model_key(embedder) != key  # retrained into the same folder: new features


def test_the_feature_cache_is_a_folder_of_collections_merged_when_many(tmp_path):
    from bitcli.collection import open_index

    cache = features.FeatureCache(tmp_path, {"model": "m", "preprocessing": {"size": 8}}, dim=3)
    for n in range(features._MERGE_ABOVE + 1):
        cache.add([(f"/images/{n}.png", n, 10 * n)], np.full((1, 3), n, dtype=np.float32))
    chunks = cache._chunks()
    assert len(chunks) == 1  # merged
    table = cache.load()
    assert sorted(table) == sorted((f"/images/{n}.png", n, 10 * n) for n in range(features._MERGE_ABOVE + 1))
    assert all((table[(f"/images/{n}.png", n, 10 * n)] == n).all() for n in range(features._MERGE_ABOVE + 1))
    index = open_index(chunks[0])  # a collection like any other
    assert index.rows == features._MERGE_ABOVE + 1 and index.meta.settings.model["reference"] == "m"
    index.close()
    other = features.FeatureCache(tmp_path, {"model": "m", "preprocessing": {"size": 9}}, dim=3)
    assert other.dir != cache.dir and other.load() == {}
