"""Labelled image sets for training and evaluation: folders or lists, splits and few-shot subsets.

DATA is a folder with one sub-folder per class (names sorted; images found as `bit embed FOLDER`
finds them; files directly in DATA are `Dataset.ignored`), or a `.csv` of `path,label` rows
(optional header) or a `.jsonl` of {"path", "label"} objects, paths relative to the list's
folder. A file listed again is kept once (`Dataset.duplicates`); with two labels it is an error.
Splits and subsets are seeded and stratified, each class from its own random stream. Every
problem with the data is a `DataError` (exit code 2)."""

from __future__ import annotations

import csv
import io
import json
import os
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from bitcli.errors import UsageError
from bitcli.util import FileTooLarge, file_kind, first_line, human_bytes, name_some, read_capped

LIST_SUFFIXES = (".csv", ".jsonl")
LIST_MAX_BYTES = 1 << 30  # a list of ten million rows of 100-byte paths
_SPLIT_STREAM, _SHOTS_STREAM = 1, 2
_MAX_LABEL_LENGTH = 200


class DataError(UsageError):
    """The training or evaluation data cannot be used as given (exit code 2)."""


@dataclass(frozen=True)
class Example:
    path: str
    label: int  # index into Dataset.classes


@dataclass(frozen=True)
class Dataset:
    """Examples with class indices; `classes[i]` is the name of class i."""

    source: str
    classes: list[str]
    examples: list[Example]
    ignored: list[str] = field(default_factory=list)  # files in DATA outside any class folder
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (path, reason) found while listing
    duplicates: int = 0  # rows of a list file dropped because they name a file listed before

    def __len__(self) -> int:
        return len(self.examples)

    @property
    def labels(self) -> np.ndarray:
        return np.array([e.label for e in self.examples], dtype=np.int64)

    @property
    def paths(self) -> list[str]:
        return [e.path for e in self.examples]

    def counts(self) -> dict[str, int]:
        """Examples per class name, in class order (0 for classes without examples)."""
        counter = Counter(e.label for e in self.examples)
        return {name: counter.get(i, 0) for i, name in enumerate(self.classes)}

    def subset(self, indices: Sequence[int]) -> Dataset:
        return replace(self, examples=[self.examples[i] for i in indices])


def load_dataset(data: str | os.PathLike[str], *, classes: Sequence[str] | None = None) -> Dataset:
    """Read DATA (folder or list file); with `classes`, labels index that list. DataError when unusable."""
    path = Path(data)
    if path.is_dir():
        dataset = _image_folder(path)
    elif path.is_file() and path.suffix.lower() in LIST_SUFFIXES:
        dataset = _list_file(path)
    elif path.exists() and not path.is_file():  # never opened: a FIFO would block
        raise DataError(f"{path}: a {file_kind(os.stat(path).st_mode)}, not a folder of class folders or a list file")
    elif path.exists():
        raise DataError(f"{path}: not a folder of class folders, a .csv or a .jsonl file")
    else:
        raise DataError(f"{path}: no such folder or file")
    for name in dataset.classes:
        check_class_name(name, path)
    if classes is not None:
        dataset = reindex(dataset, classes)
    return dataset


def check_trainable(dataset: Dataset) -> None:
    """At least two classes, each with at least one example."""
    if len(dataset.classes) < 2:
        raise DataError(
            f"{dataset.source}: only one class ({dataset.classes[0]!r}); a classifier needs at least 2 classes"
            if dataset.classes
            else f"{dataset.source}: no classes"
        )
    empty = [name for name, count in dataset.counts().items() if count == 0]
    if empty:
        raise DataError(f"{dataset.source}: class {empty[0]!r} has no training images left")


def check_class_name(name: str, source: Path) -> None:
    """A class name must print on one line and survive `config.json` (id2label)."""
    if not name.strip():
        raise DataError(f"{source}: an empty class name; every example needs a label")
    if any(ch in name for ch in "\r\n\t") or any(ord(ch) < 32 for ch in name):
        raise DataError(f"{source}: class name {name!r} contains a control character; rename it")
    if len(name) > _MAX_LABEL_LENGTH:
        raise DataError(f"{source}: class name {name[:40]!r}... is longer than {_MAX_LABEL_LENGTH} characters")


def reindex(dataset: Dataset, classes: Sequence[str]) -> Dataset:
    """The same examples with labels indexed in `classes` (every class of `dataset` must be there)."""
    position = {name: i for i, name in enumerate(classes)}
    unknown = [name for name in dataset.classes if name not in position]
    if unknown:
        raise DataError(
            f"{dataset.source}: class {unknown[0]!r} is not among the training classes "
            f"({name_some(repr(name) for name in classes)})"
        )
    examples = [Example(e.path, position[dataset.classes[e.label]]) for e in dataset.examples]
    return replace(dataset, classes=list(classes), examples=examples)


# -- reading ----------------------------------------------------------------------------------


def _image_folder(root: Path) -> Dataset:
    from bitcli.inputs import InputItem, expand_inputs

    entries = sorted(os.scandir(root), key=lambda e: e.name)
    class_dirs = [e for e in entries if not e.name.startswith(".") and e.is_dir()]
    ignored = [e.path for e in entries if not e.name.startswith(".") and e.is_file()]
    if not class_dirs:
        raise DataError(f"{root}: no class folders; expected {root}/<class name>/<images>")
    classes = [e.name for e in class_dirs]
    examples, unreadable = [], []
    for label, entry in enumerate(class_dirs):
        found = []
        for item in expand_inputs([entry.path]):
            if isinstance(item, InputItem):
                found.append(item.path)
            else:  # an unreadable sub-folder, a symlink loop: reported, not fatal
                unreadable.append((item.path, item.reason))
        if not found:
            raise DataError(f"{entry.path}: class folder with no images; add images or remove the folder")
        examples.extend(Example(p, label) for p in found)
    return Dataset(str(root), classes, examples, ignored, unreadable)


def _list_file(path: Path) -> Dataset:
    text = _read_list(path)
    rows = _read_jsonl(path, text) if path.suffix.lower() == ".jsonl" else _read_csv(path, text)
    if not rows:
        raise DataError(f"{path}: no examples (expected path,label rows)")
    base = path.parent
    listed: list[tuple[str, str, int]] = []
    for file_path, label, line in rows:
        if not file_path:
            raise DataError(f"{path}:{line}: empty path")
        full = file_path if os.path.isabs(file_path) else os.path.join(base, file_path)
        listed.append((full, label, line))
    kept = _without_duplicates(path, listed)
    classes = sorted({label for _, label, _ in kept})
    position = {name: i for i, name in enumerate(classes)}
    examples = [Example(full, position[label]) for full, label, _ in kept]
    return Dataset(str(path), classes, examples, duplicates=len(listed) - len(kept))


def file_identity(path: str) -> tuple:
    """What names one file: (device, inode) when it can be stat'ed (never opened), else its resolved path."""
    try:
        info = os.stat(path)
    except (OSError, ValueError):
        return ("path", os.path.realpath(path))
    return ("inode", info.st_dev, info.st_ino)


def _without_duplicates(source: Path, rows: list[tuple[str, str, int]]) -> list[tuple[str, str, int]]:
    """The first row of every file; DataError naming a file listed with two labels."""
    first: dict[tuple, tuple[str, str, int]] = {}
    kept = []
    for row in rows:
        identity = file_identity(row[0])
        seen = first.get(identity)
        if seen is None:
            first[identity] = row
            kept.append(row)
        elif seen[1] != row[1]:
            raise DataError(
                f"{source}:{row[2]}: {row[0]} is labelled {row[1]!r}, but line {seen[2]} labels the same "
                f"file {seen[1]!r}; give each file one label"
            )
    return kept


def _read_list(path: Path) -> str:
    """The list file's text (UTF-8, at most LIST_MAX_BYTES; never blocks on a FIFO or device)."""
    try:
        return read_capped(path, LIST_MAX_BYTES).decode("utf-8-sig")
    except FileTooLarge:
        raise DataError(f"{path}: larger than {human_bytes(LIST_MAX_BYTES)}; split the list") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read ({first_line(exc)})") from None


def _read_csv(path: Path, text: str) -> list[tuple[str, str, int]]:
    rows = []
    try:
        for line, row in enumerate(csv.reader(io.StringIO(text, newline="")), start=1):
            if not row or all(not cell.strip() for cell in row):
                continue
            if line == 1 and [c.strip().lower() for c in row[:2]] == ["path", "label"]:
                continue
            if len(row) != 2:
                raise DataError(f"{path}:{line}: expected 2 columns (path,label), found {len(row)}")
            rows.append((row[0].strip(), row[1].strip(), line))
    except csv.Error as exc:
        raise DataError(f"{path}: cannot read ({exc})") from None
    return rows


def _read_jsonl(path: Path, text: str) -> list[tuple[str, str, int]]:
    rows = []
    lines = text.splitlines()
    for line, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{line}: not valid JSON ({exc.msg})") from None
        if not isinstance(obj, dict) or "path" not in obj or "label" not in obj:
            raise DataError(f'{path}:{line}: expected an object with "path" and "label"')
        if not isinstance(obj["path"], str) or isinstance(obj["label"], (dict, list, bool)) or obj["label"] is None:
            raise DataError(f"{path}:{line}: path must be a string and label a string or a number")
        rows.append((obj["path"], str(obj["label"]), line))
    return rows


# -- splits and subsets -----------------------------------------------------------------------


def _per_class(dataset: Dataset, seed: int, stream: int, count) -> tuple[list[int], list[int]]:
    """(chosen, rest): the first `count(name, size)` examples of each class in its own seeded
    order (independent of the other classes), and the others; both in example order."""
    groups: list[list[int]] = [[] for _ in dataset.classes]
    for index, example in enumerate(dataset.examples):
        groups[example.label].append(index)
    chosen, rest = [], []
    for name, indices in zip(dataset.classes, groups):
        order = np.random.default_rng([seed, stream, zlib.crc32(name.encode("utf-8"))]).permutation(len(indices))
        size = count(name, len(indices))
        chosen.extend(indices[i] for i in order[:size])
        rest.extend(indices[i] for i in order[size:])
    return sorted(chosen), sorted(rest)


def stratified_split(dataset: Dataset, fraction: float, seed: int = 0) -> tuple[Dataset, Dataset]:
    """(train, validation): about `fraction` of every class to validation, at least one left to train."""
    if not 0.0 < fraction < 1.0:
        raise DataError(f"--val-split {fraction}: use a fraction between 0 and 1 (e.g. 0.2)")
    val, train = _per_class(dataset, seed, _SPLIT_STREAM, lambda name, n: min(int(round(fraction * n)), max(n - 1, 0)))
    if not val:
        raise DataError(f"{dataset.source}: too few images for --val-split {fraction} (no class gives one)")
    return dataset.subset(train), dataset.subset(val)


def few_shot(dataset: Dataset, shots: int, seed: int = 0) -> Dataset:
    """`shots` examples of every class, chosen by the seed (the same seed gives the same examples)."""
    if shots < 1:
        raise DataError(f"--shots {shots}: use at least 1 example per class")

    def count(name: str, size: int) -> int:
        if size < shots:
            raise DataError(f"{dataset.source}: class {name!r} has {size} training images, fewer than --shots {shots}")
        return shots

    return dataset.subset(_per_class(dataset, seed, _SHOTS_STREAM, count)[0])
