"""`bit classify`, `bit embed`, `bit inspect` and `bit models` on timm-format and original .npz checkpoints.

The checkpoints are small random ones written in each format's own layout (no timm needed):
a one-block-per-stage R50x1 in timm's layout, and a narrow .npz with a 21,843-class head, so a
21k model's output carries ImageNet-21k words.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from bitcli.model.config import BitConfig
from bitcli.labels import load_bundled
from bitcli.model import BiT
from bitcli.checkpoint.timm import bit_config_from_timm
from checkpoints import canonical_key_to_timm, to_npz_arrays
from clihelpers import jsonl, make_images, run

TIMM_CONFIG = {
    "architecture": "resnetv2_50x1_bit",
    "num_classes": 1000,
    "num_features": 2048,
    "model_args": {"layers": [1, 1, 1, 1]},
    "pretrained_cfg": {
        "tag": "goog_in21k_ft_in1k",
        "input_size": [3, 64, 64],
        "interpolation": "bilinear",
        "crop_pct": 1.0,
        "crop_mode": "center",
        "mean": [0.5, 0.5, 0.5],
        "std": [0.5, 0.5, 0.5],
        "num_classes": 1000,
        "first_conv": "stem.conv",
        "classifier": "head.fc",
    },
}
NPZ_DEPTHS = [1, 1, 1, 1]


def random_weights(config: BitConfig, seed: int) -> dict[str, torch.Tensor]:
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in BiT(config).state_dict().items()}
    generator = torch.Generator().manual_seed(seed)
    weights = {k: torch.randn(shape, generator=generator) for k, shape in shapes.items()}
    weights["classifier.1.weight"] *= 0.05
    return weights


@pytest.fixture(scope="module")
def timm_ckpt(tmp_path_factory):
    directory = tmp_path_factory.mktemp("timm") / "resnetv2_50x1_bit.goog_in21k_ft_in1k"
    directory.mkdir()
    weights = random_weights(bit_config_from_timm(TIMM_CONFIG), seed=0)
    weights = {
        canonical_key_to_timm(k): (v[:, :, None, None] if k == "classifier.1.weight" else v).contiguous()
        for k, v in weights.items()
    }
    save_file(weights, str(directory / "model.safetensors"))
    (directory / "config.json").write_text(json.dumps(TIMM_CONFIG), encoding="utf-8")
    return directory


@pytest.fixture(scope="module")
def npz_21k(tmp_path_factory):
    config = BitConfig(embedding_size=32, hidden_sizes=[128, 128, 256, 256], depths=NPZ_DEPTHS, num_labels=21843)
    path = tmp_path_factory.mktemp("npz") / "BiT-M-R50x1.npz"
    np.savez(path, **to_npz_arrays(random_weights(config, seed=1), NPZ_DEPTHS))
    return path


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    directory = tmp_path_factory.mktemp("photos") / "photos"
    make_images(directory, 2)
    return directory


@pytest.mark.slow
def test_classify_21k_npz_prints_imagenet_21k_words(npz_21k, photos):
    result = run(["classify", photos, "-m", npz_21k, "--format", "jsonl", "--top-k", "3"])
    assert result.exit_code == 0, result.stderr
    rows = jsonl(result.stdout)
    assert len(rows) == 2
    names = load_bundled(21843).names
    for row in rows:
        for prediction in row["predictions"]:
            assert prediction["label"] == names[prediction["index"]]
            assert not prediction["label"].startswith(("LABEL_", "class_"))


def test_classify_timm_checkpoint_uses_imagenet_1k_names(timm_ckpt, photos):
    result = run(["classify", photos, "-m", timm_ckpt, "--format", "jsonl", "--top-k", "2"])
    assert result.exit_code == 0, result.stderr
    names = load_bundled(1000).names
    for row in jsonl(result.stdout):
        assert all(p["label"] == names[p["index"]] for p in row["predictions"])


def test_labels_file_of_the_wrong_size_is_exit_2(npz_21k, photos, tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("cat\ndog\n", encoding="utf-8")
    result = run(["classify", photos, "-m", npz_21k, "--labels", labels])
    assert result.exit_code == 2
    assert "2 labels, but the model's head has 21843 classes" in result.stderr


@pytest.mark.parametrize("which, dim", [("timm", 2048), ("npz", 256)])
def test_embed_works_on_both_formats(which, dim, timm_ckpt, npz_21k, photos, tmp_path):
    model = timm_ckpt if which == "timm" else npz_21k
    out = tmp_path / "emb.npy"
    result = run(["embed", photos, "-m", model, "-o", out])
    assert result.exit_code == 0, result.stderr
    array = np.load(out)
    assert array.shape == (2, dim) and np.isfinite(array).all()


def test_inspect_shows_origin_and_preprocessing(timm_ckpt, npz_21k):
    timm_report = json.loads(run(["inspect", timm_ckpt, "--format", "json"]).stdout)
    assert timm_report["checkpoint_format"] == "timm"
    assert timm_report["input_size"] == [64, 64]
    assert timm_report["preprocessing"]["resize"] == "shortest edge to 64"
    assert timm_report["labels"]["source"] == "ImageNet-1k (bundled)"

    npz_report = json.loads(run(["inspect", npz_21k, "--format", "json"]).stdout)
    assert npz_report["checkpoint_format"] == "original"
    assert npz_report["input_size"] == [224, 224]
    assert npz_report["preprocessing"]["crop"] is None  # squashed, not cropped
    assert npz_report["preprocessing"]["mean"] == [0.5, 0.5, 0.5]
    assert npz_report["labels"]["source"] == "ImageNet-21k (bundled)"
    assert npz_report["labels"]["first"][0] == "organism, being"


def test_models_lists_the_timm_family():
    result = run(["models", "--format", "json"])
    assert result.exit_code == 0, result.stderr
    rows = {row["alias"]: row for row in json.loads(result.stdout)}
    assert rows["bit-m-r50x1-in21k"]["repo_id"] == "timm/resnetv2_50x1_bit.goog_in21k"
    assert rows["bit-m-r50x1-in21k"]["num_classes"] == 21843 and rows["bit-m-r50x1-in21k"]["top1"] is None
    assert rows["bit-m-r152x4"]["input_size"] == 480 and rows["bit-m-r152x4"]["top1"] == 84.94
    assert rows["bit-r50x1-distilled"]["repo_id"] == "timm/resnetv2_50x1_bit.goog_distilled_in1k"
    family = [a for a in rows if a.startswith(("bit-m-", "bit-r50x1-"))]
    assert len(family) == 15


@pytest.mark.slow
def test_alias_downloads_a_timm_repo_and_classifies(timm_ckpt, photos, monkeypatch):
    from hubserver import FakeHub

    hub = FakeHub().start()
    try:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        hub.add_commit("timm/resnetv2_50x1_bit.goog_in21k_ft_in1k", timm_ckpt)  # config.json + model.safetensors
        result = run(["classify", photos, "-m", "bit-m-r50x1", "--format", "jsonl", "--top-k", "1"])
        assert result.exit_code == 0, result.stderr
        names = load_bundled(1000).names
        assert all(row["predictions"][0]["label"] == names[row["predictions"][0]["index"]]
                   for row in jsonl(result.stdout))
        report = json.loads(run(["inspect", "bit-m-r50x1", "--format", "json"]).stdout)
        assert report["repo_id"] == "timm/resnetv2_50x1_bit.goog_in21k_ft_in1k"
        assert report["checkpoint_format"] == "timm"
    finally:
        hub.stop()
