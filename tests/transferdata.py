"""Test data for the transfer tests: scikit-learn's digits as an ImageFolder, small folders of pictures.

`load_digits` ships inside scikit-learn (1,797 real 8x8 handwritten digits, values 0..16), so the
tests have a real, offline data set; each digit becomes an 8-bit grayscale PNG in `<root>/<digit>/`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from images import rgb


def write_digits(root: Path, *, per_class: int | None = None) -> Path:
    """Digits as `root/<0..9>/dNNNN.png`; `per_class` keeps the first so many of each digit."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    counts = {d: 0 for d in range(10)}
    for index, (image, label) in enumerate(zip(digits.images, digits.target)):
        label = int(label)
        if per_class is not None and counts[label] >= per_class:
            continue
        counts[label] += 1
        folder = root / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        pixels = np.clip(image * 16, 0, 255).astype(np.uint8)
        Image.fromarray(pixels, mode="L").save(folder / f"d{index:04d}.png")
    return root


def write_folder(root: Path, layout: dict[str, int], *, size: int = 40) -> Path:
    """`root/<class>/img<i>.png` with `layout[class]` small pictures each (different per class)."""
    for c, (name, count) in enumerate(layout.items()):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            rgb(width=size + i % 3, height=size, seed=100 * c + i).save(folder / f"img{i:02d}.png")
    return root


def make_trainable_checkpoint(directory: Path, *, hidden_sizes=(16, 16, 32, 32), num_labels: int = 10, input_size: int = 32) -> Path:
    """A tiny random transformers BiT whose raw convolution weights have a natural scale.

    `checkpoints.save_reference_checkpoint` shrinks convolution weights by 1e-3 so that the
    standardization eps shows in inference tests; for training that would multiply every
    backbone gradient by ~1e3 (standardization divides it by the weights' spread), so here the
    weights keep transformers' initialization scale, as real BiT checkpoints do.
    """
    from checkpoints import TINY, reference_model, tiny_preprocessor

    model = reference_model(num_labels=num_labels, conv_scale=1.0, **{**TINY, "hidden_sizes": list(hidden_sizes)})
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    import json

    (directory / "preprocessor_config.json").write_text(json.dumps(tiny_preprocessor(input_size)))
    return directory
