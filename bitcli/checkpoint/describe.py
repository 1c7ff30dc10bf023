"""`bit inspect`: a checkpoint described from its config and safetensors header, without reading
its weights, and its report (`build_report`, keys documented in docs/usage.md).

The reader runs with meta tensors and the meta network is checked by the same `check_state_dict`
as loading; a pickle or an `.npz` file cannot be described so: the caller loads those. GFLOPs
are counted on the meta-device network: a multiply-accumulate is two FLOPs, norms and
activations left out; `gmacs` is what timm's tables call FLOPs."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from bitcli.checkpoint.files import SAFETENSORS, SAFETENSORS_INDEX, CheckpointInfo, RawCheckpoint
from bitcli.checkpoint.loading import check_state_dict, read_checkpoint
from bitcli.model.architecture import count_macs, meta_model

if TYPE_CHECKING:
    from bitcli.hub import ResolvedModel


def describe_checkpoint(path: Path, resolved: ResolvedModel | None = None) -> CheckpointInfo | None:
    """`path` described from config and safetensors header; None where impossible (a pickle, an `.npz`)."""
    if not path.is_dir() or not ((path / SAFETENSORS).is_file() or (path / SAFETENSORS_INDEX).is_file()):
        return None
    raw = read_checkpoint(path, header_only=True)
    check_state_dict(meta_model(raw.config), raw.state_dict, str(path))
    return _described(raw, path, resolved)


def describe_any(path: Path, resolved: ResolvedModel | None = None) -> CheckpointInfo:
    """`describe_checkpoint`, or a pickle's or `.npz`'s tensors read (nothing on a device): for a Ray driver."""
    described = describe_checkpoint(path, resolved)
    if described is not None:
        return described
    return _described(read_checkpoint(path), path, resolved)


def _described(raw: RawCheckpoint, path: Path, resolved: ResolvedModel | None) -> CheckpointInfo:
    return CheckpointInfo.of(raw, path, sum(p.numel() for p in meta_model(raw.config).parameters()), resolved)


# -- the report ------------------------------------------------------------------------------------

FIRST_LABELS = 5


def architecture(config: Any) -> dict[str, Any]:
    return {
        "name": config.variant_name,
        "layer_type": config.layer_type,
        "depths": list(config.depths),
        "stem_width": config.embedding_size,
        "widths": list(config.stage_widths),
        "width_factor": config.width_multiplier,
        "num_groups": config.num_groups,
        "padding": config.global_padding or "symmetric",
        "stem_dynamic_padding": config.embedding_dynamic_padding,
        "output_stride": config.output_stride,
        "activation": config.hidden_act,
        "ws_eps": config.ws_eps,
    }


def file_entries(files: list[Path]) -> list[dict[str, Any]]:
    entries = []
    for f in files:
        try:
            size = Path(f).stat().st_size  # follows the hub cache's symlinks to the blobs
        except OSError:
            size = None
        entries.append({"name": Path(f).name, "size": size})
    return entries


def build_report(loaded: Any, labels: Any = None) -> dict[str, Any]:
    """The inspect report for a `CheckpointInfo` or `LoadedModel` (with its `resolved` origin) and `Labels`."""
    resolved = loaded.resolved
    config = loaded.config
    pre = loaded.preprocess
    input_size = tuple(pre.input_size)
    macs = count_macs(config, input_size)
    pre_desc = {key: value for key, value in pre.describe().items() if key != "input_size"}
    return {
        "model": (resolved.ref if resolved is not None else None) or str(loaded.path),
        "repo_id": resolved.repo_id if resolved is not None else None,
        "revision": resolved.revision if resolved is not None else None,
        "commit": resolved.commit if resolved is not None else None,
        "path": str(Path(loaded.path).resolve()),
        "source": resolved.source if resolved is not None else "local",
        "checkpoint_format": loaded.source_format,
        "weights_format": loaded.weights_format,
        "files": file_entries(loaded.files),
        "architecture": architecture(config),
        "num_parameters": int(loaded.num_parameters),
        "feature_dim": int(config.feature_dim),
        "num_labels": int(config.num_labels),
        "input_size": list(input_size),
        "gmacs": _significant(macs / 1e9),
        "gflops": _significant(2 * macs / 1e9),
        "preprocessing": pre_desc,
        "labels": {
            "source": labels.source if labels is not None else None,
            "first": list(labels.names[:FIRST_LABELS]) if labels is not None else [],
        },
    }


def _significant(value: float, digits: int = 6) -> float:
    return float(f"{value:.{digits}g}")
