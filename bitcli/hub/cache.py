"""The hub cache (huggingface_hub's standard layout), read without a request; `HubSettings` reads
the environment at call time. `list_known_models` is `bit models`."""

from __future__ import annotations

import dataclasses
import json
import os
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
from bitcli.errors import CheckpointError, OfflineError
from bitcli.hub import zoo
from bitcli.util import CONFIG_MAX_BYTES, human_bytes, read_capped

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


def _lookup(hub_ref: HubRef, filename: str, settings: HubSettings) -> object:
    """The cache's answer for a file at the reference's revision: its path, a "known not to exist" marker, or None."""
    return try_to_load_from_cache(hub_ref.repo_id, filename, cache_dir=str(settings.cache_dir), revision=hub_ref.revision)


def cached_file(hub_ref: HubRef, filename: str, settings: HubSettings) -> Path | None:
    """The cached file at the reference's revision, or None."""
    found = _lookup(hub_ref, filename, settings)
    return Path(found) if isinstance(found, str) else None


def preprocessor_state_known(hub_ref: HubRef, config: Path, settings: HubSettings) -> bool:
    """Whether the cache holds the preprocessor config or knows the repository has none (a snapshot
    another tool left without it would silently get default preprocessing)."""
    try:
        if is_timm_config(json.loads(read_capped(config, CONFIG_MAX_BYTES))):
            return True
    except (OSError, ValueError):
        return False
    return preprocessor_known(hub_ref, settings)


def preprocessor_known(hub_ref: HubRef, settings: HubSettings) -> bool:
    """Whether the cache holds the revision's preprocessor config or records that it has none."""
    return _lookup(hub_ref, PREPROCESSOR_CONFIG, settings) is not None


def from_cache(ref: str, hub_ref: HubRef, settings: HubSettings) -> ResolvedModel | None:
    """The cached snapshot if it holds config, preprocessing and weights, else None. No request."""
    config = cached_file(hub_ref, CONFIG, settings)
    if config is None or not preprocessor_state_known(hub_ref, config, settings):
        return None
    for weights_name in WEIGHTS_FILES:
        weights = cached_file(hub_ref, weights_name, settings)
        if weights is None or weights.parent != config.parent:
            continue
        if weights_name == SAFETENSORS_INDEX and not all(
            (config.parent / shard).is_file() for shard in cache_shard_names(weights)
        ):
            continue
        return ResolvedModel(
            path=config.parent,
            ref=ref,
            repo_id=hub_ref.repo_id,
            revision=hub_ref.revision,
            commit=config.parent.name,
            weights_file=weights_name,
            source="cache",
            notice=pickle_notice(hub_ref) if weights_name == PICKLE else None,
        )
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


def pickle_notice(hub_ref: HubRef) -> str:
    """The one-line notice for a revision that only has the pickle."""
    return (
        f"note: '{hub_ref.display}' has no {SAFETENSORS}; "
        f"loading {PICKLE} with torch.load(weights_only=True)"
    )
