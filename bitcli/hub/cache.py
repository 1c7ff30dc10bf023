"""The hub cache (huggingface_hub's standard layout), read without a request; `HubSettings` reads
the environment at call time. `list_known_models` is `bit models`; `copy_to_local_dir` is
`bit download --local-dir`."""

from __future__ import annotations

import dataclasses
import filecmp
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import try_to_load_from_cache

from bitcli.checkpoint.files import (
    CONFIG,
    PICKLE,
    PREPROCESSOR_CONFIG,
    SAFETENSORS,
    SAFETENSORS_INDEX,
    WEIGHTS_FILES,
    is_timm_config,
    shard_names,
)
from bitcli.errors import CheckpointError, OfflineError, UsageError
from bitcli.hub import zoo
from bitcli.util import CONFIG_MAX_BYTES, human_bytes, os_error_reason, read_capped, write_atomic

DEFAULT_ENDPOINT = "https://huggingface.co"
DEFAULT_REVISION = "main"
_TRUE = {"1", "on", "yes", "true"}


@dataclass(frozen=True)
class ResolvedModel:
    """Where a model reference ended up on disk, and how it got there."""

    path: Path  # checkpoint directory (or the file itself for a local checkpoint file)
    ref: str  # the reference as the user typed it
    repo_id: str | None  # None for local paths
    revision: str | None  # the revision asked for (alias pin, "main" by default); None for local
    commit: str | None  # the commit the files come from; None for local
    weights_file: str  # file name inside `path` ("" when a local directory has no known weights)
    source: str  # "local", "cache" or "download"
    notice: str | None = None  # one line for stderr (e.g. the pickle fallback), never printed here


@dataclass(frozen=True)
class HubRef:
    """A parsed hub reference."""

    repo_id: str
    revision: str  # what is asked for: explicit, else the zoo pin, else "main"
    display: str  # how messages name the model


@dataclass(frozen=True)
class HubSettings:
    """The hub environment, read at call time."""

    endpoint: str
    cache_dir: Path
    offline: bool
    timeout: float = 60.0  # seconds each network operation may take (BIT_HUB_TIMEOUT)

    @classmethod
    def from_env(cls) -> HubSettings:
        """Read HF_ENDPOINT, HF_HUB_CACHE / HF_HOME, HF_HUB_OFFLINE and BIT_HUB_TIMEOUT as they are now."""
        from bitcli.hub.deadline import hub_timeout

        endpoint = (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")
        offline_value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
        offline = offline_value.strip().lower() in _TRUE
        return cls(endpoint=endpoint, cache_dir=hub_cache_dir(), offline=offline, timeout=hub_timeout())


def hub_cache_dir() -> Path:
    """The standard hub cache folder, as huggingface_hub computes it, from the current environment."""
    explicit = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    default_home = Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache") / "huggingface"
    return Path(os.environ.get("HF_HOME") or default_home).expanduser() / "hub"


def list_known_models() -> list[dict]:
    """Every zoo alias with its repository, revision, description, figures, download size, whether it
    is cached and its size on disk (`size`: human-readable, "-" when not cached)."""
    settings = HubSettings.from_env()
    rows = [bundled_row(alias) for alias in zoo.BUNDLED]
    for entry in zoo.KNOWN_MODELS:
        hub_ref = HubRef(entry.repo_id, entry.revision or DEFAULT_REVISION, entry.alias)
        cached = from_cache(entry.alias, hub_ref, settings)
        size = snapshot_size(cached) if cached is not None else 0
        rows.append(
            {
                **dataclasses.asdict(entry),
                "download_bytes": entry.download_bytes,
                "cached": cached is not None,
                "size_bytes": size,
                "size": human_bytes(size) if cached is not None else "-",
            }
        )
    return rows


def bundled_row(alias: str) -> dict:
    """`bit models`' row for a checkpoint that ships inside the package (always there, nothing to download)."""
    folder = zoo.bundled_path(alias)
    config = json.loads(read_capped(folder / CONFIG, CONFIG_MAX_BYTES))
    preprocess = json.loads(read_capped(folder / PREPROCESSOR_CONFIG, CONFIG_MAX_BYTES))
    size = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
    return {
        "alias": alias, "repo_id": None, "revision": None, "architecture": "bit (compact: widths 32-256)",
        "description": zoo.BUNDLED[alias][1], "input_size": int(preprocess["crop_size"]["height"]),
        "num_classes": len(config["id2label"]), "top1": None, "num_parameters": zoo.BUNDLED[alias][2],
        "download_bytes": 0, "cached": True, "bundled": True, "path": str(folder),
        "size_bytes": size, "size": human_bytes(size),
    }


def cached_file(hub_ref: HubRef, filename: str, settings: HubSettings) -> Path | None:
    """The cached file at the reference's revision, or None."""
    found = try_to_load_from_cache(hub_ref.repo_id, filename, cache_dir=str(settings.cache_dir), revision=hub_ref.revision)
    return Path(found) if isinstance(found, str) else None


def preprocessor_known(hub_ref: HubRef, settings: HubSettings) -> bool:
    """Whether the cache holds the revision's preprocessor config or records that it has none (a
    snapshot another tool left without it would silently get default preprocessing)."""
    found = try_to_load_from_cache(
        hub_ref.repo_id, PREPROCESSOR_CONFIG, cache_dir=str(settings.cache_dir), revision=hub_ref.revision
    )
    return found is not None


def from_cache(ref: str, hub_ref: HubRef, settings: HubSettings) -> ResolvedModel | None:
    """The cached snapshot if it holds config, preprocessing and weights, else None. No request."""
    config = cached_file(hub_ref, CONFIG, settings)
    try:
        timm = config is not None and is_timm_config(json.loads(read_capped(config, CONFIG_MAX_BYTES)))
    except (OSError, ValueError):
        return None
    if config is None or not (timm or preprocessor_known(hub_ref, settings)):
        return None
    for weights_name in WEIGHTS_FILES:
        weights = cached_file(hub_ref, weights_name, settings)
        if weights is None or weights.parent != config.parent:
            continue
        if weights_name == SAFETENSORS_INDEX and not all(
            (config.parent / shard).is_file() for shard in cache_shard_names(weights)
        ):
            continue
        return hub_snapshot(ref, hub_ref, config.parent, weights_name, "cache")
    return None


def from_cache_or_raise(
    ref: str, hub_ref: HubRef, settings: HubSettings, *, unreachable: str | None, misbehaved: str | None = None
) -> ResolvedModel:
    """The cached model, or an OfflineError saying why the hub was not asked (`unreachable`,
    `misbehaved`; both None: offline mode) and how to fix it."""
    cached = from_cache(ref, hub_ref, settings)
    if cached is not None:
        return cached
    if misbehaved is not None:
        why = f"the hub did not answer properly ({misbehaved})"
    elif unreachable is not None:
        why = f"the hub is unreachable ({unreachable})"
    else:
        why = "offline mode is on (HF_HUB_OFFLINE)"
    raise OfflineError(
        f"model '{hub_ref.display}' is not in the cache ({settings.cache_dir}) and {why}; "
        f"run `bit download {hub_ref.display}` where there is a network, or pass --model PATH"
    )


def snapshot_size(resolved: ResolvedModel) -> int:
    """Bytes on disk of the files bitcli uses from a cached snapshot (symlinks followed)."""
    names = [CONFIG, PREPROCESSOR_CONFIG, resolved.weights_file]
    if resolved.weights_file == SAFETENSORS_INDEX:
        names += cache_shard_names(resolved.path / SAFETENSORS_INDEX)
    return sum((resolved.path / name).stat().st_size for name in names if (resolved.path / name).is_file())


def cache_shard_names(index_path: Path | None) -> list[str]:
    """The shard names a cached `model.safetensors.index.json` lists (empty if unreadable)."""
    if index_path is None:
        return []
    try:
        return shard_names(index_path)
    except CheckpointError:
        return []


def hub_snapshot(ref: str, hub_ref: HubRef, folder: Path, weights_file: str, source: str) -> ResolvedModel:
    """A snapshot folder of the hub cache (named after its commit) as a ResolvedModel; a revision
    that only has the pickle carries a one-line notice."""
    notice = None
    if weights_file == PICKLE:
        notice = f"note: '{hub_ref.display}' has no {SAFETENSORS}; loading {PICKLE} with torch.load(weights_only=True)"
    return ResolvedModel(folder, ref, hub_ref.repo_id, hub_ref.revision, folder.name, weights_file, source, notice)


# -- `bit download MODEL --local-dir DIR`: the checkpoint's files copied into a plain folder, each
# atomically; a file DIR holds with the same name is kept when equal and refused when not.


def checkpoint_files(resolved: ResolvedModel) -> list[Path]:
    """The files of a resolved checkpoint: the file itself, or every regular file of its folder."""
    source = Path(resolved.path)
    if source.is_file():
        return [source]
    return sorted(p for p in source.iterdir() if p.is_file() and not p.name.startswith("."))


def copy_to_local_dir(resolved: ResolvedModel, directory: str | Path) -> Path:
    """Copy the checkpoint's files into `directory` (created if missing); returns the folder."""
    target = Path(directory)
    if target.exists() and not target.is_dir():
        raise UsageError(f"--local-dir {target}: exists and is not a folder")
    try:
        target.mkdir(parents=True, exist_ok=True)
        for source in checkpoint_files(resolved):
            destination = target / source.name
            if destination.is_symlink() or (destination.exists() and not destination.is_file()):
                raise UsageError(f"{destination}: exists and is not a regular file; choose another --local-dir")
            if destination.exists():
                if filecmp.cmp(source, destination, shallow=False):
                    continue
                raise UsageError(f"{destination}: exists with other content; choose an empty --local-dir or remove it")
            with open(source, "rb") as inp:
                write_atomic(destination, lambda out: shutil.copyfileobj(inp, out, 1 << 20))
    except OSError as exc:
        raise UsageError(f"--local-dir {target}: cannot write there ({os_error_reason(exc)})") from None
    return target
