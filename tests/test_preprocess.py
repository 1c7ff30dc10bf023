"""Preprocessing equals transformers' BitImageProcessorPil, image for image, over the whole zoo."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from bitcli.decode import open_image
from bitcli.errors import ConfigError
from bitcli.preprocess import (
    OPENAI_CLIP_MEAN,
    PreprocessConfig,
    center_crop_box,
    preprocess,
    resize_output_size,
)
from checkpoints import BIT_50_PREPROCESSOR

from images import rgb, sixteen_bit_twins, write_large_photo, write_zoo

transformers = pytest.importorskip("transformers")
from transformers import BitImageProcessorPil  # noqa: E402

SAMPLE_IMAGES = sorted((Path(__file__).parent.parent / "sample_images").glob("*.[jp][pn]g"))

# google/bit-50's preprocessor_config.json (the fields that matter).
BIT_50 = {k: v for k, v in BIT_50_PREPROCESSOR.items() if k != "image_processor_type"}
CONFIGS = {"bit-50": BIT_50, "defaults": {}}
TOLERANCE = 1e-6


@pytest.fixture(scope="module")
def zoo(tmp_path_factory) -> dict[str, Path]:
    return write_zoo(tmp_path_factory.mktemp("zoo"))


@pytest.fixture(scope="module")
def references() -> dict[str, BitImageProcessorPil]:
    return {name: BitImageProcessorPil(**kwargs) for name, kwargs in CONFIGS.items()}


def reference_tensor(processor: BitImageProcessorPil, path: Path) -> torch.Tensor:
    image = ImageOps.exif_transpose(Image.open(path))
    return processor(image, return_tensors="pt")["pixel_values"][0]


def assert_matches_reference(ours: torch.Tensor, reference: torch.Tensor) -> None:
    assert ours.dtype == torch.float32
    assert ours.shape == reference.shape
    assert (ours - reference).abs().max().item() <= TOLERANCE


@pytest.mark.slow
@pytest.mark.parametrize("config_name", sorted(CONFIGS))
def test_zoo_matches_reference(zoo, references, config_name):
    cfg = PreprocessConfig.from_dict(CONFIGS[config_name])
    for name, path in zoo.items():
        ours = preprocess(open_image(path), cfg)
        reference = reference_tensor(references[config_name], path)
        assert ours.shape == reference.shape, name
        assert (ours - reference).abs().max().item() <= TOLERANCE, name


@pytest.mark.parametrize("config_name", sorted(CONFIGS))
def test_sample_photos_match_reference(references, config_name):
    assert len(SAMPLE_IMAGES) >= 4
    cfg = PreprocessConfig.from_dict(CONFIGS[config_name])
    for path in SAMPLE_IMAGES:
        assert_matches_reference(
            preprocess(open_image(path), cfg), reference_tensor(references[config_name], path)
        )


@pytest.mark.slow
def test_large_rotated_photo_matches_reference(tmp_path, references):
    path = write_large_photo(tmp_path / "large.jpg")
    image = open_image(path)
    assert image.size == (3000, 4000)  # EXIF orientation 6 turns it to portrait
    for name, kwargs in CONFIGS.items():
        ours = preprocess(image, PreprocessConfig.from_dict(kwargs))
        assert_matches_reference(ours, reference_tensor(references[name], path))


@pytest.mark.parametrize(
    "kwargs",
    [
        # No resize: the crop is larger than the image in both directions, so it pads.
        {"do_resize": False, "crop_size": {"height": 100, "width": 80}},
        # Larger in one direction, smaller in the other, odd sizes.
        {"do_resize": False, "crop_size": {"height": 31, "width": 90}},
        # Shortest edge smaller than the crop: padding after resize.
        {"size": {"shortest_edge": 40}, "crop_size": {"height": 45, "width": 45}},
        # Squash to an exact size, no crop, nearest neighbour.
        {"size": {"height": 33, "width": 70}, "resample": 0, "do_center_crop": False},
        # No rescale, normalize raw 0-255 values; no normalize at all.
        {"do_rescale": False, "image_mean": [100, 120, 140], "image_std": [50, 60, 70]},
        {"do_normalize": False},
        {"resample": 1, "rescale_factor": 0.5},
    ],
)
def test_config_variants_match_reference(kwargs):
    image = rgb(61, 47, seed=3)
    cfg = PreprocessConfig.from_dict(kwargs)
    reference = BitImageProcessorPil(**kwargs)(image, return_tensors="pt")["pixel_values"][0]
    assert_matches_reference(preprocess(image, cfg), reference.to(torch.float32))


def test_defaults_are_bit_image_processor_defaults():
    reference = BitImageProcessorPil()
    cfg = PreprocessConfig()
    assert cfg.shortest_edge == reference.size.shortest_edge == 224
    assert cfg.crop_size == (reference.crop_size.height, reference.crop_size.width)
    assert cfg.resample == int(reference.resample) == 3
    assert cfg.image_mean == pytest.approx(reference.image_mean)
    assert cfg.image_std == pytest.approx(reference.image_std)
    assert cfg.rescale_factor == reference.rescale_factor
    assert (cfg.do_resize, cfg.do_center_crop, cfg.do_rescale, cfg.do_normalize) == (
        True,
        True,
        True,
        True,
    )


def test_bit_50_config_from_json(tmp_path):
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(BIT_50))
    cfg = PreprocessConfig.load(tmp_path)
    assert cfg.resize_mode == "shortest_edge" and cfg.shortest_edge == 448
    assert cfg.resample == 2 and cfg.crop_size == (448, 448)
    assert cfg.image_mean == (0.5, 0.5, 0.5) and cfg.image_std == (0.5, 0.5, 0.5)
    assert cfg.input_size == (448, 448)
    assert cfg.describe() == {
        "resize": "shortest edge to 448",
        "crop": "center 448x448",
        "interpolation": "bilinear",
        "rescale": pytest.approx(1 / 255),
        "mean": [0.5, 0.5, 0.5],
        "std": [0.5, 0.5, 0.5],
        "input_size": [448, 448],
    }


def test_describe_without_resize_or_crop():
    cfg = PreprocessConfig(do_resize=False, do_center_crop=False)
    assert cfg.describe()["input_size"] is None
    with pytest.raises(ConfigError):
        cfg.input_size


def test_missing_file_and_missing_fields_take_defaults(tmp_path):
    assert PreprocessConfig.load(tmp_path) == PreprocessConfig()
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"crop_size": 384}))
    cfg = PreprocessConfig.load(tmp_path)
    assert cfg.crop_size == (384, 384)
    assert cfg.shortest_edge == 224 and cfg.image_mean == OPENAI_CLIP_MEAN


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        (448, ("shortest_edge", 448, None)),
        ({"shortest_edge": 480}, ("shortest_edge", 480, None)),
        ({"height": 384, "width": 320}, ("exact", None, (384, 320))),
        ([384, 320], ("exact", None, (384, 320))),
    ],
)
def test_size_forms(size, expected):
    cfg = PreprocessConfig.from_dict({"size": size})
    assert (cfg.resize_mode, cfg.shortest_edge, cfg.size) == expected


@pytest.mark.parametrize(
    "bad",
    [
        {"size": {"longest_edge": 100}},
        {"size": {"shortest_edge": 100, "longest_edge": 200}},
        {"resample": 9},
        {"image_mean": [0.5, 0.5]},
        {"crop_size": "big"},
    ],
)
def test_unsupported_configs_are_config_errors(bad):
    with pytest.raises(ConfigError):
        PreprocessConfig.from_dict(bad)


def test_malformed_json_is_a_config_error(tmp_path):
    (tmp_path / "preprocessor_config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="preprocessor_config.json"):
        PreprocessConfig.load(tmp_path)


@pytest.mark.parametrize(
    ("height", "width", "expected"),
    [
        (3000, 4000, (448, 597)),  # int(448 * 4000 / 3000) = 597.33 -> 597, truncated
        (4000, 3000, (597, 448)),
        (500, 3, (74666, 448)),
        (1, 1, (448, 448)),
        (449, 451, (448, 449)),  # 449.99 -> 449
    ],
)
def test_resize_output_size_truncates_like_transformers(height, width, expected):
    from transformers.image_transforms import get_resize_output_image_size

    cfg = PreprocessConfig(shortest_edge=448)
    assert resize_output_size(height, width, cfg) == expected
    dummy = np.zeros((3, height, width), dtype=np.uint8) if height * width < 10**6 else None
    if dummy is not None:
        assert get_resize_output_image_size(dummy, 448, default_to_square=False) == expected


def test_center_crop_box_offsets_floor_for_odd_margins():
    assert center_crop_box(451, 449, (448, 448)) == (0, 1, 448, 449)
    assert center_crop_box(10, 10, (13, 14)) == (-2, -2, 12, 11)  # pads 2 before, rest after


def test_sixteen_bit_image_equals_its_eight_bit_twin(tmp_path):
    path8, path16 = sixteen_bit_twins(tmp_path)
    cfg = PreprocessConfig.from_dict(BIT_50)
    assert torch.equal(preprocess(open_image(path16), cfg), preprocess(open_image(path8), cfg))
    # And the reference is indeed wrong here: a white square.
    white = reference_tensor(BitImageProcessorPil(**BIT_50), path16)
    assert white.min().item() == 1.0


def test_preprocess_accepts_non_rgb_images_and_config_is_callable():
    image = rgb(50, 40).convert("L")
    cfg = PreprocessConfig(shortest_edge=32, crop_size=(32, 32), image_mean=(0.5,) * 3, image_std=(0.5,) * 3)
    tensor = cfg(image)
    assert tensor.shape == (3, 32, 32)
    assert torch.equal(tensor[0], tensor[1]) and torch.equal(tensor[1], tensor[2])
    assert tensor.std().item() > 0.1


def test_output_is_contiguous_and_owns_no_pil_memory():
    tensor = preprocess(rgb(300, 200), PreprocessConfig())
    assert tensor.is_contiguous()
    tensor.add_(1)  # writable: not a view of a read-only PIL buffer


def test_draft_size_is_square_and_covers_the_resize():
    assert PreprocessConfig.from_dict(BIT_50).draft_size() == (896, 896)
    assert PreprocessConfig.from_dict(BIT_50).draft_size(oversample=1) == (448, 448)
    assert PreprocessConfig(resize_mode="exact", size=(384, 320)).draft_size() == (768, 768)
    assert PreprocessConfig(do_resize=False).draft_size() is None
