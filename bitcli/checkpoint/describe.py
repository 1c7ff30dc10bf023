"""A checkpoint described from its config and safetensors header, without reading its weights
(`bit inspect`): the reader runs with meta tensors and the meta network is checked by the same
`check_state_dict` as loading. A pickle or an `.npz` file cannot be: the caller loads those."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from bitcli.checkpoint.files import SAFETENSORS, SAFETENSORS_INDEX, CheckpointInfo, RawCheckpoint
from bitcli.checkpoint.loading import check_state_dict, read_checkpoint
from bitcli.model.architecture import meta_model

if TYPE_CHECKING:
    from bitcli.hub import ResolvedModel


def describe_checkpoint(path: Path, resolved: ResolvedModel | None = None) -> CheckpointInfo | None:
    """The checkpoint at `path` described from its config and safetensors header; None where that is
    impossible (a pickle, an `.npz`, not a checkpoint folder). Checkpoint/ConfigError on contradictions."""
    if not path.is_dir() or not ((path / SAFETENSORS).is_file() or (path / SAFETENSORS_INDEX).is_file()):
        return None
    raw = read_checkpoint(path, header_only=True)
    check_state_dict(meta_model(raw.config), raw.state_dict, str(path))
    return _described(raw, path, resolved)


def describe_any(path: Path, resolved: ResolvedModel | None = None) -> CheckpointInfo:
    """`describe_checkpoint`, or for a pickle or an `.npz` file, its tensors read (still no network
    built, nothing on a device): what a Ray driver records of a model it never loads."""
    described = describe_checkpoint(path, resolved)
    if described is not None:
        return described
    return _described(read_checkpoint(path), path, resolved)


def _described(raw: RawCheckpoint, path: Path, resolved: ResolvedModel | None) -> CheckpointInfo:
    return CheckpointInfo(
        config=raw.config,
        preprocess=raw.preprocess,
        path=path,
        source_format=raw.source_format,
        weights_format=raw.weights_format,
        files=raw.files,
        num_parameters=sum(p.numel() for p in meta_model(raw.config).parameters()),
        resolved=resolved,
    )
