"""Checkpoint directory -> a ready BiT model, its preprocessing and its metadata.

Weights are read from `model.safetensors` (preferred), sharded safetensors
(`model.safetensors.index.json`), or `pytorch_model.bin` through `torch.load(weights_only=True)`
(never a full unpickle). Loading is strict: a missing, unexpected or mis-shaped tensor stops with
one message naming the first few offending keys. Weight standardization is applied here, once,
in float32, so the model's forward pass runs plain convolutions.
"""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from bitcli import timm_format
from bitcli.config import BitConfig, read_json
from bitcli.errors import CheckpointError, ConfigError
from bitcli.model import BiT, standardize_conv_weight

SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
PICKLE = "pytorch_model.bin"
CONFIG = "config.json"
PREPROCESSOR_CONFIG = "preprocessor_config.json"
_SHOW_AT_MOST = 5


@dataclass
class RawCheckpoint:
    """What a checkpoint holds before the model is built: config, canonical state dict, preprocessing."""

    config: BitConfig
    state_dict: dict[str, Tensor]
    preprocess: Any  # bitcli.preprocess.PreprocessConfig
    source_format: str  # "transformers", "timm" or "original"
    weights_format: str  # e.g. "safetensors", "safetensors (2 shards)", "pytorch pickle (weights_only)"
    files: list[Path] = field(default_factory=list)


@dataclass
class LoadedModel:
    """A model ready for inference plus everything `bit inspect` reports about it."""

    model: BiT
    config: BitConfig
    preprocess: Any  # bitcli.preprocess.PreprocessConfig
    path: Path
    source_format: str
    weights_format: str
    files: list[Path]
    device: torch.device
    precision: str = "fp32"

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def load_model(
    path: str | Path,
    *,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    compile: bool = False,
    optimize: bool = True,
) -> LoadedModel:
    """Load a checkpoint directory (transformers or timm layout) or an original-release `.npz` file.

    The model comes ready for inference (`engine.optimize_for_inference`): precision "fp32"
    keeps outputs within 1e-4 of the reference; "bf16" and `compile` are opt-in speed-ups.
    `optimize=False` gives the plain model (every step on the whole batch), for comparisons.
    """
    from bitcli.engine import optimize_for_inference

    raw = read_checkpoint(Path(path))
    model = build_model(raw.config, raw.state_dict, origin=str(path))
    device = torch.device(device)
    model = model.to(device=device)
    if optimize:
        model = optimize_for_inference(model, precision=precision, compile=compile)
    elif precision != "fp32" or compile:
        raise ValueError("precision and compile need optimize=True")
    return LoadedModel(
        model=model,
        config=raw.config,
        preprocess=raw.preprocess,
        path=Path(path),
        source_format=raw.source_format,
        weights_format=raw.weights_format,
        files=raw.files,
        device=device,
        precision=precision,
    )


def read_checkpoint(path: Path) -> RawCheckpoint:
    """Read config, weights and preprocessing from any supported layout, with canonical key names."""
    if path.is_file() and path.suffix == ".npz":
        from bitcli import npz_format

        return npz_format.read_npz_checkpoint(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint directory")
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a checkpoint directory or .npz file")
    config_data = read_config_json(path)
    if timm_format.is_timm_config(config_data):
        return timm_format.read_timm_checkpoint(path, config_data)
    return read_transformers_checkpoint(path, config_data)


def read_config_json(directory: Path) -> dict[str, Any]:
    config_path = directory / CONFIG
    if not config_path.is_file():
        raise ConfigError(f"{directory}: no {CONFIG}; a BiT checkpoint directory needs one")
    return read_json(config_path)


def read_transformers_checkpoint(directory: Path, config_data: dict[str, Any]) -> RawCheckpoint:
    from bitcli.preprocess import PreprocessConfig

    config = BitConfig.from_dict(config_data)
    state_dict, weights_format, weight_files = read_weights(directory)
    if not any(key.startswith("bit.") for key in state_dict):
        # A `BitModel` (no head) save: keys lack the `bit.` prefix of the classification model.
        state_dict = {f"bit.{key}": value for key, value in state_dict.items()}
        config.num_labels = 0
    preprocess_path = directory / PREPROCESSOR_CONFIG
    files = [directory / CONFIG] + ([preprocess_path] if preprocess_path.is_file() else []) + weight_files
    return RawCheckpoint(
        config=config,
        state_dict=state_dict,
        preprocess=PreprocessConfig.load(directory),
        source_format="transformers",
        weights_format=weights_format,
        files=files,
    )


def read_weights(directory: Path) -> tuple[dict[str, Tensor], str, list[Path]]:
    """(state dict, format description, files read) from the best weights file in `directory`."""
    if (directory / SAFETENSORS).is_file():
        return read_safetensors(directory / SAFETENSORS), "safetensors", [directory / SAFETENSORS]
    if (directory / SAFETENSORS_INDEX).is_file():
        return read_sharded_safetensors(directory / SAFETENSORS_INDEX)
    if (directory / PICKLE).is_file():
        return read_pickle(directory / PICKLE), "pytorch pickle (weights_only)", [directory / PICKLE]
    raise CheckpointError(f"{directory}: no weights found (expected {SAFETENSORS} or {PICKLE})")


def read_safetensors(path: Path) -> dict[str, Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: truncated or corrupt safetensors file ({first_line(exc)})") from None


def read_sharded_safetensors(index_path: Path) -> tuple[dict[str, Tensor], str, list[Path]]:
    try:
        weight_map = json.loads(index_path.read_text(encoding="utf-8"))["weight_map"]
        shard_names = sorted(set(weight_map.values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"{index_path}: invalid safetensors index ({first_line(exc)})") from None
    shards = [index_path.parent / name for name in shard_names]
    state_dict: dict[str, Tensor] = {}
    for shard in shards:
        if not shard.is_file():
            raise CheckpointError(f"{shard}: shard listed in {index_path.name} is missing")
        state_dict.update(read_safetensors(shard))
    return state_dict, f"safetensors ({len(shards)} shards)", [index_path, *shards]


def read_pickle(path: Path) -> dict[str, Tensor]:
    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"{path}: cannot read as a weights-only PyTorch file ({first_line(exc)}); "
            "bitcli never unpickles arbitrary objects"
        ) from None
    if not isinstance(state_dict, dict) or not all(isinstance(v, Tensor) for v in state_dict.values()):
        raise CheckpointError(f"{path}: expected a dictionary of tensors")
    return state_dict


def build_model(config: BitConfig, state_dict: dict[str, Tensor], *, origin: str = "checkpoint") -> BiT:
    """Build the model without random initialisation and load standardized weights into it."""
    with torch.device("meta"):
        model = BiT(config)
    check_state_dict(model, state_dict, origin)
    weights = {key: value.to(torch.float32) for key, value in state_dict.items()}
    for key, eps in model.standardized_convs().items():
        weights[key] = standardize_conv_weight(weights[key], eps)
    model.load_state_dict(weights, strict=True, assign=True)
    return model.eval().requires_grad_(False)


def check_state_dict(model: BiT, state_dict: dict[str, Tensor], origin: str) -> None:
    """Raise CheckpointError naming missing, unexpected and mis-shaped tensors."""
    expected = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    found = {key: tuple(value.shape) for key, value in state_dict.items()}
    problems = []
    missing = [key for key in expected if key not in found]
    unexpected = [key for key in found if key not in expected]
    mismatched = [key for key in expected if key in found and expected[key] != found[key]]
    if missing:
        problems.append(f"{len(missing)} missing ({name_some(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected ({name_some(unexpected)})")
    if mismatched:
        shapes = ", ".join(
            f"{key}: expected {list(expected[key])}, found {list(found[key])}" for key in mismatched[:_SHOW_AT_MOST]
        )
        more = f" and {len(mismatched) - _SHOW_AT_MOST} more" if len(mismatched) > _SHOW_AT_MOST else ""
        problems.append(f"{len(mismatched)} mis-shaped ({shapes}{more})")
    if problems:
        raise CheckpointError(
            f"{origin}: weights do not fit {model.config.variant_name}: " + "; ".join(problems)
        )


def name_some(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOW_AT_MOST])
    return shown + (f" and {len(keys) - _SHOW_AT_MOST} more" if len(keys) > _SHOW_AT_MOST else "")


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
