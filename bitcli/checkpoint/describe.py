"""A checkpoint described from its files, without loading its weights (and without torch).

`bit inspect` needs the architecture, the parameter count, preprocessing and labels, none of
which needs the tensors' values: the architecture comes from `config.json` (transformers or
timm), the tensors' names and shapes from the safetensors header (`files.read_tensor_table`),
checked against the shapes the config implies (`model.shapes.parameter_shapes`) with the same
missing / unexpected / mis-shaped message that loading gives, so inspect refuses what loading
would. A pickle (`pytorch_model.bin`) has no header to read and an `.npz` file's architecture is
read from its arrays: `describe_checkpoint` returns None for those, and the caller loads them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bitcli.checkpoint.files import (
    CONFIG,
    PREPROCESSOR_CONFIG,
    SAFETENSORS,
    SAFETENSORS_INDEX,
    is_timm_config,
    read_config_json,
    read_tensor_table,
    safetensors_files,
)
from bitcli.errors import CheckpointError
from bitcli.util import name_some

if TYPE_CHECKING:
    from bitcli.hub import ResolvedModel
    from bitcli.labels import Labels
    from bitcli.model.config import BitConfig
    from bitcli.preprocess import PreprocessConfig

Shapes = dict[str, tuple[int, ...]]


@dataclass
class CheckpointInfo:
    """A checkpoint as its files describe it (what `bit inspect` reports); a `LoadedModel` is one
    with the module and the engine's record added. `resolved`: how a model reference reached
    `path` (None for a path given directly)."""

    config: BitConfig
    preprocess: PreprocessConfig
    path: Path
    source_format: str
    weights_format: str
    files: list[Path]
    num_parameters: int
    resolved: ResolvedModel | None = field(default=None, repr=False)

    def labels(self, labels_file: str | Path | None = None) -> Labels:
        from bitcli.labels import resolve_labels

        return resolve_labels(self.config.num_labels, self.config.id2label, labels_file)


def describe_checkpoint(path: Path, resolved: ResolvedModel | None = None) -> CheckpointInfo | None:
    """The checkpoint at `path` described from its config and safetensors header.

    None when that is not possible (a pickle or an `.npz` file, or a path that is not a checkpoint
    directory: loading then gives its own, usual error). CheckpointError / ConfigError when the
    files contradict each other (a header that does not fit the config, a truncated file).
    """
    if not path.is_dir() or not ((path / SAFETENSORS).is_file() or (path / SAFETENSORS_INDEX).is_file()):
        return None
    data = read_config_json(path)
    weights_format, weight_files, shards = safetensors_files(path)
    shapes: Shapes = {}
    for shard in shards:
        shapes.update(read_tensor_table(shard).shapes)
    if is_timm_config(data):
        config, preprocess, found, files = _timm(path, data, shapes)
        source = "timm"
    else:
        config, preprocess, found, files = _transformers(path, data, shapes)
        source = "transformers"
    from bitcli.model.shapes import count_parameters, parameter_shapes

    expected = parameter_shapes(config)
    problems = shape_problems(expected, found)
    if problems:
        raise CheckpointError(f"{path}: weights do not fit {config.variant_name}: " + "; ".join(problems))
    return CheckpointInfo(
        config=config,
        preprocess=preprocess,
        path=path,
        source_format=source,
        weights_format=weights_format,
        files=[*files, *weight_files],
        num_parameters=count_parameters(expected),
        resolved=resolved,
    )


def _transformers(directory: Path, data: dict[str, Any], shapes: Shapes) -> tuple[Any, Any, Shapes, list[Path]]:
    from bitcli.model.config import BitConfig
    from bitcli.preprocess import PreprocessConfig

    config = BitConfig.from_dict(data)
    if not any(key.startswith("bit.") for key in shapes):  # a `BitModel` save: no head, no prefix
        shapes = {f"bit.{key}": shape for key, shape in shapes.items()}
        config.num_labels = 0
    preprocessor = directory / PREPROCESSOR_CONFIG
    files = [directory / CONFIG] + ([preprocessor] if preprocessor.is_file() else [])
    return config, PreprocessConfig.load(directory), shapes, files


def _timm(directory: Path, data: dict[str, Any], shapes: Shapes) -> tuple[Any, Any, Shapes, list[Path]]:
    from bitcli.checkpoint.timm import bit_config_from_timm, preprocess_from_timm, pretrained_cfg_of

    config = bit_config_from_timm(data)
    if config.num_labels == 0:
        shapes = {key: shape for key, shape in shapes.items() if not key.startswith("head.")}
    return config, preprocess_from_timm(pretrained_cfg_of(data)), rename_timm(shapes), [directory / CONFIG]


def rename_timm(shapes: Shapes) -> Shapes:
    """timm names -> canonical names; the 1x1-convolution head [K, C, 1, 1] counts as linear [K, C]."""
    from bitcli.checkpoint.timm import timm_key_to_canonical

    renamed: Shapes = {}
    for key, shape in shapes.items():
        name = timm_key_to_canonical(key)
        if name == "classifier.1.weight" and len(shape) == 4 and shape[2:] == (1, 1):
            shape = shape[:2]
        renamed[name] = shape
    return renamed


def shape_problems(expected: Shapes, found: Shapes) -> list[str]:
    """Missing, unexpected and mis-shaped tensors, each kind as one phrase naming the first few."""
    problems = []
    missing = [key for key in expected if key not in found]
    unexpected = [key for key in found if key not in expected]
    mismatched = [key for key in expected if key in found and tuple(expected[key]) != tuple(found[key])]
    if missing:
        problems.append(f"{len(missing)} missing ({name_some(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected ({name_some(unexpected)})")
    if mismatched:
        shapes = name_some(f"{key}: expected {list(expected[key])}, found {list(found[key])}" for key in mismatched)
        problems.append(f"{len(mismatched)} mis-shaped ({shapes})")
    return problems

