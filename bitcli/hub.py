"""Model references -> a local checkpoint directory, through huggingface_hub and its standard cache.

A reference is a local path (used as is), a known alias (`bit-50`, see `zoo.py`), a hub id
`org/name`, or `org/name@revision` (branch, tag, commit or `refs/pr/N`). Hub files land in the
standard cache (`HF_HUB_CACHE`, else `HF_HOME/hub`), shared with every other Hugging Face tool.

huggingface_hub reads its environment variables once, at import. bitcli reads them at every call
and passes the endpoint, cache folder and offline decision explicitly, so a changed environment
(tests, long-lived processes) is honoured.

Resolution of a hub reference:
1. A commit-pinned reference whose files are all cached is served from the cache: no request.
2. Offline (`HF_HUB_OFFLINE=1` or `offline=True`): the cache only, no request at all.
3. Otherwise one `model_info` request gives the commit and the file list; the needed files are
   downloaded at that commit. If the hub cannot be reached (connection error, timeout, 5xx), the
   cache is used as if offline.
Library code never prints: the pickle notice travels in `ResolvedModel.notice`.
"""

from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

try:  # huggingface_hub 2.x speaks httpx2; 1.x spoke httpx
    import httpx2
except ImportError:  # pragma: no cover
    import httpx as httpx2  # type: ignore[no-redef]
from huggingface_hub import HfApi, hf_hub_download, try_to_load_from_cache
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import tqdm as hf_tqdm

from bitcli import zoo
from bitcli.errors import CheckpointError, ModelError, ModelNotFoundError, OfflineError

CONFIG_FILE = "config.json"
PREPROCESSOR_FILE = "preprocessor_config.json"
SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX_FILE = "model.safetensors.index.json"  # sharded safetensors: index + shards
PICKLE_FILE = "pytorch_model.bin"
WEIGHTS_FILES = (SAFETENSORS_FILE, SAFETENSORS_INDEX_FILE, PICKLE_FILE)  # in order of preference
LOCAL_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt", ".npz")

DEFAULT_ENDPOINT = "https://huggingface.co"
DEFAULT_REVISION = "main"
REQUEST_TIMEOUT_S = 10.0

_COMMIT_RE = re.compile(r"[0-9a-f]{40}")
_REPO_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*/[A-Za-z0-9_.\-]+")
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

    @classmethod
    def from_env(cls) -> HubSettings:
        """Read HF_ENDPOINT, HF_HUB_CACHE / HF_HOME and HF_HUB_OFFLINE as they are now."""
        endpoint = (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")
        offline_value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
        return cls(endpoint=endpoint, cache_dir=hub_cache_dir(), offline=offline_value.strip().lower() in _TRUE)


def hub_cache_dir() -> Path:
    """The standard hub cache folder, as huggingface_hub computes it, from the current environment."""
    explicit = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    default_home = Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache") / "huggingface"
    return Path(os.environ.get("HF_HOME") or default_home).expanduser() / "hub"


# --------------------------------------------------------------------------- public API


def resolve_model(ref: str, *, offline: bool | None = None, progress: bool = False) -> ResolvedModel:
    """Turn a model reference into a local checkpoint directory, downloading it at most once.

    `offline=None` follows `HF_HUB_OFFLINE`; `progress=True` shows huggingface_hub's download bars
    on stderr when stderr is a terminal. Raises ModelNotFoundError, OfflineError, CheckpointError or
    ModelError (all exit code 3) with a one-line message.
    """
    local = _local_model(ref)
    if local is not None:
        return local
    hub_ref = parse_hub_ref(ref)
    settings = HubSettings.from_env()
    if offline is None:
        offline = settings.offline
    if offline:
        return _from_cache_or_raise(ref, hub_ref, settings, unreachable=None)
    if _COMMIT_RE.fullmatch(hub_ref.revision):
        cached = _from_cache(ref, hub_ref, settings)
        if cached is not None:
            return cached  # an immutable commit already on disk: no request needed
    return _resolve_online(ref, hub_ref, settings, progress=progress)


def download_model(ref: str, *, progress: bool = False) -> ResolvedModel:
    """Fetch a model into the cache ahead of time (for `bit download`); a cached model is not fetched again."""
    return resolve_model(ref, progress=progress)


def list_known_models() -> list[dict]:
    """Every zoo alias with its repository, revision, size, whether it is cached and its size on disk.

    Keys: alias, repo_id, revision, architecture, description, input_size, num_classes, top1,
    num_parameters, download_bytes (about 4 bytes per parameter: the float32 safetensors file),
    cached (bool), size_bytes (on disk; 0 when not cached) and size (human-readable, "-" when
    not cached).
    """
    settings = HubSettings.from_env()
    rows = []
    for entry in zoo.KNOWN_MODELS:
        hub_ref = HubRef(entry.repo_id, entry.revision or DEFAULT_REVISION, entry.alias)
        cached = _from_cache(entry.alias, hub_ref, settings)
        size = _snapshot_size(cached) if cached is not None else 0
        rows.append(
            {
                "alias": entry.alias,
                "repo_id": entry.repo_id,
                "revision": entry.revision,
                "architecture": entry.architecture,
                "description": entry.description,
                "input_size": entry.input_size,
                "num_classes": entry.num_classes,
                "top1": entry.top1,
                "num_parameters": entry.num_parameters,
                "download_bytes": entry.download_bytes,
                "cached": cached is not None,
                "size_bytes": size,
                "size": human_size(size) if cached is not None else "-",
            }
        )
    return rows


def human_size(num_bytes: int) -> str:
    """Bytes as a short human-readable size with decimal units ("97.8 MB")."""
    if num_bytes < 1000:
        return f"{num_bytes} B"
    size = num_bytes / 1000
    for unit in ("kB", "MB"):
        if size < 1000:
            return f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} GB"


def parse_hub_ref(ref: str) -> HubRef:
    """Parse `alias[@rev]` or `org/name[@rev]`; the zoo pin applies only when no revision is given."""
    name, sep, revision = ref.strip().partition("@")
    if sep and not revision:
        raise ModelNotFoundError(f"model reference '{ref}' has an empty revision after '@'; write org/name@REVISION")
    entry = zoo.find_alias(name)
    if entry is not None:
        repo_id = entry.repo_id
    elif _REPO_ID_RE.fullmatch(name):
        repo_id = name
        entry = zoo.find_repo(name)
    else:
        raise ModelNotFoundError(
            f"unknown model '{ref}': not a local path, a known alias (see `bit models`) or a hub id org/name[@revision]"
        )
    if not revision:
        revision = (entry.revision if entry is not None else None) or DEFAULT_REVISION
    display = f"{name}@{revision}" if sep else name
    return HubRef(repo_id=repo_id, revision=revision, display=display)


# --------------------------------------------------------------------------- local paths


def _looks_like_path(ref: str) -> bool:
    """True when `ref` can only mean a filesystem path (never a hub id or alias)."""
    name, sep, _ = ref.partition("@")
    if sep and (_REPO_ID_RE.fullmatch(name) or zoo.find_alias(name)):
        return False  # org/name@refs/pr/1 holds slashes but is a hub reference
    return (
        ref.startswith(("/", ".", "~"))
        or "\\" in ref
        or ref.count("/") > 1
        or ref.endswith("/")
        or ref.lower().endswith(LOCAL_WEIGHT_SUFFIXES)
    )


def _local_model(ref: str) -> ResolvedModel | None:
    """A ResolvedModel for an existing local path, None for a hub reference; a missing path is an error.

    A directory without `config.json` that holds exactly one `.npz` (an original-release
    download) resolves to that file; with several, which one is meant is the user's call.
    """
    path = Path(ref).expanduser()
    if not path.exists():
        if _looks_like_path(ref):
            raise ModelNotFoundError(f"model path '{ref}' does not exist; pass an existing checkpoint directory or file")
        return None
    if path.is_dir() and not (path / CONFIG_FILE).is_file():
        npz = _only_npz(path, ref)
        if npz is not None:
            return ResolvedModel(npz, ref, None, None, None, npz.name, "local")
    weights = path.name if path.is_file() else _local_weights_name(path)
    return ResolvedModel(path, ref, None, None, None, weights, "local")


def _only_npz(directory: Path, ref: str) -> Path | None:
    """The one `.npz` file in a directory, None if there is none; CheckpointError if there are several."""
    found = sorted(p for p in directory.glob("*.npz") if p.is_file())
    if len(found) > 1:
        names = ", ".join(p.name for p in found[:5]) + (f" and {len(found) - 5} more" if len(found) > 5 else "")
        raise CheckpointError(
            f"model directory '{ref}' has no {CONFIG_FILE} and {len(found)} .npz checkpoints ({names}); "
            f"pass one of them, e.g. --model {directory / found[0].name}"
        )
    return found[0] if found else None


def _local_weights_name(directory: Path) -> str:
    """The weights file bitcli would pick in a local checkpoint directory ("" if none is recognised)."""
    for name in WEIGHTS_FILES:
        if (directory / name).is_file():
            return name
    return ""


# --------------------------------------------------------------------------- cache


def _cached_file(hub_ref: HubRef, filename: str, settings: HubSettings) -> Path | None:
    """The cached file at the reference's revision (a commit, or a branch/tag via `refs/`), or None."""
    found = try_to_load_from_cache(
        hub_ref.repo_id, filename, cache_dir=str(settings.cache_dir), revision=hub_ref.revision
    )
    return Path(found) if isinstance(found, str) else None


def _preprocessor_state_known(hub_ref: HubRef, config: Path, settings: HubSettings) -> bool:
    """Whether the cache holds the preprocessor config, or knows the repository has none.

    Another tool (transformers' `from_pretrained`) may leave a snapshot with only config and
    weights; using it would silently fall back to default preprocessing and give wrong scores.
    timm checkpoints keep their preprocessing inside config.json.
    """
    from bitcli.timm_format import is_timm_config

    try:
        if is_timm_config(json.loads(config.read_text(encoding="utf-8"))):
            return True
    except (OSError, ValueError):
        return False
    found = try_to_load_from_cache(
        hub_ref.repo_id, PREPROCESSOR_FILE, cache_dir=str(settings.cache_dir), revision=hub_ref.revision
    )
    return found is not None  # a path, or huggingface_hub's "known not to exist" marker


def _from_cache(ref: str, hub_ref: HubRef, settings: HubSettings) -> ResolvedModel | None:
    """The cached snapshot if it holds config, preprocessing and weights, else None. No request."""
    config = _cached_file(hub_ref, CONFIG_FILE, settings)
    if config is None or not _preprocessor_state_known(hub_ref, config, settings):
        return None
    for weights_name in WEIGHTS_FILES:
        weights = _cached_file(hub_ref, weights_name, settings)
        if weights is None or weights.parent != config.parent:
            continue
        if weights_name == SAFETENSORS_INDEX_FILE and not all(
            (config.parent / shard).is_file() for shard in _shard_names(weights)
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
            notice=_pickle_notice(hub_ref) if weights_name == PICKLE_FILE else None,
        )
    return None


def _from_cache_or_raise(
    ref: str, hub_ref: HubRef, settings: HubSettings, *, unreachable: str | None
) -> ResolvedModel:
    """The cached model, or an OfflineError saying why the hub was not asked and how to fix it.

    `unreachable` is why the hub could not be reached; None means offline mode.
    """
    cached = _from_cache(ref, hub_ref, settings)
    if cached is not None:
        return cached
    why = "offline mode is on (HF_HUB_OFFLINE)" if unreachable is None else f"the hub is unreachable ({unreachable})"
    raise OfflineError(
        f"model '{hub_ref.display}' is not in the cache ({settings.cache_dir}) and {why}; "
        f"run `bit download {hub_ref.display}` where there is a network, or pass --model PATH"
    )


def _snapshot_size(resolved: ResolvedModel) -> int:
    """Bytes on disk of the files bitcli uses from a cached snapshot (symlinks followed)."""
    names = [CONFIG_FILE, PREPROCESSOR_FILE, resolved.weights_file]
    if resolved.weights_file == SAFETENSORS_INDEX_FILE:
        names += _shard_names(resolved.path / SAFETENSORS_INDEX_FILE)
    return sum((resolved.path / name).stat().st_size for name in names if (resolved.path / name).is_file())


def _shard_names(index_path: Path | None) -> list[str]:
    """The shard file names a `model.safetensors.index.json` lists (empty if unreadable)."""
    try:
        weight_map = json.loads(Path(index_path).read_text())["weight_map"]  # type: ignore[arg-type]
        return sorted(set(weight_map.values()))
    except (OSError, TypeError, ValueError, KeyError, AttributeError):
        return []


def _storage_dir(settings: HubSettings, repo_id: str) -> Path:
    return settings.cache_dir / ("models--" + repo_id.replace("/", "--"))


def _write_ref(settings: HubSettings, repo_id: str, revision: str, commit: str) -> None:
    """Record `revision -> commit` in the cache's refs/ folder (the documented cache layout), atomically.

    A read-only shared cache that already holds every file is fine: the ref is then left as it is.
    """
    if revision == commit:
        return
    ref_path = _storage_dir(settings, repo_id) / "refs" / revision
    try:
        if ref_path.is_file() and ref_path.read_text().strip() == commit:
            return
        ref_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = ref_path.with_name(f"{ref_path.name}.{os.getpid()}.tmp")
        tmp.write_text(commit)
        os.replace(tmp, ref_path)
    except OSError:
        pass


def _mark_absent(settings: HubSettings, repo_id: str, commit: str, filename: str) -> None:
    """Record in the cache (huggingface_hub's `.no_exist/` layout) that `filename` is not in the repo."""
    marker = _storage_dir(settings, repo_id) / ".no_exist" / commit / filename
    try:
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
    except OSError:
        pass


# --------------------------------------------------------------------------- network


def _resolve_online(ref: str, hub_ref: HubRef, settings: HubSettings, *, progress: bool) -> ResolvedModel:
    """Ask the hub for the revision's commit and files, then download what is missing."""
    try:
        info = HfApi(endpoint=settings.endpoint).model_info(
            hub_ref.repo_id, revision=hub_ref.revision, timeout=REQUEST_TIMEOUT_S
        )
    except (httpx2.TransportError, OfflineModeIsEnabled) as error:
        return _from_cache_or_raise(ref, hub_ref, settings, unreachable=_short(error))
    except HfHubHTTPError as error:
        if _status(error) >= 500:
            return _from_cache_or_raise(ref, hub_ref, settings, unreachable=f"HTTP {_status(error)}")
        raise _hub_error(hub_ref, error) from None
    files = {sibling.rfilename for sibling in info.siblings or []}
    weights_name = next((name for name in WEIGHTS_FILES if name in files), None)
    if CONFIG_FILE not in files or weights_name is None:
        raise CheckpointError(
            f"'{hub_ref.display}' (commit {info.sha}) has no BiT weights: it needs {CONFIG_FILE} and "
            f"{SAFETENSORS_FILE}, {SAFETENSORS_INDEX_FILE} or {PICKLE_FILE}; pick another model or revision"
        )
    wanted = [CONFIG_FILE] + ([PREPROCESSOR_FILE] if PREPROCESSOR_FILE in files else []) + [weights_name]
    commit_ref = HubRef(hub_ref.repo_id, info.sha, hub_ref.display)
    missing = [name for name in wanted if _cached_file(commit_ref, name, settings) is None]
    for name in missing:
        _download_file(hub_ref, info.sha, name, settings, progress=progress)
    if weights_name == SAFETENSORS_INDEX_FILE:
        index = _cached_file(commit_ref, SAFETENSORS_INDEX_FILE, settings)
        shards = [name for name in _shard_names(index) if _cached_file(commit_ref, name, settings) is None]
        for name in shards:
            _download_file(hub_ref, info.sha, name, settings, progress=progress)
        missing += shards
    if PREPROCESSOR_FILE not in files:
        _mark_absent(settings, hub_ref.repo_id, info.sha, PREPROCESSOR_FILE)
    _write_ref(settings, hub_ref.repo_id, hub_ref.revision, info.sha)
    return ResolvedModel(
        path=_cached_file(commit_ref, CONFIG_FILE, settings).parent,  # type: ignore[union-attr]
        ref=ref,
        repo_id=hub_ref.repo_id,
        revision=hub_ref.revision,
        commit=info.sha,
        weights_file=weights_name,
        source="download" if missing else "cache",
        notice=_pickle_notice(hub_ref) if weights_name == PICKLE_FILE else None,
    )


def _download_file(hub_ref: HubRef, commit: str, filename: str, settings: HubSettings, *, progress: bool) -> Path:
    """Download one file at `commit` into the cache (atomic: a partial file never takes the final name)."""
    try:
        return Path(
            hf_hub_download(
                hub_ref.repo_id,
                filename,
                revision=commit,
                cache_dir=str(settings.cache_dir),
                endpoint=settings.endpoint,
                etag_timeout=REQUEST_TIMEOUT_S,
                tqdm_class=_progress_class(progress),
            )
        )
    except (RepositoryNotFoundError, RevisionNotFoundError) as error:
        raise _hub_error(hub_ref, error) from None
    except (httpx2.HTTPError, HfHubHTTPError, OSError) as error:
        raise ModelError(
            f"downloading {filename} of '{hub_ref.display}' failed ({_short(error)}); "
            "run the command again to restart the download"
        ) from None


class _SilentBar(hf_tqdm):
    """huggingface_hub's progress bar, always disabled."""

    def __init__(self, *args, **kwargs):
        kwargs["disable"] = True
        super().__init__(*args, **kwargs)


def _progress_class(progress: bool) -> type[hf_tqdm]:
    """huggingface_hub's own bar (stderr, TTY only) when asked for, else a disabled one."""
    return hf_tqdm if progress and sys.stderr.isatty() else _SilentBar


# --------------------------------------------------------------------------- messages


def _hub_error(hub_ref: HubRef, error: HfHubHTTPError) -> ModelError:
    """One-line bitcli error for an error answer from the hub."""
    name = hub_ref.display
    if isinstance(error, GatedRepoError):
        return ModelError(
            f"model '{name}' is gated: accept its terms on the hub, then set HF_TOKEN to a token with access"
        )
    if isinstance(error, RepositoryNotFoundError):
        repo = "" if name.partition("@")[0] == hub_ref.repo_id else f" (repository {hub_ref.repo_id})"
        return ModelNotFoundError(
            f"model '{name}' not found on the hub{repo}; check the name, "
            "or set HF_TOKEN if the repository is private"
        )
    if isinstance(error, RevisionNotFoundError):
        return ModelNotFoundError(
            f"revision '{hub_ref.revision}' not found in '{hub_ref.repo_id}'; use a branch, tag or commit that exists"
        )
    if _status(error) in (401, 403):
        return ModelError(
            f"the hub refused access to '{name}' (HTTP {_status(error)}); set HF_TOKEN to a token with access"
        )
    return ModelError(f"the hub answered HTTP {_status(error)} for '{name}'; try again later")


def _pickle_notice(hub_ref: HubRef) -> str:
    """The one-line notice for a revision that only has the pickle."""
    return (
        f"note: '{hub_ref.display}' has no {SAFETENSORS_FILE}; "
        f"loading {PICKLE_FILE} with torch.load(weights_only=True)"
    )


def _status(error: HfHubHTTPError) -> int:
    """The HTTP status of a hub error (0 if there was no response)."""
    response = getattr(error, "response", None)
    return int(getattr(response, "status_code", 0) or 0)


def _short(error: BaseException) -> str:
    """An exception as a short single line: its class and first message line."""
    text = str(error).strip().splitlines()
    first = text[0] if text else ""
    return f"{type(error).__name__}: {first}"[:200] if first else type(error).__name__
