"""timm-format BiT checkpoints (`timm/resnetv2_50x1_bit.goog_in21k` and friends on the hub).

From timm's `config.json`: depths and width from the architecture name (or `model_args`), the
head from `num_classes`, preprocessing from `pretrained_cfg` as timm's eval transform; weights
renamed to the canonical names (`head.fc` [K, C, 1, 1] -> `classifier.1` [K, C]). The width
factor is folded into `hidden_sizes`, as transformers builds it, and kept in
`folded_width_factor` for `bit inspect`. No torch import here."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bitcli.checkpoint.files import CONFIG, RawCheckpoint, read_weights
from bitcli.errors import CheckpointError, ConfigError
from bitcli.model.config import BASE_STEM, BASE_WIDTHS, BitConfig, make_divisible
from bitcli.util import RESAMPLE_FILTERS, first_line

if TYPE_CHECKING:
    from torch import Tensor

    from bitcli.preprocess import PreprocessConfig

DEPTHS = {50: [3, 4, 6, 3], 101: [3, 4, 23, 3], 152: [3, 8, 36, 3]}
WS_EPS = 1e-8  # timm's StdConv2d eps for BiT models

# Current names plus the pre-0.9 timm names (`resnetv2_50x1_bitm_in21k`, `..._bit_teacher_384`).
_ARCH = re.compile(r"resnetv2_(50|101|152)x([1-4])_bit(?:m|m_in21k|_distilled|_teacher|_teacher_384)?")

# timm's defaults when a pretrained_cfg leaves a field out (timm.data.resolve_data_config).
DEFAULT_CROP_PCT = 0.875
IMAGENET_DEFAULT_MEAN = (0.485, 0.456, 0.406)
IMAGENET_DEFAULT_STD = (0.229, 0.224, 0.225)
# model_args timm may record that do not change the weights or the eval forward pass.
_HARMLESS_MODEL_ARGS = {"num_classes", "in_chans", "drop_rate", "drop_path_rate", "global_pool"}


def parse_architecture(name: str) -> tuple[list[int], int]:
    """'resnetv2_101x3_bit' -> (depths [3, 4, 23, 3], width factor 3); ConfigError for anything else."""
    base = name.split(".", 1)[0]  # tolerate a trailing `.tag`
    match = _ARCH.fullmatch(base)
    if match is None:
        raise ConfigError(
            f"timm architecture {name!r} is not a BiT model "
            "(bitcli loads resnetv2_{50,101,152}x{1,2,3,4}_bit)"
        )
    return list(DEPTHS[int(match.group(1))]), int(match.group(2))


def pretrained_cfg_of(data: dict[str, Any]) -> dict[str, Any]:
    """The preprocessing/label dict: `pretrained_cfg`, or the whole file in timm's legacy flat layout."""
    cfg = data.get("pretrained_cfg", data)
    if not isinstance(cfg, dict):
        raise ConfigError("timm config.json: pretrained_cfg must be an object")
    return cfg


def bit_config_from_timm(data: dict[str, Any]) -> BitConfig:
    """BitConfig for a timm config.json dict (architecture, num_classes, model_args, label_names)."""
    depths, width = parse_architecture(data["architecture"])
    model_args = data.get("model_args") or {}
    unsupported = sorted(set(model_args) - _HARMLESS_MODEL_ARGS - {"layers", "width_factor"})
    if unsupported:
        raise ConfigError(f"timm model_args {unsupported} change the architecture; bitcli cannot build them")
    depths = [int(d) for d in model_args.get("layers", depths)]
    width = int(model_args.get("width_factor", width))
    pretrained = pretrained_cfg_of(data)
    num_classes = int(data.get("num_classes", model_args.get("num_classes", pretrained.get("num_classes", 1000))))
    num_channels = int(model_args.get("in_chans", (pretrained.get("input_size") or [3])[0]))
    hidden_sizes = [make_divisible(w * width) for w in BASE_WIDTHS]
    num_features = data.get("num_features")
    if num_features is not None and int(num_features) != hidden_sizes[-1]:
        raise ConfigError(
            f"timm config says num_features {num_features}, but {data['architecture']} has {hidden_sizes[-1]}"
        )
    return BitConfig(
        num_channels=num_channels,
        embedding_size=make_divisible(BASE_STEM * width),
        hidden_sizes=hidden_sizes,
        depths=depths,
        folded_width_factor=width,  # width_factor stays 1: see the module docstring
        num_labels=num_classes,
        id2label=timm_id2label(data, num_classes),
        ws_eps=WS_EPS,
    )


def timm_id2label(data: dict[str, Any], num_classes: int) -> dict[int, str]:
    """The checkpoint's own class names (`label_names`, legacy `labels`), or {} when it has none."""
    pretrained = pretrained_cfg_of(data)
    names = data.get("label_names") or pretrained.get("label_names") or pretrained.get("labels")
    if not names:
        return {}
    if not isinstance(names, list) or len(names) != num_classes:
        count = len(names) if isinstance(names, list) else "non-list"
        raise ConfigError(f"timm config label_names has {count} entries, but the head has {num_classes} classes")
    return {i: str(name) for i, name in enumerate(names)}


def preprocess_from_timm(pretrained_cfg: dict[str, Any]) -> PreprocessConfig:
    """timm's eval transform (`create_transform(**resolve_data_config(...))`) as a PreprocessConfig."""
    from bitcli.preprocess import PreprocessConfig

    input_size = pretrained_cfg.get("input_size") or (3, 224, 224)
    height, width = int(input_size[-2]), int(input_size[-1])
    crop_pct = float(pretrained_cfg.get("crop_pct") or DEFAULT_CROP_PCT)
    crop_mode = pretrained_cfg.get("crop_mode") or "center"
    interpolation = pretrained_cfg.get("interpolation") or "bilinear"
    if interpolation not in RESAMPLE_FILTERS:
        raise ConfigError(f"timm interpolation {interpolation!r} is not supported (use {', '.join(RESAMPLE_FILTERS)})")
    scale = (math.floor(height / crop_pct), math.floor(width / crop_pct))  # exactly timm's arithmetic
    if crop_mode == "center":
        if height != width:
            raise ConfigError(
                f"timm input_size {height}x{width}: only square inputs are supported with crop_mode center"
            )
        resize = {"resize_mode": "shortest_edge", "shortest_edge": scale[0], "size": None}
    elif crop_mode == "squash":
        resize = {"resize_mode": "exact", "shortest_edge": None, "size": scale}
    else:
        raise ConfigError(f"timm crop_mode {crop_mode!r} is not supported (use center or squash)")
    return PreprocessConfig(
        **resize,
        resample=RESAMPLE_FILTERS[interpolation],
        crop_size=(height, width),
        image_mean=tuple(float(v) for v in pretrained_cfg.get("mean") or IMAGENET_DEFAULT_MEAN),
        image_std=tuple(float(v) for v in pretrained_cfg.get("std") or IMAGENET_DEFAULT_STD),
        crop_rounding="half_even",  # torchvision's CenterCrop
    )


def timm_key_to_canonical(key: str) -> str:
    """One timm state-dict key -> the canonical (transformers) name; CheckpointError if unknown."""
    if key.startswith("stem.conv."):
        return "bit.embedder.convolution." + key[len("stem.conv.") :]
    if key.startswith("norm."):
        return "bit." + key
    if key.startswith("head.fc."):
        return "classifier.1." + key[len("head.fc.") :]
    match = re.fullmatch(r"stages\.(\d+)\.blocks\.(\d+)\.(.+)", key)
    if match is not None:
        return f"bit.encoder.stages.{match.group(1)}.layers.{match.group(2)}.{match.group(3)}"
    raise CheckpointError(f"unexpected tensor {key!r} in a timm BiT checkpoint")


def convert_timm_state_dict(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """timm names -> canonical names; the head's 1x1-conv weight [K, C, 1, 1] -> linear [K, C]."""
    converted: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        new_key = timm_key_to_canonical(key)
        if new_key == "classifier.1.weight" and value.ndim == 4:
            if tuple(value.shape[2:]) != (1, 1):
                raise CheckpointError(f"{key}: expected a 1x1 convolution head, found shape {list(value.shape)}")
            value = value.reshape(value.shape[0], value.shape[1])
        converted[new_key] = value
    return converted


def read_timm_checkpoint(directory: Path, config_data: dict[str, Any], *, header_only: bool = False) -> RawCheckpoint:
    """A timm checkpoint directory -> RawCheckpoint with canonical names (called by `checkpoint.read_checkpoint`)."""
    try:
        config = bit_config_from_timm(config_data)
    except (TypeError, ValueError, AttributeError, KeyError) as exc:  # a field of the wrong type
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"{directory / CONFIG}: a field has the wrong type ({first_line(exc)})") from None
    state_dict, weights_format, weight_files = read_weights(directory, header_only=header_only)
    if config.num_labels == 0:
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith("head.")}
    return RawCheckpoint(
        config=config,
        state_dict=convert_timm_state_dict(state_dict),
        preprocess=preprocess_from_timm(pretrained_cfg_of(config_data)),
        source_format="timm",
        weights_format=weights_format,
        files=[directory / CONFIG, *weight_files],
    )
