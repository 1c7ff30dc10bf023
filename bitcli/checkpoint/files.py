"""The files of a checkpoint: their names, which format a directory holds, and the weight readers.

A leaf with no torch at import time (the readers and `bitcli.hub` import it). Weights come from
`model.safetensors` (preferred), sharded safetensors, or `pytorch_model.bin` through
`torch.load(weights_only=True)`; `header_only` reads a safetensors header alone (meta tensors)."""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bitcli.errors import CheckpointError
from bitcli.util import first_line, read_json_file

if TYPE_CHECKING:
    from torch import Tensor

    from bitcli.hub import ResolvedModel
    from bitcli.labels import Labels
    from bitcli.model.config import BitConfig
    from bitcli.preprocess import PreprocessConfig

CONFIG = "config.json"
PREPROCESSOR_CONFIG = "preprocessor_config.json"
SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"  # sharded safetensors: index + shards
PICKLE = "pytorch_model.bin"
WEIGHTS_FILES = (SAFETENSORS, SAFETENSORS_INDEX, PICKLE)  # in order of preference
LOCAL_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt", ".npz")


@dataclass
class RawCheckpoint:
    """What a checkpoint holds before the model is built: config, canonical state dict, preprocessing."""

    config: BitConfig
    state_dict: dict[str, Tensor]
    preprocess: PreprocessConfig
    source_format: str  # "transformers", "timm" or "original"
    weights_format: str  # e.g. "safetensors", "safetensors (2 shards)", "pytorch pickle (weights_only)"
    files: list[Path] = field(default_factory=list)


@dataclass
class CheckpointInfo:
    """A checkpoint as its files describe it; `resolved`: how a reference reached `path` (None for a path)."""

    config: BitConfig
    preprocess: PreprocessConfig
    path: Path
    source_format: str
    weights_format: str
    files: list[Path]
    num_parameters: int
    resolved: ResolvedModel | None = field(default=None, repr=False)

    @classmethod
    def of(cls, raw: RawCheckpoint, path: Path, num_parameters: int, resolved: ResolvedModel | None, **more: Any) -> Any:
        """`raw` described as this class (`more`: a subclass's own fields, e.g. LoadedModel's)."""
        return cls(
            config=raw.config, preprocess=raw.preprocess, path=path, source_format=raw.source_format,
            weights_format=raw.weights_format, files=raw.files, num_parameters=num_parameters, resolved=resolved, **more,
        )

    def labels(self, labels_file: str | Path | None = None) -> Labels:
        from bitcli.labels import resolve_labels

        return resolve_labels(self.config.num_labels, self.config.id2label, labels_file)


def is_timm_config(data: Any) -> bool:
    """A timm config.json names an `architecture` (transformers' names `architectures` and `model_type`)."""
    return isinstance(data, dict) and isinstance(data.get("architecture"), str) and "model_type" not in data


def shard_names(index_path: Path) -> list[str]:
    """The shard file names a `model.safetensors.index.json` lists, sorted; CheckpointError if unreadable."""
    data = read_json_file(index_path, error=CheckpointError)
    try:
        return sorted(set(data["weight_map"].values()))
    except (KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"{index_path}: invalid safetensors index ({first_line(exc)})") from None


def read_weights(directory: Path, *, header_only: bool = False) -> tuple[dict[str, Tensor], str, list[Path]]:
    """(state dict, format description, files read) from the best weights file: `model.safetensors`,
    else the index and its shards, else the pickle (`header_only`: safetensors as meta tensors)."""
    if (directory / SAFETENSORS).is_file():
        return read_safetensors(directory / SAFETENSORS, header_only), "safetensors", [directory / SAFETENSORS]
    index = directory / SAFETENSORS_INDEX
    if index.is_file():
        shards = [directory / name for name in shard_names(index)]
        state_dict: dict[str, Tensor] = {}
        for shard in shards:
            if not shard.is_file():
                raise CheckpointError(f"{shard}: shard listed in {index.name} is missing")
            state_dict.update(read_safetensors(shard, header_only))
        return state_dict, f"safetensors ({len(shards)} shards)", [index, *shards]
    if (directory / PICKLE).is_file():
        return read_pickle(directory / PICKLE), "pytorch pickle (weights_only)", [directory / PICKLE]
    raise CheckpointError(f"{directory}: no weights found (expected {SAFETENSORS} or {PICKLE})")


def read_safetensors(path: Path, header_only: bool = False) -> dict[str, Tensor]:
    """A safetensors file's tensors (`header_only`: as its header describes them, on the meta device)."""
    import torch
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    try:
        if not header_only:
            return load_file(path)
        with safe_open(path, "pt") as file:
            return {name: torch.empty(file.get_slice(name).get_shape(), device="meta") for name in file.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: truncated or corrupt safetensors file ({first_line(exc)})") from None


def read_pickle(path: Path) -> dict[str, Tensor]:
    import torch

    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"{path}: cannot read as a weights-only PyTorch file ({first_line(exc)}); "
            "bitcli never unpickles arbitrary objects"
        ) from None
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise CheckpointError(f"{path}: expected a dictionary of tensors")
    return state_dict
