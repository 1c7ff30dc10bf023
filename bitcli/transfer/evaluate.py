"""Evaluate any classifier on labelled data: accuracy, top-5, per-class figures, confusion matrix.

Data classes match the model's labels by exact name, then WordNet id (`n01440764`), then
ignoring case, `_`, `-` and spaces, the label or one of its comma-separated synonyms, when
exactly one label matches; otherwise a `DataError`. `predicted_other`: per true class, images
given a label outside the data's classes. `mistakes`: every wrong top-1 as {path, true,
predicted, score}, most confident first."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bitcli.util import name_some

from .data import DataError, Dataset, load_dataset

TOP_K = 5


@dataclass
class Evaluation:
    classes: list[str]
    n: int
    accuracy: float
    top5: float | None
    per_class: dict[str, dict[str, Any]]
    confusion: list[list[int]]
    predicted_other: list[int] | None
    failed: list[tuple[str, str]] = field(default_factory=list)
    model: str = ""
    matched: dict[str, str] = field(default_factory=dict)  # data class -> model label, where they differ
    mistakes: list[dict[str, Any]] = field(default_factory=list)  # see the module docstring

    def as_dict(self) -> dict[str, Any]:
        out = {key: getattr(self, key) for key in ("accuracy", "top5", "n", "per_class", "confusion", "classes")}
        if self.predicted_other is not None:
            out["predicted_other"] = self.predicted_other
        out.update(failed=len(self.failed), model=self.model)
        if self.matched:
            out["matched"] = self.matched
        return {**out, "mistakes": self.mistakes}


def _normal(name: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"[_\-]", " ", name)).strip().casefold()


def match_classes(data_classes: list[str], labels: list[str], synsets: list[str] | None = None) -> list[int]:
    """The model's class index for every data class (see the module docstring)."""
    exact = {name: i for i, name in reversed(list(enumerate(labels)))}
    by_synset = {s: i for i, s in enumerate(synsets or [])}
    loose: dict[str, set[int]] = {}
    for i, label in enumerate(labels):
        for key in {_normal(label), *(_normal(part) for part in label.split(","))}:
            if key:
                loose.setdefault(key, set()).add(i)
    indices, unmatched = [], []
    for name in data_classes:
        if name in exact:
            indices.append(exact[name])
        elif name in by_synset:
            indices.append(by_synset[name])
        elif len(loose.get(_normal(name), ())) == 1:
            indices.append(next(iter(loose[_normal(name)])))
        else:
            unmatched.append(name)
    if unmatched:
        examples = ", ".join(repr(l) for l in labels[:3])
        raise DataError(
            f"{len(unmatched)} of {len(data_classes)} data classes match no label of the model "
            f"({name_some(repr(name) for name in unmatched)}); "
            f"name class folders after the model's labels (e.g. {examples}; `bit inspect` lists them)"
        )
    seen: dict[int, str] = {}
    for name, index in zip(data_classes, indices):
        if index in seen:
            raise DataError(f"data classes {seen[index]!r} and {name!r} both match the model's label {labels[index]!r}")
        seen[index] = name
    return indices


def evaluate(
    data: str | os.PathLike[str] | Dataset,
    model: Any = None,
    *,
    progress: Callable[[int, int], None] | None = None,
    **classifier_options: Any,
) -> Evaluation:
    """Classify every example of `data` with `model` (anything `bitcli.load` takes) and score it."""
    from bitcli.inputs import InputItem
    from bitcli.pipeline import DEFAULT_MODEL, Classifier, load

    dataset = data if isinstance(data, Dataset) else load_dataset(data)
    loaded = load(DEFAULT_MODEL if model is None else model, device=classifier_options.pop("device", None))
    num_labels = int(loaded.config.num_labels)
    if num_labels < 1:
        raise DataError(f"{loaded.name} has no classifier head (features only); it cannot be evaluated")
    labels = loaded.labels(classifier_options.pop("labels", None))
    target_of = match_classes(dataset.classes, labels.names, labels.synsets)
    classifier = Classifier(loaded, top_k=min(TOP_K, num_labels), labels=labels, **classifier_options)
    items = [InputItem(index=i, path=p) for i, p in enumerate(dataset.paths)]
    class_of = {m: d for d, m in enumerate(target_of)}  # model label -> data class
    truth, tops, wrong, failed = [], [], [], []
    for i, result in enumerate(classifier.classify(items)):
        if result.error is not None:
            failed.append((result.path, str(result.error)))
        else:
            label, top = dataset.examples[i].label, result.predictions[0]
            truth.append(label)
            tops.append([p.index for p in result.predictions])
        if result.error is None and top.index != target_of[label]:  # a mistake: see the module docstring
            predicted = dataset.classes[class_of[top.index]] if top.index in class_of else labels.names[top.index]
            wrong.append({"path": result.path, "true": dataset.classes[label], "predicted": predicted, "score": float(top.score)})
        if progress is not None:
            progress(i + 1, len(items))
    if not truth:
        raise DataError(f"{dataset.source}: none of the {len(items)} images could be read")
    evaluation = score(dataset.classes, target_of, np.array(truth), np.array(tops), num_labels)
    evaluation.failed = failed
    evaluation.model = loaded.name
    evaluation.matched = {c: labels.names[t] for c, t in zip(dataset.classes, target_of) if labels.names[t] != c}
    evaluation.mistakes = sorted(wrong, key=lambda m: -m["score"])  # stable: ties keep the data's order
    return evaluation


def score(classes: list[str], target_of: list[int], truth: np.ndarray, tops: np.ndarray, num_labels: int) -> Evaluation:
    """Figures from true data-class indices [N] and the model's top-k indices [N, k]."""
    k = len(classes)
    target = np.array(target_of)[truth]  # the model index each image should get
    predicted_model = tops[:, 0]
    data_of_model = {m: d for d, m in enumerate(target_of)}
    predicted = np.array([data_of_model.get(int(m), -1) for m in predicted_model])
    confusion = np.zeros((k, k), dtype=np.int64)
    other = np.zeros(k, dtype=np.int64)
    for t, p in zip(truth, predicted):
        if p >= 0:
            confusion[t, p] += 1
        else:
            other[t] += 1
    per_class = {}
    for c, name in enumerate(classes):
        support = int((truth == c).sum())
        predicted_c = int(confusion[:, c].sum())
        per_class[name] = {
            "precision": float(confusion[c, c] / predicted_c) if predicted_c else None,
            "recall": float(confusion[c, c] / support) if support else None,
            "support": support,
        }
    top5 = float((tops[:, :TOP_K] == target[:, None]).any(axis=1).mean()) if num_labels > TOP_K else None
    return Evaluation(
        classes=list(classes),
        n=int(len(truth)),
        accuracy=float((predicted_model == target).mean()),
        top5=top5,
        per_class=per_class,
        confusion=confusion.tolist(),
        predicted_other=other.tolist() if num_labels > k else None,
        failed=[],
    )
