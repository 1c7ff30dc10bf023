"""Preprocessing config and image -> tensor, equal to transformers' `BitImageProcessorPil`.

RGB (`decode.to_rgb`); PIL resize (shortest edge: the long side `int(S * long / short)`, or
exact); center crop at `((H - h) // 2, (W - w) // 2)`, zero-padded where the image is smaller;
rescale `float32(float64(uint8) * factor)`; normalize in float32. Rescale and normalize depend
only on the 8-bit value, so they are one [3, 256] lookup table in the reference's dtypes.
A resize over `CROP_REGION_PIXELS` (or `max_pixels`) is computed for the crop's region only
(`bitcli.resample`); where that is impossible, over `max_pixels` raises `ImageTooLarge`."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from bitcli.checkpoint.files import PREPROCESSOR_CONFIG
from bitcli.decode import DRAFT_BOX_KEY, FULL_SIZE_KEY, to_rgb
from bitcli import resample
from bitcli.errors import ConfigError
from bitcli.util import RESAMPLE_FILTERS, read_json_file

if TYPE_CHECKING:
    import torch  # imported where a tensor is made: `bit inspect` reads a config without torch

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

RESAMPLE_NAMES = {number: name for name, number in RESAMPLE_FILTERS.items()}  # PIL number -> name

# A resize to more pixels than this is done for the crop's region only (same pixels, see
# bitcli.resample): each decoding thread then holds at most the crop, not a 4-gigapixel strip.
CROP_REGION_PIXELS = 16_000_000


class ImageTooLarge(ValueError):
    """Preprocessing this image would allocate more pixels than allowed (a per-image failure)."""


@dataclass(frozen=True)
class PreprocessConfig:
    """The fields of a `preprocessor_config.json`; defaults are `BitImageProcessor`'s."""

    do_resize: bool = True
    resize_mode: str = "shortest_edge"  # "shortest_edge" (keeps aspect) or "exact" (squash)
    shortest_edge: int | None = 224
    size: tuple[int, int] | None = None  # (height, width), used by "exact"
    resample: int = 3  # PIL enum number: bicubic
    do_center_crop: bool = True
    crop_size: tuple[int, int] = (224, 224)  # (height, width)
    do_rescale: bool = True
    rescale_factor: float = 1 / 255
    do_normalize: bool = True
    image_mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    image_std: tuple[float, float, float] = OPENAI_CLIP_STD
    do_convert_rgb: bool = True
    # Center-crop offset: "floor" ((H - h) // 2, transformers) or "half_even" (round((H - h) / 2),
    # torchvision, hence timm); they differ by one pixel when H - h is 3 mod 4.
    crop_rounding: str = "floor"
    # True when the checkpoint had no preprocessor_config.json and these are the defaults (not a
    # preprocessing field: equal configs stay equal): `missing_notice` says so.
    defaulted: bool = field(default=False, compare=False)

    def __post_init__(self) -> None:
        if self.resize_mode not in ("shortest_edge", "exact"):
            raise ConfigError(f"unknown resize mode {self.resize_mode!r}: use shortest_edge or exact")
        if self.do_resize and self.resize_mode == "shortest_edge" and not self.shortest_edge:
            raise ConfigError("resize mode shortest_edge needs a shortest_edge size")
        if self.do_resize and self.resize_mode == "exact" and not self.size:
            raise ConfigError("resize mode exact needs a (height, width) size")
        if self.crop_rounding not in ("floor", "half_even"):
            raise ConfigError(f"unknown crop rounding {self.crop_rounding!r}: use floor or half_even")
        if self.resample not in RESAMPLE_NAMES:
            raise ConfigError(f"unknown resample filter {self.resample!r}: use a PIL number 0-5")
        _check_sizes(self)
        # Non-finite or zero values would turn every pixel into NaN or infinity.
        for name, values in (("rescale_factor", (self.rescale_factor,)), ("image_mean", self.image_mean)):
            if not all(math.isfinite(v) for v in values):
                raise ConfigError(f"{name} must be finite, got {_listed(values)}")
        if not all(math.isfinite(v) and v != 0 for v in self.image_std):
            raise ConfigError(f"image_std must be finite and non-zero, got {_listed(self.image_std)}")

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, base: PreprocessConfig | None = None) -> PreprocessConfig:
        """From a `preprocessor_config.json` dict; missing fields from `base`, else the defaults."""
        fields: dict[str, Any] = {}
        for key in ("do_resize", "do_center_crop", "do_rescale", "do_normalize", "do_convert_rgb"):
            if d.get(key) is not None:
                fields[key] = bool(d[key])
        if d.get("size") is not None:
            fields.update(_parse_resize_size(d["size"]))
        if d.get("resample") is not None:
            fields["resample"] = _parse_resample(d["resample"])
        if d.get("crop_size") is not None:
            fields["crop_size"] = _parse_height_width(d["crop_size"], "crop_size")
        if d.get("rescale_factor") is not None:
            fields["rescale_factor"] = float(d["rescale_factor"])
        for key in ("image_mean", "image_std"):
            if d.get(key) is not None:
                fields[key] = _parse_triple(d[key], key)
        return replace(base, **fields) if base is not None else cls(**fields)

    @classmethod
    def from_json_file(
        cls, path: str | os.PathLike[str], *, base: PreprocessConfig | None = None
    ) -> PreprocessConfig:
        try:
            return cls.from_dict(read_json_file(path), base=base)
        except ConfigError as exc:
            if str(path) in str(exc):
                raise
            raise ConfigError(f"{path}: {exc}") from None
        except (TypeError, ValueError) as exc:  # a field of the wrong type (float("x"), int([]))
            raise ConfigError(f"{path}: a field has the wrong type ({exc})") from None

    @classmethod
    def load(cls, checkpoint_dir: str | os.PathLike[str]) -> PreprocessConfig:
        """`preprocessor_config.json` in `checkpoint_dir`, or the defaults (`defaulted`) if there is none."""
        path = Path(checkpoint_dir) / PREPROCESSOR_CONFIG
        return cls.from_json_file(path) if path.is_file() else cls(defaulted=True)

    def missing_notice(self, model: str) -> str | None:
        """One line for stderr when `model` had no preprocessor_config.json (None when it had one)."""
        if not self.defaulted:
            return None
        return (
            f"{model} has no {PREPROCESSOR_CONFIG}: images get transformers' defaults (resize to {self.shortest_edge}, "
            f"center crop {self.crop_size[0]}x{self.crop_size[1]}, {self.resample_name}, CLIP's mean and std); "
            f"if the model was trained otherwise, put its {PREPROCESSOR_CONFIG} in the folder"
        )

    @property
    def input_size(self) -> tuple[int, int]:
        """(height, width) of the model input: the crop, else the resize target."""
        if self.do_center_crop:
            return self.crop_size
        if self.do_resize and self.resize_mode == "exact" and self.size is not None:
            return self.size
        if self.do_resize and self.shortest_edge:
            # The output varies with the aspect ratio; the short side is the only fixed number.
            return (self.shortest_edge, self.shortest_edge)
        raise ConfigError("this preprocessing config has no fixed input size (no resize, no crop)")

    @property
    def resample_name(self) -> str:
        return RESAMPLE_NAMES[self.resample]

    def describe(self) -> dict[str, Any]:
        """A short summary for `bit inspect`."""
        if not self.do_resize:
            resize = None
        elif self.resize_mode == "shortest_edge":
            resize = f"shortest edge to {self.shortest_edge}"
        else:
            resize = f"to {self.size[0]}x{self.size[1]} (h x w)"  # type: ignore[index]
        return {
            "resize": resize,
            "crop": f"center {self.crop_size[0]}x{self.crop_size[1]}" if self.do_center_crop else None,
            "interpolation": self.resample_name,
            "rescale": self.rescale_factor if self.do_rescale else None,
            "mean": list(self.image_mean) if self.do_normalize else None,
            "std": list(self.image_std) if self.do_normalize else None,
            "input_size": list(self.input_size) if self.do_center_crop or self.do_resize else None,
        }

    def draft_size(self, oversample: int = 2) -> tuple[int, int] | None:
        """The `open_image(draft_size=...)` for fast JPEG decoding (None without a resize): square, at
        `oversample` times what the resize needs, so the final resize still smooths."""
        if not self.do_resize:
            return None
        if self.resize_mode == "shortest_edge":
            edge = int(self.shortest_edge)  # type: ignore[arg-type]
        else:
            edge = max(self.size)  # type: ignore[arg-type]
        return (oversample * edge, oversample * edge)

    @cached_property
    def _lut(self) -> np.ndarray:
        return _value_table(self)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return preprocess(image, self)


def preprocess(image: Image.Image, cfg: PreprocessConfig, *, max_pixels: int | None = None) -> torch.Tensor:
    """PIL image -> float32 tensor [3, H, W], equal to `BitImageProcessorPil`; `max_pixels` as in the module docstring."""
    import torch  # here, not at module level: `bit inspect` reads a config without torch

    if image.mode != "RGB":
        # The model needs 3 channels, so convert even when do_convert_rgb is off.
        image = to_rgb(image)
    if cfg.do_resize:
        # A draft-decoded JPEG is sized as its full-scale self would be, so the crop lands
        # where the exact path puts it (a one-pixel shift would dominate the deviation).
        full_width, full_height = image.info.get(FULL_SIZE_KEY, image.size)
        height, width = resize_output_size(full_height, full_width, cfg)
        limit = CROP_REGION_PIXELS if max_pixels is None else min(max_pixels, CROP_REGION_PIXELS)
        if width * height > limit:
            region = _crop_region(image, cfg, (width, height))
            if region is not None:
                return torch.from_numpy(_apply_value_table(region, cfg._lut))
            if max_pixels is not None and width * height > max_pixels:
                raise ImageTooLarge(
                    f"resizing it for the model gives {width}x{height} = {width * height:,} pixels, "
                    f"over the limit of {max_pixels:,} (use --max-pixels)"
                )
        image = image.resize((width, height), resample=cfg.resample, box=image.info.get(DRAFT_BOX_KEY))
    if cfg.do_center_crop:
        image = image.crop(center_crop_box(image.height, image.width, cfg.crop_size, cfg.crop_rounding))
    return torch.from_numpy(_apply_value_table(np.asarray(image), cfg._lut))


def _crop_region(image: Image.Image, cfg: PreprocessConfig, new_size: tuple[int, int]) -> np.ndarray | None:
    """The resize's center crop computed for the crop alone (uint8), or None where `resample` cannot."""
    if not cfg.do_center_crop or DRAFT_BOX_KEY in image.info or not resample.supported(image.size, new_size, cfg.resample):
        return None
    width, height = new_size
    left, top, right, bottom = center_crop_box(height, width, cfg.crop_size, cfg.crop_rounding)
    inside = (max(left, 0), max(top, 0), min(right, width), min(bottom, height))
    pixels = resample.resize_region(np.asarray(image), new_size, inside, cfg.resample)
    if inside == (left, top, right, bottom):
        return pixels
    canvas = np.zeros((bottom - top, right - left, 3), dtype=np.uint8)  # black where the crop pads
    canvas[inside[1] - top:inside[3] - top, inside[0] - left:inside[2] - left] = pixels
    return canvas


def _apply_value_table(pixels: np.ndarray, table: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 3] -> float32 [3, H, W] through the per-channel table, in one pass each."""
    height, width, _ = pixels.shape
    out = np.empty((3, height, width), dtype=np.float32)
    for channel in range(3):
        np.take(table[channel], pixels[..., channel], out=out[channel])
    return out


def resize_output_size(height: int, width: int, cfg: PreprocessConfig) -> tuple[int, int]:
    """(height, width) after resizing, as transformers computes it (long side truncated)."""
    if cfg.resize_mode == "exact":
        return cfg.size  # type: ignore[return-value]
    edge = int(cfg.shortest_edge)  # type: ignore[arg-type]
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(edge * long / short)
    return (new_long, edge) if width <= height else (edge, new_long)


def center_crop_box(
    height: int, width: int, crop_size: tuple[int, int], rounding: str = "floor"
) -> tuple[int, int, int, int]:
    """PIL crop box (left, top, right, bottom); negative where the crop pads with black."""
    crop_height, crop_width = crop_size
    top = _crop_offset(height - crop_height, rounding)
    left = _crop_offset(width - crop_width, rounding)
    return (left, top, left + crop_width, top + crop_height)


def _crop_offset(excess: int, rounding: str) -> int:
    """Where the crop starts along an axis `excess` pixels longer than it (negative: shorter)."""
    if rounding == "half_even" and excess > 0:
        return int(round(excess / 2.0))  # Python's round: half to even, as torchvision's center_crop
    return excess // 2


def _value_table(cfg: PreprocessConfig) -> np.ndarray:
    """[3, 256] float32 value of each 8-bit level per channel, in the reference's dtypes."""
    levels = np.broadcast_to(np.arange(256, dtype=np.uint8), (3, 256))
    values: np.ndarray = levels
    if cfg.do_rescale:
        values = (levels.astype(np.float64) * cfg.rescale_factor).astype(np.float32)
    if cfg.do_normalize:
        values = values.astype(np.float32)
        mean = np.array(cfg.image_mean, dtype=np.float32).reshape(3, 1)
        std = np.array(cfg.image_std, dtype=np.float32).reshape(3, 1)
        values = (values - mean) / std
    return np.ascontiguousarray(values, dtype=np.float32)


def _check_sizes(cfg: PreprocessConfig) -> None:
    sizes = [("crop_size", cfg.crop_size)] if cfg.do_center_crop else []
    if cfg.do_resize:
        sizes.append(("size", cfg.size if cfg.resize_mode == "exact" else (cfg.shortest_edge,)))
    for name, values in sizes:
        if not all(isinstance(v, int) and v > 0 for v in values or ()):
            raise ConfigError(f"{name} must be positive integers, got {_listed(values)}")


def _listed(values: Any) -> str:
    return ", ".join(map(str, values)) if isinstance(values, (list, tuple)) else str(values)


def _parse_resize_size(size: Any) -> dict[str, Any]:
    if isinstance(size, int):
        return {"resize_mode": "shortest_edge", "shortest_edge": size}
    if isinstance(size, (list, tuple)):
        return {"resize_mode": "exact", "shortest_edge": None, "size": _parse_height_width(size, "size")}
    if isinstance(size, dict):
        if size.get("shortest_edge") is not None:
            if size.get("longest_edge") is not None:
                raise ConfigError("size with both shortest_edge and longest_edge is not supported")
            return {"resize_mode": "shortest_edge", "shortest_edge": int(size["shortest_edge"])}
        if size.get("height") is not None and size.get("width") is not None:
            return {"resize_mode": "exact", "shortest_edge": None, "size": _parse_height_width(size, "size")}
    raise ConfigError(f"unsupported size {size!r}: use shortest_edge or height and width")


def _parse_height_width(value: Any, name: str) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    if isinstance(value, dict) and value.get("height") is not None and value.get("width") is not None:
        return (int(value["height"]), int(value["width"]))
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return (int(value[0]), int(value[1]))
    raise ConfigError(f"unsupported {name} {value!r}: use height and width")


def _parse_resample(value: Any) -> int:
    if isinstance(value, str):
        if value.lower() in RESAMPLE_FILTERS:
            return RESAMPLE_FILTERS[value.lower()]
        raise ConfigError(f"unknown resample filter {value!r}")
    return int(value)


def _parse_triple(value: Any, name: str) -> tuple[float, float, float]:
    if isinstance(value, (int, float)):
        return (float(value),) * 3
    if isinstance(value, (list, tuple)) and len(value) == 3:
        return (float(value[0]), float(value[1]), float(value[2]))
    raise ConfigError(f"{name} must be a number or a list of 3 numbers, got {value!r}")
