"""Original-release .npz checkpoints: key mapping, HWIO -> OIHW, eps 1e-10, squash preprocessing.

The comparison against timm's own .npz loader lives in tests/timm_oracle/test_npz_parity.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bitcli.checkpoint import load_model
from bitcli.errors import CheckpointError
from bitcli.model import standardize_conv_weight
from bitcli.checkpoint.npz import npz_key_map, read_npz_checkpoint
from checkpoints import TINY_DEPTHS, tiny_raw_weights, to_npz_arrays, write_npz

def test_release_key_names():
    mapping = npz_key_map([3, 4, 6, 3])
    assert mapping["resnet/root_block/standardized_conv2d/kernel"] == "bit.embedder.convolution.weight"
    assert mapping["resnet/block1/unit01/a/proj/standardized_conv2d/kernel"] == (
        "bit.encoder.stages.0.layers.0.downsample.conv.weight"
    )
    assert mapping["resnet/block3/unit06/b/group_norm/gamma"] == "bit.encoder.stages.2.layers.5.norm2.weight"
    assert mapping["resnet/block4/unit03/c/standardized_conv2d/kernel"] == "bit.encoder.stages.3.layers.2.conv3.weight"
    assert mapping["resnet/group_norm/beta"] == "bit.norm.bias"
    assert mapping["resnet/head/conv2d/kernel"] == "classifier.1.weight"
    # 3 convs + 6 norm params per unit, 4 projections, stem, final norm (2), head (2)
    assert len(mapping) == 16 * 9 + 4 + 1 + 2 + 2


def test_hwio_kernels_become_oihw(tmp_path):
    raw = tiny_raw_weights()
    arrays = to_npz_arrays(raw, TINY_DEPTHS)
    kernel = arrays["resnet/block2/unit02/b/standardized_conv2d/kernel"]  # HWIO
    assert kernel.shape[:2] == (3, 3)
    np.savez(tmp_path / "m.npz", **arrays)
    state_dict = read_npz_checkpoint(tmp_path / "m.npz").state_dict
    weight = state_dict["bit.encoder.stages.1.layers.1.conv2.weight"]  # OIHW
    o, i, h, w = 5, 3, 2, 0
    assert weight[o, i, h, w].item() == pytest.approx(float(kernel[h, w, i, o]), abs=0)
    head = arrays["resnet/head/conv2d/kernel"]  # [1, 1, C, K]
    assert head.shape == (1, 1, 256, 7)
    assert state_dict["classifier.1.weight"][4, 10].item() == pytest.approx(float(head[0, 0, 10, 4]), abs=0)


def test_round_trip_infers_the_architecture(tmp_path):
    raw = tiny_raw_weights()
    write_npz(tmp_path / "BiT-M-R50x1.npz", raw)
    read = read_npz_checkpoint(tmp_path / "BiT-M-R50x1.npz")
    config, state_dict = read.config, read.state_dict
    assert config.depths == TINY_DEPTHS
    assert config.embedding_size == 32 and config.stage_widths == [128, 128, 256, 256]
    assert config.num_labels == 7 and config.ws_eps == 1e-10
    assert state_dict.keys() == raw.keys()
    assert all(torch.equal(state_dict[k], raw[k]) for k in raw)


def test_release_eps_is_pinned_at_1e_10(tmp_path):
    raw = tiny_raw_weights(num_labels=0)
    write_npz(tmp_path / "BiT-S-R50x1.npz", raw)
    loaded = load_model(tmp_path / "BiT-S-R50x1.npz")
    assert loaded.source_format == "original" and not loaded.model.has_head
    key = "bit.encoder.stages.0.layers.0.conv1.weight"
    got = loaded.model.state_dict()[key]
    assert torch.allclose(got, standardize_conv_weight(raw[key], 1e-10), atol=1e-5)
    # With these small weights timm's 1e-8 would give a visibly different kernel.
    assert not torch.allclose(got, standardize_conv_weight(raw[key], 1e-8), atol=1e-2)


@pytest.mark.parametrize(
    "name, size",
    [("BiT-M-R50x1-ILSVRC2012.npz", 480), ("BiT-M-R152x4.npz", 224), ("BiT-S-R101x3.npz", 224), ("R50x1_224.npz", 224)],
)
def test_release_preprocessing_squashes_to_the_crop(tmp_path, name, size):
    write_npz(tmp_path / name, tiny_raw_weights())
    cfg = read_npz_checkpoint(tmp_path / name).preprocess
    assert (cfg.resize_mode, cfg.size, cfg.do_center_crop) == ("exact", (size, size), False)
    assert cfg.input_size == (size, size) and cfg.resample == 2
    assert cfg.image_mean == (0.5, 0.5, 0.5) and cfg.image_std == (0.5, 0.5, 0.5)
    assert read_npz_checkpoint(tmp_path / name, image_size=128).preprocess.size == (128, 128)


def test_pickled_object_arrays_are_refused(tmp_path):
    arrays = to_npz_arrays(tiny_raw_weights(), TINY_DEPTHS)
    arrays["resnet/evil"] = np.array([{"a": 1}], dtype=object)
    np.savez(tmp_path / "evil.npz", **arrays)
    with pytest.raises(CheckpointError, match="pickled objects"):
        read_npz_checkpoint(tmp_path / "evil.npz")


def test_missing_and_foreign_files_are_checkpoint_errors(tmp_path):
    arrays = to_npz_arrays(tiny_raw_weights(), TINY_DEPTHS)
    del arrays["resnet/block2/unit02/b/group_norm/gamma"]
    np.savez(tmp_path / "broken.npz", **arrays)
    with pytest.raises(CheckpointError, match="block2/unit02/b/group_norm/gamma"):
        read_npz_checkpoint(tmp_path / "broken.npz")
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(CheckpointError, match="not a BiT .npz"):
        read_npz_checkpoint(tmp_path / "other.npz")
    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(CheckpointError, match="not a readable .npz"):
        read_npz_checkpoint(tmp_path / "text.npz")


def test_preprocessor_config_beside_the_file_overrides_the_release_preprocessing(tmp_path):
    write_npz(tmp_path / "BiT-M-R50x1-ILSVRC2012.npz", tiny_raw_weights())
    assert load_model(tmp_path / "BiT-M-R50x1-ILSVRC2012.npz").preprocess.size == (480, 480)
    (tmp_path / "preprocessor_config.json").write_text(
        '{"size": {"shortest_edge": 160}, "crop_size": {"height": 128, "width": 128}, "resample": 3,'
        ' "do_center_crop": true, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}',
        encoding="utf-8",
    )
    loaded = load_model(tmp_path / "BiT-M-R50x1-ILSVRC2012.npz")
    assert (loaded.preprocess.resize_mode, loaded.preprocess.shortest_edge) == ("shortest_edge", 160)
    assert loaded.preprocess.input_size == (128, 128)
    assert tmp_path / "preprocessor_config.json" in loaded.files


def test_sidecar_preprocessor_overrides_only_the_fields_it_sets(tmp_path):
    import json

    write_npz(tmp_path / "BiT-M-R50x1.npz", tiny_raw_weights())
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"size": {"height": 160, "width": 160}}))
    preprocess = load_model(tmp_path / "BiT-M-R50x1.npz").preprocess
    assert preprocess.size == (160, 160) and preprocess.resize_mode == "exact"
    # The rest stays the release's evaluation transform, not BitImageProcessor's defaults.
    assert preprocess.resample == 2
    assert preprocess.image_mean == (0.5, 0.5, 0.5) and preprocess.image_std == (0.5, 0.5, 0.5)
    assert not preprocess.do_center_crop
