"""The BiT architecture as a dataclass, read from a transformers `config.json` (`model_type: "bit"`).

Fields and defaults are transformers' `BitConfig` (the default is google/bit-50). Unknown keys
are ignored; a known key of the wrong type, or a ws_eps that is not positive and finite, is a
ConfigError naming it. `id2label` may be a plain list of names."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from bitcli.errors import ConfigError

LAYER_TYPES = ("preactivation", "bottleneck")
PADDINGS = (None, "SAME")
ACTIVATIONS = ("relu", "gelu", "silu", "swish")
OUTPUT_STRIDES = (8, 16, 32)


@dataclass
class BitConfig:
    num_channels: int = 3
    embedding_size: int = 64  # stem width; not multiplied by width_factor
    hidden_sizes: list[int] = field(default_factory=lambda: [256, 512, 1024, 2048])
    depths: list[int] = field(default_factory=lambda: [3, 4, 6, 3])
    layer_type: str = "preactivation"  # ResNet-v2 (BiT); "bottleneck" is the v1.5 block of ViT-hybrid
    hidden_act: str = "relu"
    global_padding: str | None = None  # None: symmetric PyTorch padding; "SAME": TF-style dynamic
    num_groups: int = 32  # GroupNorm groups
    embedding_dynamic_padding: bool = False  # TF-style "SAME" padding before the stem max-pool
    output_stride: int = 32  # 16 or 8 trade stride for dilation in the last stages
    width_factor: int = 1  # multiplies hidden_sizes (R50x3 -> 3)
    num_labels: int = 1000  # 0: no classifier head
    id2label: dict[int, str] = field(default_factory=dict)
    ws_eps: float = 1e-8  # weight-standardization eps: 1e-8 (timm, transformers), 1e-10 (original .npz)
    # The width factor already folded into hidden_sizes and embedding_size. The timm and .npz
    # readers fold it (transformers sizes its final norm from hidden_sizes[-1] alone, so a
    # width_factor > 1 would not build there) and record it here; transformers configs leave it 1.
    folded_width_factor: int = 1

    def __post_init__(self) -> None:
        self.hidden_sizes = [int(h) for h in self.hidden_sizes]
        self.depths = [int(d) for d in self.depths]
        if self.global_padding is not None:
            self.global_padding = str(self.global_padding).upper()
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError for anything the model cannot build."""
        if self.layer_type not in LAYER_TYPES:
            raise ConfigError(
                f"unsupported layer_type {self.layer_type!r} (bitcli supports {', '.join(LAYER_TYPES)})"
            )
        if self.global_padding == "VALID":
            # transformers accepts it, but its unpadded 3x3 convolutions shrink the residual
            # branch below the shortcut, so no input can run (transformers fails the same way).
            raise ConfigError("global_padding VALID cannot run (residual shapes differ); use null or SAME")
        if self.global_padding not in PADDINGS:
            raise ConfigError(f"unsupported global_padding {self.global_padding!r} (use null or SAME)")
        if self.hidden_act not in ACTIVATIONS:
            raise ConfigError(f"unsupported hidden_act {self.hidden_act!r} (bitcli supports {', '.join(ACTIVATIONS)})")
        if self.output_stride not in OUTPUT_STRIDES:
            raise ConfigError(f"unsupported output_stride {self.output_stride} (use 8, 16 or 32)")
        if not self.depths or len(self.depths) != len(self.hidden_sizes):
            raise ConfigError(
                f"depths {self.depths} and hidden_sizes {self.hidden_sizes} must be non-empty and of equal length"
            )
        if self.num_groups < 1 or self.embedding_size < 1 or min(self.depths) < 1:
            raise ConfigError("num_groups, embedding_size and every depth must be positive")
        if not (_is_number(self.ws_eps) and math.isfinite(self.ws_eps) and self.ws_eps > 0):
            raise ConfigError(f"invalid BiT config: ws_eps must be a positive finite number, got {self.ws_eps!r}")

    @property
    def stage_widths(self) -> list[int]:
        """Output channels of each stage, as built (hidden size x width factor, rounded to 8)."""
        return [make_divisible(h * self.width_factor) for h in self.hidden_sizes]

    @property
    def feature_dim(self) -> int:
        """Length of the pooled feature vector (the embedding)."""
        return self.stage_widths[-1]

    @property
    def variant_name(self) -> str:
        """A readable name such as 'BiT R50x1, pre-activation'."""
        depth = 2 + 3 * sum(self.depths)  # stem conv + 3 convs per block (+ the head counts as 1 in ResNet naming)
        kind = "pre-activation" if self.layer_type == "preactivation" else "bottleneck (v1.5)"
        return f"BiT R{depth}x{self.width_multiplier}, {kind}"

    @property
    def width_multiplier(self) -> int:
        """The "x3" of R50x3: the width folded into hidden_sizes times the one applied to them."""
        return self.folded_width_factor * self.width_factor

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BitConfig:
        """Build from a transformers config dict, ignoring keys that do not describe the architecture."""
        model_type = data.get("model_type", "bit")
        if model_type != "bit":
            raise ConfigError(f"config.json describes a {model_type!r} model, not BiT (model_type 'bit')")
        known = {f for f in cls.__dataclass_fields__ if f not in ("id2label", "num_labels")}
        kwargs = {k: _checked(k, v) for k, v in data.items() if k in known}
        id2label = _id2label(data.get("id2label"))
        # As transformers: id2label decides (an empty one means no head); without it, 2 labels.
        num_labels = len(id2label) if "id2label" in data else _checked("num_labels", data.get("num_labels", 2))
        try:
            return cls(**kwargs, num_labels=num_labels, id2label=id2label)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"invalid BiT config: {exc}") from None


_INTEGERS = {"num_channels", "embedding_size", "num_groups", "output_stride", "width_factor", "folded_width_factor", "num_labels"}
_INTEGER_LISTS = {"hidden_sizes", "depths"}
_STRINGS = {"layer_type", "hidden_act"}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_integer(value: Any) -> bool:
    return _is_number(value) and float(value).is_integer()


def _checked(key: str, value: Any) -> Any:
    """A config.json value of the type its field needs, else a ConfigError naming the field."""
    if key in _INTEGERS:
        ok, need = _is_integer(value), "an integer"
    elif key in _INTEGER_LISTS:
        ok, need = isinstance(value, list) and all(_is_integer(v) for v in value), "a list of integers"
    elif key in _STRINGS:
        ok, need = isinstance(value, str), "a string"
    elif key == "global_padding":
        ok, need = value is None or isinstance(value, str), "null or a string"
    elif key == "embedding_dynamic_padding":
        ok, need = isinstance(value, bool), "true or false"
    elif key == "ws_eps":
        ok, need = _is_number(value), "a number"
    else:
        return value
    if not ok:
        raise ConfigError(f"invalid BiT config: {key} must be {need}, got {_show(value)}")
    if key in _INTEGERS:
        return int(value)
    return [int(v) for v in value] if key in _INTEGER_LISTS else value


def _id2label(value: Any) -> dict[int, str]:
    """Class names: {index: name} (keys as JSON strings or ints), or a list of names in class order."""
    if value is None:
        return {}
    if isinstance(value, list):
        return {i: str(name) for i, name in enumerate(value)}
    if not isinstance(value, dict):
        raise ConfigError(f"invalid BiT config: id2label must be an object {{index: name}} or a list of names, got {_show(value)}")
    try:
        return {int(k): str(v) for k, v in value.items()}
    except (TypeError, ValueError):
        bad = next(k for k in value if not str(k).lstrip("-").isdigit())
        raise ConfigError(f"invalid BiT config: id2label keys must be class indices (0, 1, ...), got {_show(bad)}") from None


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# The released BiT family: stem and stage widths of an x1 model, times the width factor (R50x3: 3).
BASE_STEM = 64
BASE_WIDTHS = (256, 512, 1024, 2048)


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round channels to a multiple of `divisor` the way timm and transformers do (never below 90%)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded

