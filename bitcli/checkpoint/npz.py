"""Original-release BiT weights: the `.npz` files of google-research/big_transfer.

`BiT-{S,M}-R*.npz` (upstream), `BiT-M-R*-ILSVRC2012.npz` (fine-tuned on ImageNet-1k) and the
distilled `R50x1_224.npz`; TensorFlow HWIO kernels become OIHW; depths, width and head size come
from the arrays. Weight-standardization eps 1e-10. Preprocessing is the release's: squash to
crop x crop (bilinear), pixels to [-1, 1]; the crop is 480 for ILSVRC2012 files, 224 upstream,
or a name's `_<size>`. A `preprocessor_config.json` beside the file overrides it."""

from __future__ import annotations

import math
import re
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from bitcli.checkpoint.files import PREPROCESSOR_CONFIG, RawCheckpoint
from bitcli.errors import CheckpointError
from bitcli.model.config import BASE_STEM, BASE_WIDTHS, BitConfig, make_divisible
from bitcli.util import human_bytes, name_some

if TYPE_CHECKING:
    from bitcli.preprocess import PreprocessConfig

WS_EPS = 1e-10  # the original release's weight-standardization eps
FINETUNED_SIZE = 480  # BiT-HyperRule crop for ImageNet-sized images
UPSTREAM_SIZE = 224
_ROOT_KERNEL = "root_block/standardized_conv2d/kernel"
_CONV = "standardized_conv2d/kernel"
# Block part -> canonical conv and norm names (a: 1x1 reduce, b: 3x3, c: 1x1 expand).
_PARTS = {"a": ("conv1", "norm1"), "b": ("conv2", "norm2"), "c": ("conv3", "norm3")}
_UNIT = re.compile(r"block(\d+)/unit(\d+)/")


def _check_sizes(path: Path) -> None:
    """Refuse an archive whose arrays would take far more memory than the file holds (a zip bomb,
    or a `.npy` header claiming a shape its data does not fill: numpy allocates the shape first)."""
    size = path.stat().st_size
    with zipfile.ZipFile(path) as archive:
        infos = archive.infolist()
        declared = sum(info.file_size for info in infos)
        if declared > max(8 * size, size + (64 << 20)):  # real releases are stored or barely compressed
            raise CheckpointError(
                f"{path}: its arrays would take {human_bytes(declared)} from a {human_bytes(size)} file; "
                "a damaged or malicious archive"
            )
        for info in infos:
            with archive.open(info) as member:
                try:
                    version = np.lib.format.read_magic(member)
                    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                    shape, _, dtype = read(member)
                except ValueError:
                    raise CheckpointError(f"{path}: {info.filename} is not a .npy array") from None
                if math.prod(shape) * dtype.itemsize > info.file_size:
                    raise CheckpointError(f"{path}: {info.filename} claims a {list(shape)} array it does not hold")


def read_npz_arrays(path: Path) -> dict[str, np.ndarray]:
    """All arrays of an .npz file; pickled object arrays are refused, never loaded."""
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    if not zipfile.is_zipfile(path):  # np.load would otherwise try it as a pickle or a bare .npy
        raise CheckpointError(f"{path}: not a readable .npz file (not a zip archive)")
    try:
        _check_sizes(path)
        with np.load(path, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    except ValueError as exc:  # numpy's answer to an object array with allow_pickle=False
        raise CheckpointError(f"{path}: holds pickled objects, which bitcli never loads ({exc})") from None
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise CheckpointError(f"{path}: not a readable .npz file ({exc})") from None


def _prefix_and_depths(arrays: dict[str, np.ndarray], path: Path) -> tuple[str, list[int]]:
    """The key prefix before `root_block/...` (`resnet/` in every released file) and the units per
    block, from the `block{i}/unit{j:02d}` key names; blocks and units must be numbered 1..n."""
    prefix = next((key[: -len(_ROOT_KERNEL)] for key in arrays if key.endswith(_ROOT_KERNEL)), None)
    if prefix is None:
        raise CheckpointError(f"{path}: no {_ROOT_KERNEL} array; not a BiT .npz checkpoint")
    units: dict[int, set[int]] = {}
    for key in arrays:
        match = _UNIT.match(key[len(prefix) :]) if key.startswith(prefix) else None
        if match is not None:
            units.setdefault(int(match.group(1)), set()).add(int(match.group(2)))
    blocks = sorted(units)
    if not blocks or blocks != list(range(1, len(blocks) + 1)):
        raise CheckpointError(f"BiT .npz blocks {blocks} are not numbered 1..n")
    for block in blocks:
        if sorted(units[block]) != list(range(1, len(units[block]) + 1)):
            raise CheckpointError(f"BiT .npz block{block} units {sorted(units[block])} are not numbered 1..n")
    return prefix, [len(units[block]) for block in blocks]


def npz_key_map(depths: list[int], prefix: str = "resnet/", head: bool = True) -> dict[str, str]:
    """Every .npz key of a model with these depths -> its canonical (transformers) name."""
    mapping = {
        f"{prefix}{_ROOT_KERNEL}": "bit.embedder.convolution.weight",
        f"{prefix}group_norm/gamma": "bit.norm.weight",
        f"{prefix}group_norm/beta": "bit.norm.bias",
    }
    if head:
        mapping[f"{prefix}head/conv2d/kernel"] = "classifier.1.weight"
        mapping[f"{prefix}head/conv2d/bias"] = "classifier.1.bias"
    for i, depth in enumerate(depths):
        for j in range(depth):
            unit = f"{prefix}block{i + 1}/unit{j + 1:02d}/"
            layer = f"bit.encoder.stages.{i}.layers.{j}."
            for part, (conv, norm) in _PARTS.items():
                mapping[f"{unit}{part}/{_CONV}"] = f"{layer}{conv}.weight"
                mapping[f"{unit}{part}/group_norm/gamma"] = f"{layer}{norm}.weight"
                mapping[f"{unit}{part}/group_norm/beta"] = f"{layer}{norm}.bias"
            if j == 0:
                mapping[f"{unit}a/proj/{_CONV}"] = f"{layer}downsample.conv.weight"
    return mapping


def convert_npz_arrays(arrays: dict[str, np.ndarray], depths: list[int], prefix: str) -> dict[str, Tensor]:
    """Rename and re-layout every array; a missing or left-over array is a CheckpointError."""
    head = f"{prefix}head/conv2d/kernel" in arrays
    mapping = npz_key_map(depths, prefix, head=head)
    missing = [key for key in mapping if key not in arrays]
    extra = [key for key in arrays if key not in mapping]
    if missing or extra:
        raise CheckpointError(
            f"BiT .npz arrays do not match a depth {depths} model: "
            f"missing {len(missing)} ({name_some(missing)}), unexpected {len(extra)} ({name_some(extra)})"
        )
    state_dict: dict[str, Tensor] = {}
    for key, name in mapping.items():
        array = arrays[key]
        if name == "classifier.1.weight":  # [1, 1, C, K] (or [C, K]) -> [K, C]
            array = array.reshape(array.shape[-2], array.shape[-1]).T
        elif key.endswith("/kernel"):  # HWIO -> OIHW
            if array.ndim != 4:
                raise CheckpointError(f"{key}: expected a 4-D HWIO kernel, found shape {list(array.shape)}")
            array = array.transpose(3, 2, 0, 1)
        elif array.ndim > 1 and sum(d != 1 for d in array.shape) > 1:  # a per-channel vector, any [1, 1, 1, C]
            raise CheckpointError(f"{key}: expected a vector, found shape {list(array.shape)}")
        else:
            array = array.reshape(-1)
        state_dict[name] = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    return state_dict


def bit_config_from_state_dict(state_dict: dict[str, Tensor], depths: list[int]) -> BitConfig:
    """Widths from the stem and each stage's last conv; head size from the classifier, if any."""
    stem = int(state_dict["bit.embedder.convolution.weight"].shape[0])
    widths = [
        int(state_dict[f"bit.encoder.stages.{i}.layers.{depths[i] - 1}.conv3.weight"].shape[0])
        for i in range(len(depths))
    ]
    head = state_dict.get("classifier.1.weight")
    width = release_width_factor(stem, widths)
    return BitConfig(
        num_channels=int(state_dict["bit.embedder.convolution.weight"].shape[1]),
        embedding_size=stem,
        hidden_sizes=widths,
        depths=depths,
        folded_width_factor=width,  # width_factor stays 1: folded into hidden_sizes, as for timm
        num_labels=0 if head is None else int(head.shape[0]),
        ws_eps=WS_EPS,
    )


def release_width_factor(stem: int, widths: list[int]) -> int:
    """The release's width factor (R50x3: 3) from stem and stage widths; 1 for custom widths."""
    for factor in (1, 2, 3, 4):
        if stem == BASE_STEM * factor and widths == [make_divisible(w * factor) for w in BASE_WIDTHS]:
            return factor
    return 1


def default_image_size(path: Path) -> int:
    """The release's evaluation crop for this file name (see the module docstring)."""
    stem = path.stem
    sized = re.search(r"_(\d{2,4})$", stem)
    if sized is not None:
        return int(sized.group(1))
    if stem.upper().endswith("-ILSVRC2012"):
        return FINETUNED_SIZE
    return UPSTREAM_SIZE


def npz_preprocess(image_size: int) -> PreprocessConfig:
    """The release's eval transform: squash to image_size x image_size (bilinear), pixels to [-1, 1]."""
    from bitcli.preprocess import PreprocessConfig

    return PreprocessConfig(
        resize_mode="exact",
        shortest_edge=None,
        size=(image_size, image_size),
        resample=2,  # PIL bilinear, torchvision's default for Resize
        do_center_crop=False,
        crop_size=(image_size, image_size),
        image_mean=(0.5, 0.5, 0.5),
        image_std=(0.5, 0.5, 0.5),
    )


def read_npz_checkpoint(path: str | Path, *, image_size: int | None = None) -> RawCheckpoint:
    """An .npz file -> RawCheckpoint with raw conv weights; a sidecar preprocessor_config.json overrides what it sets."""
    from bitcli.preprocess import PreprocessConfig

    path = Path(path)
    arrays = read_npz_arrays(path)
    prefix, depths = _prefix_and_depths(arrays, path)
    state_dict = convert_npz_arrays(arrays, depths, prefix)
    config = bit_config_from_state_dict(state_dict, depths)
    preprocess = npz_preprocess(image_size or default_image_size(path))
    files = [path]
    sidecar = path.parent / PREPROCESSOR_CONFIG
    if sidecar.is_file():
        preprocess = PreprocessConfig.from_json_file(sidecar, base=preprocess)
        files.append(sidecar)
    return RawCheckpoint(
        config=config,
        state_dict=state_dict,
        preprocess=preprocess,
        source_format="original",
        weights_format="numpy .npz (BiT release)",
        files=files,
    )
