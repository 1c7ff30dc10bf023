"""Test data for the transfer tests: scikit-learn's digits as an ImageFolder, small folders of pictures.

`load_digits` ships inside scikit-learn (1,797 real 8x8 handwritten digits, values 0..16), so the
tests have a real, offline data set; each digit becomes an 8-bit grayscale PNG in `<root>/<digit>/`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from images import rgb

WIDE = (16, 16, 32, 1024)  # a wide last stage: features large enough for the rule's lr to move a tiny net


@pytest.fixture(autouse=True)
def transfer_env(tmp_path, monkeypatch):
    """One torch thread (small ops on a shared 2-core machine) and a private feature cache."""
    monkeypatch.setenv("BITCLI_CACHE_DIR", str(tmp_path / "bit-cache"))  # the one cache folder: features too
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def shared(tmp_path_factory, name: str, make) -> Path:
    """A folder made once per test session (by `make(path)`) and shared read-only."""
    path = tmp_path_factory.getbasetemp() / "transfer-shared" / name
    if not path.exists():
        staging = path.with_name(name + ".tmp")
        make(staging)
        staging.rename(path)
    return path


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
    (directory / "preprocessor_config.json").write_text(json.dumps(tiny_preprocessor(input_size)))
    return directory


def make_timm_checkpoint(directory: Path, *, num_classes: int = 10, seed: int = 0) -> Path:
    """A timm-layout BiT (R50 widths, one block per stage, 32 px input) with random raw weights."""
    from safetensors.torch import save_file

    from bitcli.model import BiT
    from bitcli.checkpoint.timm import bit_config_from_timm
    from checkpoints import canonical_key_to_timm

    data = {
        "architecture": "resnetv2_50x1_bit",
        "num_classes": num_classes,
        "model_args": {"layers": [1, 1, 1, 1]},
        "pretrained_cfg": {
            "input_size": [3, 32, 32], "interpolation": "bilinear", "crop_pct": 1.0, "crop_mode": "center",
            "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "num_classes": num_classes,
        },
    }
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in BiT(bit_config_from_timm(data)).state_dict().items()}
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for key, shape in shapes.items():
        value = torch.randn(shape, generator=generator) * (0.05 if len(shape) == 4 else 0.5)
        if key == "classifier.1.weight":
            value = value[:, :, None, None]
        tensors[canonical_key_to_timm(key)] = value.contiguous()
    directory.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(directory / "model.safetensors"))
    (directory / "config.json").write_text(json.dumps(data), encoding="utf-8")
    return directory


def make_npz_checkpoint(path: Path) -> Path:
    """An original-release .npz (eps 1e-10, convolution weights small enough for eps to matter)."""
    from checkpoints import tiny_raw_weights, write_npz

    path.parent.mkdir(parents=True, exist_ok=True)
    write_npz(path, tiny_raw_weights(num_labels=7, conv_scale=1e-4))
    return path
