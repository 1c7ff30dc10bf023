"""Class names for a classifier head, first match wins: `--labels FILE` (one line per class); the
checkpoint's `id2label` / `label_names` (not transformers' `LABEL_{i}` placeholders); the bundled
ImageNet-1k or ImageNet-21k names by head size (1,000 or 21,843; read lazily, once); `class_{i}`."""

from __future__ import annotations

import gzip
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

from bitcli.errors import ConfigError, UsageError
from bitcli.util import FileTooLarge, NotRegularFile, first_line, human_bytes, read_capped

IMAGENET_1K_CLASSES = 1000
IMAGENET_21K_CLASSES = 21843

# Head size -> (package data file, name shown as the labels' source).
_BUNDLED = {
    IMAGENET_1K_CLASSES: ("imagenet1k.tsv", "ImageNet-1k (bundled)"),
    IMAGENET_21K_CLASSES: ("imagenet21k.tsv.gz", "ImageNet-21k (bundled)"),
}

LABELS_MAX_BYTES = 16 << 20

_PLACEHOLDER = re.compile(r"LABEL_(\d+)")


@dataclass(frozen=True)
class Labels:
    names: list[str]  # names[i] is the name of class i; len(names) == head size
    source: str  # "checkpoint config", "--labels FILE", "ImageNet-21k (bundled)", "none (class indices)"
    synsets: list[str] | None = None  # WordNet ids, for the bundled ImageNet lists only

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> str:
        return self.names[index]


def resolve_labels(
    num_classes: int,
    id2label: dict[int, str] | dict[str, str] | None,
    labels_file: Path | str | None = None,
) -> Labels:
    """Names for each of `num_classes` outputs, by the precedence in the module docstring."""
    if labels_file is not None:
        path = Path(labels_file)
        names = read_labels_file(path)
        if len(names) != num_classes:
            raise UsageError(
                f"--labels {path}: {len(names)} labels, but the model's head has {num_classes} classes"
                " (one label per line, in class order)"
            )
        return Labels(names, f"--labels {path}")
    if id2label and not is_placeholder_id2label(id2label):
        return Labels(names_from_id2label(id2label, num_classes), "checkpoint config")
    if num_classes in _BUNDLED:
        bundled = load_bundled(num_classes)  # cached: the caller gets lists of its own
        return Labels(list(bundled.names), bundled.source, list(bundled.synsets))
    return Labels([f"class_{i}" for i in range(num_classes)], "none (class indices)")


def is_placeholder_id2label(id2label: dict[int, str] | dict[str, str]) -> bool:
    """True when every name is transformers' default `LABEL_{i}` for its own index i."""
    for key, value in id2label.items():
        match = _PLACEHOLDER.fullmatch(str(value))
        if match is None or int(match.group(1)) != int(key):
            return False
    return True


def names_from_id2label(id2label: dict[int, str] | dict[str, str], num_classes: int) -> list[str]:
    """id2label (keys int or JSON strings) -> a list indexed by class; every class must be named."""
    try:
        by_index = {int(k): str(v) for k, v in id2label.items()}
    except (TypeError, ValueError):
        raise ConfigError("id2label keys must be class indices (integers)") from None
    if sorted(by_index) != list(range(num_classes)):
        raise ConfigError(
            f"id2label names {len(by_index)} classes, but the model's head has {num_classes}"
            " (expected keys 0.." + str(num_classes - 1) + ")"
        )
    return [by_index[i] for i in range(num_classes)]


def read_labels_file(path: Path) -> list[str]:
    """One label per line (UTF-8, at most LABELS_MAX_BYTES); trailing blank lines ignored, inner ones an error."""
    try:
        text = read_capped(path, LABELS_MAX_BYTES).decode("utf-8-sig")
    except FileNotFoundError:
        raise UsageError(f"--labels {path}: file not found") from None
    except FileTooLarge:
        raise UsageError(
            f"--labels {path}: larger than {human_bytes(LABELS_MAX_BYTES)}; give a text file with one label per line"
        ) from None
    except NotRegularFile as exc:  # never opened for reading: a FIFO would block
        raise UsageError(f"--labels {path}: {exc.strerror}; give a text file with one label per line") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--labels {path}: cannot read ({first_line(exc)})") from None
    lines = [line.strip() for line in text.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    for number, line in enumerate(lines, start=1):
        if not line:
            raise UsageError(f"--labels {path}: line {number} is empty (one label per line, in class order)")
    return lines


@lru_cache(maxsize=None)
def load_bundled(num_classes: int) -> Labels:
    """The bundled list for a head size (1000 or 21843); read from package data on first call."""
    filename, source = _BUNDLED[num_classes]  # KeyError for another size
    raw = resources.files("bitcli").joinpath("data", filename).read_bytes()
    if filename.endswith(".gz"):
        raw = gzip.decompress(raw)
    synsets, names = [], []
    for line in raw.decode("utf-8").splitlines():
        synset, _, name = line.partition("\t")
        synsets.append(synset)
        names.append(name)
    if len(names) != num_classes:  # a damaged install, not a user error
        raise ConfigError(f"bundled label file {filename} has {len(names)} entries, expected {num_classes}")
    return Labels(names, source, synsets)
