"""timm-format checkpoints without timm: name parsing, configs, preprocessing, key mapping, loading.

The numeric comparison against timm itself lives in tests/timm_oracle (run in .venv-timm).
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from bitcli.checkpoint import build_model, load_model
from bitcli.errors import CheckpointError, ConfigError
from bitcli.labels import resolve_labels
from bitcli.model import BiT
from checkpoints import canonical_key_to_timm
from bitcli.checkpoint.files import is_timm_config
from bitcli.checkpoint.timm import (
    bit_config_from_timm,
    convert_timm_state_dict,
    parse_architecture,
    preprocess_from_timm,
    timm_key_to_canonical,
)

# Every architecture of the BiT family on the hub: (name, depths, width factor).
FAMILY = [
    ("resnetv2_50x1_bit", [3, 4, 6, 3], 1),
    ("resnetv2_50x3_bit", [3, 4, 6, 3], 3),
    ("resnetv2_101x1_bit", [3, 4, 23, 3], 1),
    ("resnetv2_101x3_bit", [3, 4, 23, 3], 3),
    ("resnetv2_152x2_bit", [3, 8, 36, 3], 2),
    ("resnetv2_152x4_bit", [3, 8, 36, 3], 4),
]


def timm_config(architecture: str = "resnetv2_50x1_bit", num_classes: int = 1000, **pretrained) -> dict:
    """A config.json as timm writes it for the hub."""
    cfg = {
        "tag": "goog_in21k",
        "input_size": [3, 224, 224],
        "interpolation": "bilinear",
        "crop_pct": 0.875,
        "crop_mode": "center",
        "mean": [0.5, 0.5, 0.5],
        "std": [0.5, 0.5, 0.5],
        "num_classes": num_classes,
        "first_conv": "stem.conv",
        "classifier": "head.fc",
    }
    cfg.update(pretrained)
    return {"architecture": architecture, "num_classes": num_classes, "pretrained_cfg": cfg}


@pytest.mark.parametrize("name, depths, width", FAMILY)
def test_family_names_give_depths_and_widths(name, depths, width):
    assert parse_architecture(name) == (depths, width)
    config = bit_config_from_timm(timm_config(name, num_classes=21843))
    assert config.depths == depths
    assert config.embedding_size == 64 * width  # R50x3 stem is 192 wide
    assert config.stage_widths == [256 * width, 512 * width, 1024 * width, 2048 * width]
    assert config.feature_dim == 2048 * width
    assert config.num_labels == 21843
    assert config.ws_eps == 1e-8
    assert config.id2label == {}
    depth = {(3, 4, 6, 3): 50, (3, 4, 23, 3): 101, (3, 8, 36, 3): 152}[tuple(depths)]
    assert config.variant_name == f"BiT R{depth}x{width}, pre-activation"


@pytest.mark.parametrize(
    "legacy, name", [("resnetv2_50x1_bitm", "resnetv2_50x1_bit"), ("resnetv2_152x4_bitm_in21k", "resnetv2_152x4_bit"),
                     ("resnetv2_50x1_bit_distilled", "resnetv2_50x1_bit"),
                     ("resnetv2_152x2_bit_teacher_384", "resnetv2_152x2_bit"),
                     ("resnetv2_101x3_bit.goog_in21k", "resnetv2_101x3_bit")],
)
def test_legacy_and_tagged_names_parse(legacy, name):
    assert parse_architecture(legacy) == parse_architecture(name)


@pytest.mark.parametrize(
    "name", ["resnetv2_50", "resnetv2_50x5_bit", "resnetv2_34x1_bit", "resnet50", "vit_base_patch16_224"]
)
def test_other_architectures_are_refused(name):
    with pytest.raises(ConfigError, match="not a BiT model"):
        parse_architecture(name)


def test_timm_config_detection():
    assert is_timm_config(timm_config())
    assert not is_timm_config({"model_type": "bit", "architectures": ["BitForImageClassification"]})
    assert not is_timm_config({"architecture": "x", "model_type": "bit"})


def test_num_features_must_match_the_architecture():
    data = timm_config("resnetv2_50x3_bit")
    data["num_features"] = 6144
    assert bit_config_from_timm(data).feature_dim == 6144
    data["num_features"] = 2048
    with pytest.raises(ConfigError, match="num_features 2048"):
        bit_config_from_timm(data)


def test_model_args_may_shrink_the_model_but_not_change_it():
    data = timm_config("resnetv2_50x1_bit")
    data["model_args"] = {"layers": [1, 1, 1, 1], "width_factor": 2, "num_classes": 1000, "global_pool": "avg"}
    config = bit_config_from_timm(data)
    assert config.depths == [1, 1, 1, 1] and config.feature_dim == 4096
    data["model_args"] = {"stem_type": "deep"}
    with pytest.raises(ConfigError, match="stem_type"):
        bit_config_from_timm(data)


def test_timm_label_names_become_id2label():
    data = timm_config(num_classes=3)
    data["label_names"] = ["cat", "dog", "bird"]
    config = bit_config_from_timm(data)
    labels = resolve_labels(config.num_labels, config.id2label)
    assert labels.names == ["cat", "dog", "bird"] and labels.source == "checkpoint config"
    data["label_names"] = ["cat"]
    with pytest.raises(ConfigError, match="label_names has 1 entries"):
        bit_config_from_timm(data)


@pytest.mark.slow
def test_config_folds_width_into_hidden_sizes_so_transformers_builds_it():
    """transformers sizes its final norm from hidden_sizes[-1] alone; width_factor > 1 breaks it."""
    import transformers

    data = timm_config("resnetv2_50x3_bit")
    data["model_args"] = {"layers": [1, 1, 1, 1]}
    config = bit_config_from_timm(data)
    fields = ("num_channels", "embedding_size", "hidden_sizes", "depths", "layer_type", "hidden_act", "global_padding",
              "num_groups", "embedding_dynamic_padding", "output_stride", "width_factor", "num_labels")
    reference = transformers.BitForImageClassification(
        transformers.BitConfig(**{name: getattr(config, name) for name in fields})
    )
    with torch.device("meta"):
        ours = BiT(config)
    shapes = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert shapes == {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    assert shapes["bit.embedder.convolution.weight"] == (192, 3, 7, 7)
    assert shapes["classifier.1.weight"] == (1000, 6144)


# (pretrained_cfg fields of a family member, expected shortest edge, crop, PIL resample)
PREPROCESSING = [
    (dict(input_size=[3, 448, 448], crop_pct=1.0, interpolation="bilinear"), 448, 448, 2),
    (dict(input_size=[3, 480, 480], crop_pct=1.0, interpolation="bilinear"), 480, 480, 2),
    (dict(input_size=[3, 224, 224], crop_pct=0.875, interpolation="bicubic"), 256, 224, 3),
    (dict(input_size=[3, 384, 384], crop_pct=1.0, interpolation="bicubic"), 384, 384, 3),
    (dict(input_size=[3, 224, 224], crop_pct=0.875, interpolation="bilinear"), 256, 224, 2),
]


@pytest.mark.parametrize("fields, edge, crop, resample", PREPROCESSING)
def test_preprocessing_from_pretrained_cfg(fields, edge, crop, resample):
    cfg = preprocess_from_timm(timm_config(**fields)["pretrained_cfg"])
    got = (cfg.resize_mode, cfg.shortest_edge, cfg.crop_size, cfg.resample)
    assert got == ("shortest_edge", edge, (crop, crop), resample)
    assert cfg.do_center_crop and cfg.do_rescale and cfg.do_normalize
    assert cfg.image_mean == (0.5, 0.5, 0.5) and cfg.image_std == (0.5, 0.5, 0.5)


def test_preprocessing_defaults_and_modes():
    cfg = preprocess_from_timm({})  # timm's defaults: 224, crop_pct 0.875, bilinear, ImageNet mean/std
    assert (cfg.shortest_edge, cfg.crop_size, cfg.resample) == (256, (224, 224), 2)
    assert cfg.image_mean == (0.485, 0.456, 0.406)
    squash = preprocess_from_timm({"input_size": [3, 224, 224], "crop_pct": 0.875, "crop_mode": "squash"})
    assert (squash.resize_mode, squash.size, squash.crop_size) == ("exact", (256, 256), (224, 224))
    with pytest.raises(ConfigError, match="crop_mode 'border'"):
        preprocess_from_timm({"crop_mode": "border"})
    with pytest.raises(ConfigError, match="interpolation 'random'"):
        preprocess_from_timm({"interpolation": "random"})


@pytest.mark.parametrize(
    "timm_key, canonical",
    [
        ("stem.conv.weight", "bit.embedder.convolution.weight"),
        ("stages.0.blocks.0.downsample.conv.weight", "bit.encoder.stages.0.layers.0.downsample.conv.weight"),
        ("stages.2.blocks.22.norm3.bias", "bit.encoder.stages.2.layers.22.norm3.bias"),
        ("stages.3.blocks.1.conv2.weight", "bit.encoder.stages.3.layers.1.conv2.weight"),
        ("norm.weight", "bit.norm.weight"),
        ("head.fc.weight", "classifier.1.weight"),
        ("head.fc.bias", "classifier.1.bias"),
    ],
)
def test_key_mapping(timm_key, canonical):
    assert timm_key_to_canonical(timm_key) == canonical
    assert canonical_key_to_timm(canonical) == timm_key


def test_unknown_timm_key_is_a_checkpoint_error():
    with pytest.raises(CheckpointError, match="stem.norm.weight"):
        timm_key_to_canonical("stem.norm.weight")


def test_every_model_key_round_trips():
    config = bit_config_from_timm(timm_config("resnetv2_101x1_bit"))
    with torch.device("meta"):
        keys = list(BiT(config).state_dict())
    assert [timm_key_to_canonical(canonical_key_to_timm(k)) for k in keys] == keys


def test_head_conv_becomes_linear():
    converted = convert_timm_state_dict({"head.fc.weight": torch.arange(6.0).reshape(3, 2, 1, 1)})
    assert torch.equal(converted["classifier.1.weight"], torch.arange(6.0).reshape(3, 2))


def write_timm_checkpoint(directory, config_data: dict, canonical: dict[str, torch.Tensor]) -> None:
    """Save weights under timm's names and layouts, as timm's save_for_hf does."""
    timm_sd = {}
    for key, value in canonical.items():
        value = value[:, :, None, None] if key == "classifier.1.weight" else value
        timm_sd[canonical_key_to_timm(key)] = value.contiguous()
    directory.mkdir(parents=True, exist_ok=True)
    save_file(timm_sd, str(directory / "model.safetensors"))
    (directory / "config.json").write_text(json.dumps(config_data), encoding="utf-8")


@pytest.mark.slow
def test_timm_directory_loads_with_its_preprocessing(tmp_path):
    data = timm_config("resnetv2_50x1_bit", num_classes=21843, input_size=[3, 448, 448], crop_pct=1.0)
    data["model_args"] = {"layers": [1, 1, 1, 1]}
    config = bit_config_from_timm(data)
    generator = torch.Generator().manual_seed(0)
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in BiT(config).state_dict().items()}
    raw = {k: torch.randn(shape, generator=generator) for k, shape in shapes.items()}
    write_timm_checkpoint(tmp_path / "ckpt", data, raw)

    loaded = load_model(tmp_path / "ckpt")
    assert loaded.source_format == "timm"
    assert loaded.preprocess.shortest_edge == 448 and loaded.preprocess.crop_size == (448, 448)
    expected = build_model(config, raw).state_dict()  # the same raw weights under canonical names
    got = loaded.model.state_dict()
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[k], expected[k]) for k in expected)
    labels = resolve_labels(loaded.config.num_labels, loaded.config.id2label)
    assert labels.source == "ImageNet-21k (bundled)"


def test_timm_directory_with_a_wrong_head_is_refused(tmp_path):
    data = timm_config("resnetv2_50x1_bit", num_classes=10)
    data["model_args"] = {"layers": [1, 1, 1, 1]}
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in BiT(bit_config_from_timm(data)).state_dict().items()}
    raw = {k: torch.zeros(shape) for k, shape in shapes.items()}
    data["num_classes"] = 1000  # config says 1000, weights have 10
    write_timm_checkpoint(tmp_path / "ckpt", data, raw)
    with pytest.raises(CheckpointError, match="classifier.1.weight"):
        load_model(tmp_path / "ckpt")
