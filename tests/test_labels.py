"""Label names: bundled ImageNet-1k / ImageNet-21k lists, their order, and the precedence rules."""

from __future__ import annotations

import subprocess
import sys

import pytest

from bitcli.errors import ConfigError, UsageError
from bitcli.labels import (
    IMAGENET_1K_CLASSES,
    IMAGENET_21K_CLASSES,
    is_placeholder_id2label,
    load_bundled,
    resolve_labels,
)

# (index, WordNet id, lemma): ids and indices from timm's imagenet_synsets.txt (1k) and
# imagenet21k_goog_synsets.txt (21k, the order of BiT-M heads).
KNOWN_1K = [
    (0, "n01440764", "tench, Tinca tinca"),
    (1, "n01443537", "goldfish, Carassius auratus"),
    (281, "n02123045", "tabby, tabby cat"),
    (291, "n02129165", "lion, king of beasts, Panthera leo"),
    (999, "n15075141", "toilet tissue, toilet paper, bathroom tissue"),
]
KNOWN_21K = [
    (0, "n00004475", "organism, being"),
    (359, "n01440764", "tench, Tinca tinca"),
    (2397, "n02123045", "tabby, tabby cat"),
    (8512, "n03746486", "men's room, men's"),
    (21842, "n15102894", "knothole"),
]


def test_imagenet_1k_has_1000_names_in_class_order():
    bundled = load_bundled(IMAGENET_1K_CLASSES)
    assert len(bundled.names) == len(bundled.synsets) == 1000
    for index, synset, name in KNOWN_1K:
        assert (bundled.synsets[index], bundled.names[index]) == (synset, name)
    # ImageNet-1k class order is WordNet-id order; a shuffled or truncated file breaks this.
    assert bundled.synsets == sorted(bundled.synsets)
    assert len(set(bundled.synsets)) == 1000


def test_imagenet_21k_has_21843_names_in_google_order():
    bundled = load_bundled(IMAGENET_21K_CLASSES)
    assert len(bundled.names) == len(bundled.synsets) == 21843
    for index, synset, name in KNOWN_21K:
        assert (bundled.synsets[index], bundled.names[index]) == (synset, name)
    assert bundled.synsets == sorted(bundled.synsets)
    assert len(set(bundled.synsets)) == 21843
    assert all(name and "\t" not in name for name in bundled.names)


def test_1k_classes_are_in_21k_with_the_same_names():
    one_k, twenty_one_k = load_bundled(1000), load_bundled(21843)
    by_synset = dict(zip(twenty_one_k.synsets, twenty_one_k.names))
    # The one known gap: Google's 21k release has no "teddy, teddy bear" (1k class 850).
    assert [s for s in one_k.synsets if s not in by_synset] == ["n04399382"]
    assert all(by_synset[s] == n for s, n in zip(one_k.synsets, one_k.names) if s in by_synset)


def test_bundled_lists_are_read_lazily():
    code = (
        "import bitcli.labels as l; assert l.load_bundled.cache_info().currsize == 0; "
        "l.resolve_labels(3, {0: 'a', 1: 'b', 2: 'c'}); assert l.load_bundled.cache_info().currsize == 0"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_21k_head_without_names_gets_words_not_placeholders():
    placeholders = {i: f"LABEL_{i}" for i in range(21843)}
    for id2label in (None, {}, placeholders):
        labels = resolve_labels(21843, id2label)
        assert labels.source == "ImageNet-21k (bundled)"
        assert labels.names[8512] == "men's room, men's"
        assert labels.synsets is not None and labels.synsets[8512] == "n03746486"
        assert not any(name.startswith("LABEL_") for name in labels.names)


def test_1k_head_without_names_gets_imagenet_1k():
    labels = resolve_labels(1000, {str(i): f"LABEL_{i}" for i in range(1000)})  # JSON keys are strings
    assert labels.source == "ImageNet-1k (bundled)"
    assert labels[0] == "tench, Tinca tinca" and len(labels) == 1000


def test_checkpoint_names_win_over_bundled():
    id2label = {str(i): f"thing {i}" for i in range(1000)}
    labels = resolve_labels(1000, id2label)
    assert labels.source == "checkpoint config"
    assert labels.names[:2] == ["thing 0", "thing 1"] and labels.synsets is None


def test_a_real_name_that_looks_like_a_placeholder_is_kept():
    # LABEL_1 at index 0 is not transformers' default, so it is a name someone chose.
    assert not is_placeholder_id2label({0: "LABEL_1", 1: "LABEL_0"})
    assert is_placeholder_id2label({0: "LABEL_0", 1: "LABEL_1"})
    assert not is_placeholder_id2label({0: "LABEL_0", 1: "cat"})


def test_labels_file_wins_over_everything(tmp_path):
    path = tmp_path / "labels.txt"
    path.write_text("cat\ndog\r\nbird\n\n", encoding="utf-8")  # CRLF and trailing blank line tolerated
    labels = resolve_labels(3, {0: "a", 1: "b", 2: "c"}, path)
    assert labels.names == ["cat", "dog", "bird"]
    assert labels.source == f"--labels {path}"


def test_labels_file_of_the_wrong_size_is_a_usage_error(tmp_path):
    path = tmp_path / "labels.txt"
    path.write_text("cat\ndog\n", encoding="utf-8")
    with pytest.raises(UsageError, match=r"2 labels, but the model's head has 21843 classes"):
        resolve_labels(21843, None, path)


def test_labels_file_errors_are_one_line_usage_errors(tmp_path):
    with pytest.raises(UsageError, match="file not found"):
        resolve_labels(2, None, tmp_path / "missing.txt")
    path = tmp_path / "gap.txt"
    path.write_text("cat\n\ndog\n", encoding="utf-8")
    with pytest.raises(UsageError, match="line 2 is empty"):
        resolve_labels(3, None, path)


def test_checkpoint_names_of_the_wrong_size_are_a_config_error():
    with pytest.raises(ConfigError, match="id2label names 2 classes, but the model's head has 3"):
        resolve_labels(3, {0: "a", 1: "b"})


def test_unknown_head_size_without_names_gets_class_indices():
    labels = resolve_labels(5, None)
    assert labels.names == ["class_0", "class_1", "class_2", "class_3", "class_4"]
    assert labels.source == "none (class indices)"
