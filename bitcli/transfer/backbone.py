"""The base model for transfer: raw weights, a trainable network, weights for export; the one
module of `bitcli.transfer` that reaches into the model and checkpoint internals.

Raw weights: `checkpoint.load_model` standardizes each convolution's weight once, which loses the
filter's scale that fine-tuning's step size depends on; the trainable model keeps the raw
weights and standardizes them in every forward pass (a parametrization), as the release does.
Export: transformers standardizes with eps 1e-8; a weight trained with eps e is exported as
w * sqrt(1e-8 / e), which standardizes to the same values."""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from bitcli.checkpoint import read_checkpoint  # raw (unstandardized) weights, canonical names
from bitcli.checkpoint.files import CheckpointInfo
from bitcli.errors import CheckpointError
from bitcli.model import BiT, BitConfig, StdConv2d, meta_model, standardize_conv_weight
from bitcli.preprocess import PreprocessConfig
from bitcli.util import first_line

TRANSFORMERS_WS_EPS = 1e-8  # what transformers' BiT standardizes with (fixed in its code)
HEAD_KEYS = ("classifier.1.weight", "classifier.1.bias")

__all__ = ["Base", "BitConfig", "PreprocessConfig", "load_base", "trainable_model", "export_state_dict"]


@dataclass
class Base(CheckpointInfo):
    """A base checkpoint as transfer needs it: what `CheckpointInfo` says of it (`resolved`: from
    the hub or a path), the reference as given and raw float32 backbone weights (no head)."""

    ref: str = ""
    backbone: dict[str, Tensor] = field(default_factory=dict, repr=False)  # canonical (transformers) names

    def identity(self) -> dict[str, Any]:
        """What identifies these weights: the reference and each file's name, size and mtime."""
        files = []
        for f in self.files:
            try:
                info = os.stat(f)
                files.append([Path(f).name, info.st_size, info.st_mtime_ns])
            except OSError:
                files.append([Path(f).name, None, None])
        resolved = self.resolved
        return {
            "model": (resolved and resolved.repo_id) or str(Path(self.path).resolve()),
            "commit": resolved and resolved.commit,
            "format": self.source_format,
            "files": files,
        }


def load_base(ref: str | Path, *, offline: bool | None = None) -> Base:
    """Resolve `ref` like every bitcli command (hub id, alias, folder, .npz) and read raw weights."""
    from bitcli.hub import resolve_model

    resolved = resolve_model(str(ref), offline=offline)
    try:
        raw = read_checkpoint(Path(resolved.path))
    except (OSError, RuntimeError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{ref}: cannot read the checkpoint ({first_line(exc)})") from exc
    backbone = {k: v.to(torch.float32) for k, v in raw.state_dict.items() if k not in HEAD_KEYS}
    size = sum(v.numel() for v in raw.state_dict.values())
    return Base.of(raw, Path(resolved.path), size, resolved, ref=str(ref), backbone=backbone)


def with_classes(config: BitConfig, classes: list[str]) -> BitConfig:
    """The base's architecture with a head for `classes`."""
    return replace(config, num_labels=len(classes), id2label=dict(enumerate(classes)))


class Standardize(nn.Module):
    """Weight standardization as a differentiable parametrization: (w - mean) / sqrt(var + eps)."""

    def __init__(self, eps: float):
        super().__init__()
        self.eps = eps

    def forward(self, weight: Tensor) -> Tensor:
        return standardize_conv_weight(weight, self.eps)


def trainable_model(base: Base, classes: list[str]) -> BiT:
    """The base network with raw weights, standardization in forward, and the rule's zero head."""
    config = with_classes(base.config, classes)
    model = meta_model(config)
    weights = {k: v.clone() for k, v in base.backbone.items()}
    weights[HEAD_KEYS[0]] = torch.zeros(len(classes), config.feature_dim)
    weights[HEAD_KEYS[1]] = torch.zeros(len(classes))
    try:
        model.load_state_dict(weights, strict=True, assign=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{base.ref}: weights do not fit {config.variant_name} ({first_line(exc)})") from None
    for module in model.modules():
        if isinstance(module, StdConv2d):
            parametrize.register_parametrization(module, "weight", Standardize(module.eps))
    return model.train().requires_grad_(True)


def raw_weights(model: BiT) -> dict[str, Tensor]:
    """The trainable model's raw weights under canonical names (parametrizations unwrapped)."""
    out = {}
    for key, value in model.state_dict().items():
        out[key.replace("parametrizations.weight.original", "weight")] = value.detach().clone()
    return out


def export_state_dict(raw: dict[str, Tensor], ws_eps: float) -> dict[str, Tensor]:
    """Raw weights trained with eps `ws_eps` -> weights transformers reads exactly (module docstring)."""
    out = {k: v.detach().to(torch.float32).contiguous() for k, v in raw.items()}
    if ws_eps == TRANSFORMERS_WS_EPS:
        return out
    scale = math.sqrt(TRANSFORMERS_WS_EPS / ws_eps)
    for key, value in out.items():
        if value.ndim == 4 and key.endswith(".weight"):  # a weight-standardized convolution
            out[key] = value * scale
    return out


def transformers_config(config: BitConfig, classes: list[str]) -> dict[str, Any]:
    """A transformers `config.json` for this architecture and the user's classes."""
    own = ("num_labels", "id2label", "ws_eps", "folded_width_factor")  # bitcli's, or set below
    architecture = {key: value for key, value in asdict(config).items() if key not in own}
    return {
        "architectures": ["BitForImageClassification"],
        "model_type": "bit",
        **architecture,
        "id2label": {str(i): name for i, name in enumerate(classes)},
        "label2id": {name: i for i, name in enumerate(classes)},
        "dtype": "float32",
    }
