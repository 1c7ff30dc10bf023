"""Training data: ImageFolder and list files, clear errors, stratified splits and few-shot subsets."""

from __future__ import annotations

import json

import pytest

from bitcli.errors import UsageError
from bitcli.transfer.data import (
    DataError,
    check_trainable,
    few_shot,
    load_dataset,
    stratified_split,
)
from transferdata import write_folder


def test_image_folder_classes_are_sorted_folder_names(tmp_path):
    root = write_folder(tmp_path / "d", {"zebra": 2, "Ant": 1, "cat": 3})
    (root / "notes.txt").write_text("not an example")
    (root / "stray.png").write_bytes((root / "cat" / "img00.png").read_bytes())
    (root / ".hidden").mkdir()
    (root / "cat" / "readme.txt").write_text("skipped like bit embed skips it")
    data = load_dataset(root)
    assert data.classes == ["Ant", "cat", "zebra"]  # code point order
    assert data.counts() == {"Ant": 1, "cat": 3, "zebra": 2}
    assert [e.label for e in data.examples] == [0, 1, 1, 1, 2, 2]
    assert str(root / "stray.png") in data.ignored
    assert isinstance(DataError("x"), UsageError)  # exit code 2


def test_class_folder_without_images_is_named(tmp_path):
    root = write_folder(tmp_path / "d", {"a": 2, "b": 2})
    (root / "empty").mkdir()
    (root / "empty" / "x.txt").write_text("no image")
    with pytest.raises(DataError, match=r"empty: class folder with no images"):
        load_dataset(root)


def test_one_class_only_cannot_train(tmp_path):
    data = load_dataset(write_folder(tmp_path / "d", {"only": 3}))
    with pytest.raises(DataError, match="only one class .'only'.; a classifier needs at least 2"):
        check_trainable(data)


def test_missing_and_flat_folders(tmp_path):
    with pytest.raises(DataError, match="no such folder or file"):
        load_dataset(tmp_path / "nope")
    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / "a.png").write_bytes(b"x")
    with pytest.raises(DataError, match="no class folders"):
        load_dataset(flat)


def test_csv_list_with_header_and_relative_paths(tmp_path):
    write_folder(tmp_path / "imgs", {"x": 2})
    (tmp_path / "list.csv").write_text("path,label\nimgs/x/img00.png,dog\nimgs/x/img01.png,cat\n\n")
    data = load_dataset(tmp_path / "list.csv")
    assert data.classes == ["cat", "dog"]
    assert data.paths == [str(tmp_path / "imgs/x/img00.png"), str(tmp_path / "imgs/x/img01.png")]
    assert [e.label for e in data.examples] == [1, 0]


def test_jsonl_list(tmp_path):
    rows = [{"path": "/abs/a.jpg", "label": 3}, {"path": "b.jpg", "label": "7"}]
    (tmp_path / "l.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    data = load_dataset(tmp_path / "l.jsonl")
    assert data.classes == ["3", "7"] and data.paths == ["/abs/a.jpg", str(tmp_path / "b.jpg")]


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("l.csv", "a.png,cat,extra\n", r"l.csv:1: expected 2 columns"),
        ("l.csv", "a.png,\n", "an empty class name"),
        ("l.jsonl", '{"path": "a.png"}\n', r"l.jsonl:1: expected an object"),
        ("l.jsonl", "{nope\n", r"l.jsonl:1: not valid JSON"),
        ("l.jsonl", '{"path": "a.png", "label": "bad\\u0007name"}\n', "control character"),
        ("l.txt", "a.png,cat\n", "not a folder of class folders, a .csv or a .jsonl"),
    ],
)
def test_bad_lists_say_where(tmp_path, name, text, message):
    (tmp_path / name).write_text(text)
    with pytest.raises(DataError, match=message):
        load_dataset(tmp_path / name)


def test_validation_classes_must_be_training_classes(tmp_path):
    train = load_dataset(write_folder(tmp_path / "t", {"a": 2, "b": 2}))
    val = load_dataset(write_folder(tmp_path / "v", {"b": 1}), classes=train.classes)
    assert val.classes == ["a", "b"] and [e.label for e in val.examples] == [1]
    with pytest.raises(DataError, match="class 'c' is not among the training classes"):
        load_dataset(write_folder(tmp_path / "w", {"c": 1}), classes=train.classes)


def test_stratified_split_is_seeded_and_keeps_every_class(tmp_path):
    data = load_dataset(write_folder(tmp_path / "d", {"a": 10, "b": 5, "c": 1}))
    train, val = stratified_split(data, 0.2, seed=3)
    assert val.counts() == {"a": 2, "b": 1, "c": 0}  # a single example stays in training
    assert train.counts() == {"a": 8, "b": 4, "c": 1}
    assert not set(train.paths) & set(val.paths)
    assert stratified_split(data, 0.2, seed=3)[1].paths == val.paths
    assert any(stratified_split(data, 0.2, seed=s)[1].paths != val.paths for s in range(4, 8))
    with pytest.raises(DataError, match="--val-split 1.5"):
        stratified_split(data, 1.5)


def test_shots_pick_the_same_examples_for_the_same_seed(tmp_path):
    data = load_dataset(write_folder(tmp_path / "d", {"a": 12, "b": 12}))
    first = few_shot(data, 5, seed=7)
    assert first.counts() == {"a": 5, "b": 5}
    assert few_shot(data, 5, seed=7).paths == first.paths
    assert few_shot(data, 5, seed=8).paths != first.paths
    # A class's pick depends on its own images and the seed only, not on the other classes.
    more = load_dataset(write_folder(tmp_path / "d", {"a": 12, "b": 12, "c": 6}))
    assert [p for p in few_shot(more, 5, seed=7).paths if "/a/" in p] == [p for p in first.paths if "/a/" in p]


def test_shots_more_than_a_class_has(tmp_path):
    data = load_dataset(write_folder(tmp_path / "d", {"a": 4, "b": 2}))
    with pytest.raises(DataError, match="class 'b' has 2 training images, fewer than --shots 3"):
        few_shot(data, 3)
