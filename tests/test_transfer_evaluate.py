"""Evaluation: class matching, the figures, and agreement with the training report."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bitcli.labels import load_bundled
from bitcli.transfer import TrainOptions, train
from bitcli.transfer.data import DataError
from bitcli.transfer.evaluate import evaluate, match_classes, score
from clihelpers import make_checkpoint
from transferdata import shared, transfer_env, write_folder  # noqa: F401


def test_class_names_match_labels_exactly_by_wordnet_id_or_loosely():
    labels = ["tabby, tabby cat", "great white shark, white shark", "Egyptian cat", "tench"]
    assert match_classes(["tench", "Egyptian_cat", "tabby", "Great-White  Shark"], labels) == [3, 2, 0, 1]
    bundled = load_bundled(1000)
    index = bundled.names.index("tench, Tinca tinca")
    assert match_classes([bundled.synsets[index]], bundled.names, bundled.synsets) == [index]


def test_unmatched_and_ambiguous_classes_are_errors():
    with pytest.raises(DataError, match=r"2 of 3 data classes match no label of the model \('dogs', 'birds'\)"):
        match_classes(["dogs", "tench", "birds"], ["tench", "goldfish"])
    with pytest.raises(DataError, match="both match the model's label"):
        match_classes(["Tench", "tench"], ["tench", "goldfish"])
    with pytest.raises(DataError, match="match no label"):  # "cat" is in two labels: not a unique match
        match_classes(["cat"], ["cat, x", "cat, y"])


def test_figures_from_predictions():
    # 3 data classes mapped to model outputs 4, 0, 2 of a 7-class model.
    truth = np.array([0, 0, 0, 1, 1, 2])
    tops = np.array([[4, 0, 1, 2, 3], [4, 1, 0, 2, 3], [0, 4, 1, 2, 3], [0, 4, 1, 2, 3], [6, 0, 1, 2, 3], [1, 0, 3, 4, 5]])
    result = score(["a", "b", "c"], [4, 0, 2], truth, tops, num_labels=7)
    assert result.accuracy == pytest.approx(3 / 6)
    assert result.top5 == pytest.approx(5 / 6)  # the last image: class c (output 2) is not in its top 5
    assert result.confusion == [[2, 1, 0], [0, 1, 0], [0, 0, 0]]
    assert result.predicted_other == [0, 1, 1]  # outputs 6 and 1 belong to no data class
    assert result.per_class["a"] == {"precision": 1.0, "recall": pytest.approx(2 / 3), "support": 3}
    assert result.per_class["c"] == {"precision": None, "recall": 0.0, "support": 1}  # never predicted
    assert score(["a", "b"], [0, 1], np.array([0, 1]), np.array([[0, 1], [0, 1]]), num_labels=2).top5 is None


@pytest.mark.slow
def test_evaluation_of_a_trained_folder_agrees_with_its_report(tmp_path, tmp_path_factory):
    photos = write_folder(tmp_path / "photos", {"cat": 6, "dog": 6, "owl": 6}, size=36)
    base = str(shared(tmp_path_factory, "tiny-ckpt", make_checkpoint))
    val_dir = write_folder(tmp_path / "val", {"cat": 3, "dog": 3, "owl": 3}, size=36)
    result = train(photos, tmp_path / "out", base=base, options=TrainOptions(device="cpu", val=val_dir))
    report = result.report["results"]
    evaluation = evaluate(val_dir, str(result.outdir), device="cpu")
    assert evaluation.classes == ["cat", "dog", "owl"] and evaluation.n == 9 and evaluation.top5 is None
    assert sum(map(sum, evaluation.confusion)) == 9 and evaluation.predicted_other is None
    out = evaluation.as_dict()
    assert set(out) >= {"accuracy", "top5", "n", "per_class", "confusion", "classes"}
    json.dumps(out)  # JSON-ready
    # The probe's validation accuracy (computed on cached features) is what `bit eval` measures
    # on the written folder (up to a float-rounding flip of one image).
    assert report["val_n"] == 9 and abs(report["val_accuracy"] - evaluation.accuracy) <= 1 / 9 + 1e-9


def test_any_model_with_more_labels_gets_top5_and_other(tmp_path, tmp_path_factory):
    base = str(shared(tmp_path_factory, "tiny-ckpt", make_checkpoint))  # 10 labels "class 0".."class 9"
    data = write_folder(tmp_path / "d", {f"class {i}": 1 for i in range(7)}, size=36)
    evaluation = evaluate(data, base, device="cpu")
    assert evaluation.top5 is not None and len(evaluation.predicted_other) == 7
    bad = write_folder(tmp_path / "e", {"cats": 1, "dogs": 1}, size=36)
    with pytest.raises(DataError, match="match no label of the model"):
        evaluate(bad, base, device="cpu")
