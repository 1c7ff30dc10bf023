"""Checkpoint -> a ready BiT model: dispatch to the format's reader, build, load, prepare.

`build_model` loads the weights strictly (the first offending keys named) and standardizes the
convolution weights once, in float32. Weights must be floating point and finite (also after
conversion and standardization): anything else is refused at load (ModelError, exit 3)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from bitcli.checkpoint.files import CONFIG, PREPROCESSOR_CONFIG, CheckpointInfo, RawCheckpoint, is_timm_config, read_weights
from bitcli.checkpoint.timm import read_timm_checkpoint
from bitcli.engine.plan import check_precision
from bitcli.engine.runtime import EngineRecord, prepare
from bitcli.errors import CheckpointError, ConfigError
from bitcli.model.architecture import BiT, meta_model, standardize_conv_weight
from bitcli.model.config import BitConfig
from bitcli.util import name_some, read_json_file

if TYPE_CHECKING:
    from bitcli.hub import ResolvedModel


@dataclass(kw_only=True)
class LoadedModel(CheckpointInfo):
    """A model ready for inference: the `BiT` nn.Module and what the engine chose for it."""

    model: BiT
    engine: EngineRecord

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def precision(self) -> str:
        return self.engine.precision

    @property
    def feature_dim(self) -> int:
        return int(self.config.feature_dim)

    @property
    def name(self) -> str:
        """The hub repository, or the local path."""
        if self.resolved is not None and self.resolved.repo_id:
            return self.resolved.repo_id
        return str(self.path)

    @property
    def notices(self) -> list[str]:
        """Every one-line warning for stderr: resolution's (a pickle-only revision), then a missing
        preprocessor_config.json."""
        resolved = self.resolved.notice if self.resolved is not None else None
        return [n for n in (resolved, self.preprocess.missing_notice(self.name)) if n]

    def fingerprint(self) -> dict[str, Any]:
        """What identifies these weights, preprocessing and kernels (stored by `bit embed`)."""
        return {
            **identity(self),
            "device": self.engine.device,
            "precision": self.engine.precision,
            # "onednn" and "torch" differ in the last bits (see bitcli.engine).
            "convolution": self.engine.convolution,
        }


def identity(info: CheckpointInfo) -> dict[str, Any]:
    """What identifies a checkpoint: a hub model's commit, or a local one's files' content (`content_digest`)."""
    resolved = info.resolved
    hub_model = resolved is not None and bool(resolved.repo_id) and bool(resolved.commit)
    return {
        "model": resolved.repo_id if hub_model else str(Path(info.path).resolve()),
        "commit": resolved.commit if resolved is not None else None,
        "weights": [Path(f).name for f in info.files],
        "weights_sha256": None if hub_model else content_digest(info.files),
        "preprocessing": info.preprocess.describe(),
    }


_DIGESTS: dict[tuple[Any, ...], str] = {}  # (real path, device, inode, size, mtime_ns) -> sha256


def content_digest(files: list[Path]) -> str:
    """sha256 over the checkpoint files' names and contents. Each file's digest is cached (in this
    process and `weights-sha256.json`) under its real path, device, inode, size, mtime and change
    time, so a file is hashed once until it is rewritten. Only regular files are read."""
    import hashlib

    total = hashlib.sha256()
    for name in files:
        total.update(f"{Path(name).name}\0{_file_digest(Path(name))}\n".encode())
    return total.hexdigest()


def _file_digest(path: Path) -> str:
    from bitcli.util import open_regular, sha256_file

    with open_regular(path) as fh:
        info = os.fstat(fh.fileno())
        key = (os.path.realpath(path), info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)
        cached = _DIGESTS.get(key) or _disk_digests().get(_key_text(key))
        if cached is None:
            cached = sha256_file(fh, info.st_size)
            _remember_digest(key, cached)
        _DIGESTS[key] = cached
    return cached


def _key_text(key: tuple[Any, ...]) -> str:
    return "\0".join(map(str, key))


def _digest_file() -> Path:
    from bitcli.util import cache_dir

    return cache_dir() / "weights-sha256.json"


def _disk_digests() -> dict[str, str]:
    from bitcli.util import read_json_file

    try:
        data = read_json_file(_digest_file(), max_bytes=8 << 20)
    except Exception:  # a missing or damaged cache is only slower
        return {}
    return data if isinstance(data, dict) else {}


def _remember_digest(key: tuple[Any, ...], digest: str) -> None:
    """Best effort: an unwritable cache folder only means hashing again next time."""
    import json

    from bitcli.util import write_atomic

    path = _digest_file()
    try:
        known = {k: v for k, v in _disk_digests().items() if os.path.exists(k.split("\0", 1)[0])}
        known[_key_text(key)] = digest
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps(known, indent=0, sort_keys=True).encode())
    except OSError:
        pass


Model = LoadedModel  # the name `bitcli.load`'s result had before it carried its origin


def load_model(
    path: str | Path,
    *,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    compile: bool = False,
    optimize: bool = True,
    resolved: ResolvedModel | None = None,
) -> LoadedModel:
    """A checkpoint directory or `.npz` file, ready for inference (`optimize=False`: the plain model)."""
    check_precision(precision)
    raw = read_checkpoint(Path(path))
    weights_file = next((f for f in raw.files if f.name not in (CONFIG, PREPROCESSOR_CONFIG)), path)
    model = build_model(raw.config, raw.state_dict, origin=str(weights_file))
    device = torch.device(device)
    model = model.to(device=device)
    if optimize:
        engine = prepare(model, precision=precision, compile=compile)
    elif precision != "fp32" or compile:
        raise ValueError("precision and compile need optimize=True")
    else:
        engine = EngineRecord(device=device.type)
    num_parameters = sum(p.numel() for p in model.parameters())
    return LoadedModel.of(raw, Path(path), num_parameters, resolved, model=model, engine=engine)


def read_checkpoint(path: Path, *, header_only: bool = False) -> RawCheckpoint:
    """Config, weights and preprocessing from any layout, canonical key names (`header_only`: meta tensors)."""
    if path.is_file() and path.suffix == ".npz":
        from bitcli.checkpoint.npz import read_npz_checkpoint

        return read_npz_checkpoint(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint directory")
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a checkpoint directory or .npz file")
    if not (path / CONFIG).is_file():
        raise ConfigError(f"{path}: no {CONFIG}; a BiT checkpoint directory needs one")
    config_data = read_json_file(path / CONFIG)
    if is_timm_config(config_data):
        return read_timm_checkpoint(path, config_data, header_only=header_only)
    return _read_transformers(path, config_data, header_only=header_only)


def _read_transformers(directory: Path, config_data: dict[str, Any], *, header_only: bool) -> RawCheckpoint:
    """A transformers checkpoint (`google/bit-50`): canonical names already; a `BitModel` save (no
    head) gets the `bit.` prefix and no head."""
    from bitcli.preprocess import PreprocessConfig

    config = BitConfig.from_dict(config_data)
    state_dict, weights_format, weight_files = read_weights(directory, header_only=header_only)
    if not any(key.startswith("bit.") for key in state_dict):
        state_dict = {f"bit.{key}": value for key, value in state_dict.items()}
        config.num_labels = 0
    preprocess_path = directory / PREPROCESSOR_CONFIG
    files = [directory / CONFIG] + ([preprocess_path] if preprocess_path.is_file() else []) + weight_files
    return RawCheckpoint(config, state_dict, PreprocessConfig.load(directory), "transformers", weights_format, files)


def build_model(config: BitConfig, state_dict: dict[str, Tensor], *, origin: str = "checkpoint") -> BiT:
    """Build the model without random initialisation and load standardized weights into it."""
    model = meta_model(config)
    check_state_dict(model, state_dict, origin)
    for key, value in state_dict.items():
        if value.dtype not in FLOAT_DTYPES:
            raise CheckpointError(
                f"{origin}: {key} is {str(value.dtype).removeprefix('torch.')}; bitcli loads floating-point weights "
                "only (float16, bfloat16, float32, float64), as converting it would change its values"
            )
    weights = {key: value.to(torch.float32) for key, value in state_dict.items()}
    _check_finite(weights, origin, "holds NaN or infinite values (as float32)")
    standardized = {key: standardize_conv_weight(weights[key], eps) for key, eps in model.standardized_convs().items()}
    _check_finite(standardized, origin, "gives NaN or infinite values once standardized")
    weights.update(standardized)
    model.load_state_dict(weights, strict=True, assign=True)
    return model.eval().requires_grad_(False)


FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _check_finite(weights: dict[str, Tensor], origin: str, what: str) -> None:
    bad = [key for key, value in weights.items() if not _all_finite(value)]
    if bad:
        raise CheckpointError(f"{origin}: {name_some(bad)} {what}; the checkpoint is damaged, get it again")


def _all_finite(value: Tensor) -> bool:
    """Whether every value is finite: a finite sum settles it; only an overflowing sum needs the element-wise check."""
    return bool(torch.isfinite(value.sum())) or bool(torch.isfinite(value).all())


def check_state_dict(model: BiT, state_dict: dict[str, Tensor], origin: str) -> None:
    """CheckpointError naming the first few missing, unexpected and mis-shaped tensors."""
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
        shapes = name_some(f"{key}: expected {list(expected[key])}, found {list(found[key])}" for key in mismatched)
        problems.append(f"{len(mismatched)} mis-shaped ({shapes})")
    if problems:
        raise CheckpointError(
            f"{origin}: weights do not fit {model.config.variant_name}: " + "; ".join(problems)
        )
