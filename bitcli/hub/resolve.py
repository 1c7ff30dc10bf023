"""Model references -> a local checkpoint directory, through huggingface_hub and its standard cache.

A reference is a local path, an alias (`zoo.py`), `org/name` or `org/name@revision`. The
environment is read at every call and passed explicitly. A hub reference: a commit-pinned one
whose files are cached asks nothing; offline uses the cache only; otherwise one `model_info`
gives the commit and files, downloaded at it. A hub that cannot be reached or misbehaves falls
back to the cache as if offline. Every network operation ends within `deadline.py`'s bound.
Nothing is printed: the pickle notice travels in `ResolvedModel.notice`."""

from __future__ import annotations

import dataclasses
import re
import sys
from pathlib import Path

try:  # huggingface_hub 2.x speaks httpx2; 1.x spoke httpx
    import httpx2
except ImportError:  # pragma: no cover
    import httpx as httpx2  # type: ignore[no-redef]
from huggingface_hub import HfApi, hf_hub_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import tqdm as hf_tqdm

from bitcli.checkpoint.files import (
    CONFIG,
    LOCAL_WEIGHT_SUFFIXES,
    PICKLE,
    PREPROCESSOR_CONFIG,
    SAFETENSORS,
    SAFETENSORS_INDEX,
    WEIGHTS_FILES,
)
from bitcli.errors import CheckpointError, ModelError, ModelNotFoundError
from bitcli.hub import zoo
from bitcli.hub.deadline import Deadline, HubTimeout, bounded
from bitcli.hub.cache import (
    DEFAULT_REVISION,
    HubRef,
    HubSettings,
    ResolvedModel,
    cache_shard_names,
    cached_file,
    from_cache,
    from_cache_or_raise,
    hub_snapshot,
    preprocessor_known,
)
from bitcli.util import first_line, name_some

REQUEST_TIMEOUT_S = 10.0

_COMMIT_RE = re.compile(r"[0-9a-f]{40}")
_REPO_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*/[A-Za-z0-9_.\-]+")


# --------------------------------------------------------------------------- public API


def resolve_model(ref: str, *, offline: bool | None = None, progress: bool = False) -> ResolvedModel:
    """A model reference as a local checkpoint directory, downloaded at most once (`offline=None`:
    HF_HUB_OFFLINE). ModelError subclasses (exit 3) with a one-line message."""
    local = _local_model(ref)
    if local is not None:
        return local
    hub_ref = parse_hub_ref(ref)
    settings = HubSettings.from_env()
    if offline is None:
        offline = settings.offline
    if offline:
        return from_cache_or_raise(ref, hub_ref, settings, unreachable=None)
    if _COMMIT_RE.fullmatch(hub_ref.revision):
        cached = from_cache(ref, hub_ref, settings)
        if cached is not None:
            return cached  # an immutable commit already on disk: no request needed
    return _resolve_online(ref, hub_ref, settings, progress=progress)


def check_reference(ref: str) -> None:
    """The errors `resolve_model` would raise for the form of `ref` alone, without any request or loading."""
    if _local_model(ref) is None:
        parse_hub_ref(ref)


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
    """A ResolvedModel for an existing local path (a folder with a single `.npz` and no config.json:
    that file), None for a hub reference; a missing path is an error."""
    if zoo.bundled_path(ref) is not None:  # a checkpoint that ships inside bitcli
        return ResolvedModel(zoo.bundled_path(ref), ref, None, None, None, SAFETENSORS, "bundled")
    path = Path(ref).expanduser()
    if not path.exists():
        if _looks_like_path(ref):
            raise ModelNotFoundError(f"model path '{ref}' does not exist; pass an existing checkpoint directory or file")
        return None
    if path.is_dir() and not (path / CONFIG).is_file():
        npz = _only_npz(path, ref)
        if npz is not None:
            return ResolvedModel(npz, ref, None, None, None, npz.name, "local")
    weights = path.name if path.is_file() else next((n for n in WEIGHTS_FILES if (path / n).is_file()), "")
    return ResolvedModel(path, ref, None, None, None, weights, "local")


def _only_npz(directory: Path, ref: str) -> Path | None:
    """The one `.npz` file in a directory, None if there is none; CheckpointError if there are several."""
    found = sorted(p for p in directory.glob("*.npz") if p.is_file())
    if len(found) > 1:
        names = name_some(p.name for p in found)
        raise CheckpointError(
            f"model directory '{ref}' has no {CONFIG} and {len(found)} .npz checkpoints ({names}); "
            f"pass one of them, e.g. --model {directory / found[0].name}"
        )
    return found[0] if found else None


# --------------------------------------------------------------------------- network


def _resolve_online(ref: str, hub_ref: HubRef, settings: HubSettings, *, progress: bool) -> ResolvedModel:
    """Ask the hub for the revision's commit and files, then download what is missing."""
    try:
        api = HfApi(endpoint=settings.endpoint)
        info = bounded(
            lambda: api.model_info(hub_ref.repo_id, revision=hub_ref.revision, timeout=REQUEST_TIMEOUT_S),
            Deadline(settings.timeout),
        )
        commit, files = _commit_and_files(info)
    except HfHubHTTPError as error:
        if _status(error) >= 500:
            return from_cache_or_raise(ref, hub_ref, settings, unreachable=f"HTTP {_status(error)}")
        raise _hub_error(hub_ref, error) from None
    except (httpx2.TransportError, OfflineModeIsEnabled) as error:
        return from_cache_or_raise(ref, hub_ref, settings, unreachable=_short(error))
    except (HubTimeout, httpx2.HTTPError, ValueError) as error:  # ValueError: an answer that is not JSON
        return from_cache_or_raise(ref, hub_ref, settings, unreachable=None, misbehaved=_misbehaviour(error))
    try:
        return _fetch(ref, hub_ref, settings, commit, files, progress=progress)
    except ModelError as error:
        cached = from_cache(ref, hub_ref, settings)  # an older commit of the revision, if any
        if cached is None or isinstance(error, (ModelNotFoundError, CheckpointError)):
            raise
        notice = f"using the cached copy of '{hub_ref.display}': {error}"
        return dataclasses.replace(cached, notice=notice.removesuffix("; run the command again to restart the download"))


def _commit_and_files(info: object) -> tuple[str, set[str]]:
    """The commit and file names of a `model_info` answer; ValueError when they are not there."""
    commit = getattr(info, "sha", None)
    siblings = getattr(info, "siblings", None)
    if not isinstance(commit, str) or not _COMMIT_RE.fullmatch(commit) or not isinstance(siblings, list):
        raise ValueError("its answer has no commit and file list")
    return commit, {sibling.rfilename for sibling in siblings}


def _misbehaviour(error: BaseException) -> str:
    if isinstance(error, HubTimeout):
        return str(error)
    if isinstance(error, httpx2.TooManyRedirects):
        return "it redirects endlessly"
    if isinstance(error, ValueError) and "commit" in str(error):
        return str(error)
    if isinstance(error, ValueError):
        return "its answer is not JSON"
    return _short(error)


def _fetch(ref: str, hub_ref: HubRef, settings: HubSettings, commit: str, files: set[str], *, progress: bool) -> ResolvedModel:
    """Download the files of `commit` the cache lacks; the resolved snapshot."""
    weights_name = next((name for name in WEIGHTS_FILES if name in files), None)
    if CONFIG not in files or weights_name is None:
        raise CheckpointError(
            f"'{hub_ref.display}' (commit {commit}) has no BiT weights: it needs {CONFIG} and "
            f"{SAFETENSORS}, {SAFETENSORS_INDEX} or {PICKLE}; pick another model or revision"
        )
    wanted = [CONFIG] + ([PREPROCESSOR_CONFIG] if PREPROCESSOR_CONFIG in files else []) + [weights_name]
    commit_ref = HubRef(hub_ref.repo_id, commit, hub_ref.display)
    missing = [name for name in wanted if cached_file(commit_ref, name, settings) is None]
    for name in missing:
        _download_file(hub_ref, commit, name, settings, progress=progress)
    if weights_name == SAFETENSORS_INDEX:
        index = cached_file(commit_ref, SAFETENSORS_INDEX, settings)
        shards = [name for name in cache_shard_names(index) if cached_file(commit_ref, name, settings) is None]
        for name in shards:
            _download_file(hub_ref, commit, name, settings, progress=progress)
        missing += shards
    _record_revision(hub_ref, commit, settings, has_preprocessor=PREPROCESSOR_CONFIG in files)
    folder = cached_file(commit_ref, CONFIG, settings).parent  # type: ignore[union-attr]
    return hub_snapshot(ref, hub_ref, folder, weights_name, "download" if missing else "cache")


def _download_file(hub_ref: HubRef, commit: str, filename: str, settings: HubSettings, *, progress: bool) -> Path:
    """Download one file at `commit` into the cache (atomic: a partial file never takes the final name)."""
    try:
        return _hub_download(hub_ref.repo_id, filename, commit, settings, progress=progress)
    except (RepositoryNotFoundError, RevisionNotFoundError) as error:
        raise _hub_error(hub_ref, error) from None
    except HubTimeout as error:
        raise ModelError(
            f"downloading {filename} of '{hub_ref.display}' stalled: {error}; "
            "run the command again to resume the download"
        ) from None
    except (httpx2.HTTPError, HfHubHTTPError, OSError, ValueError) as error:
        raise ModelError(
            f"downloading {filename} of '{hub_ref.display}' failed ({_short(error) if isinstance(error, OSError) else _misbehaviour(error)}); "
            "run the command again to restart the download"
        ) from None


def _record_revision(hub_ref: HubRef, commit: str, settings: HubSettings, *, has_preprocessor: bool) -> None:
    """Have huggingface_hub record in its cache what an offline run needs (the revision's commit, a
    missing preprocessor config) with one HEAD request; a failure only means asking again next time."""
    config = cached_file(hub_ref, CONFIG, settings)  # through the revision, as an offline run looks
    if config is not None and config.parent.name == commit and (has_preprocessor or preprocessor_known(hub_ref, settings)):
        return
    name = CONFIG if has_preprocessor else PREPROCESSOR_CONFIG
    try:
        _hub_download(hub_ref.repo_id, name, hub_ref.revision, settings)
    except (EntryNotFoundError, HubTimeout, HfHubHTTPError, httpx2.HTTPError, OSError, ValueError):
        pass  # EntryNotFoundError: the expected answer for the missing preprocessor config


def _hub_download(repo_id: str, filename: str, revision: str, settings: HubSettings, *, progress: bool = False) -> Path:
    """`hf_hub_download` into the cache, within the deadline (which each chunk received moves on)."""
    deadline = Deadline(settings.timeout)
    return Path(
        bounded(
            lambda: hf_hub_download(
                repo_id,
                filename,
                revision=revision,
                cache_dir=str(settings.cache_dir),
                endpoint=settings.endpoint,
                etag_timeout=REQUEST_TIMEOUT_S,
                tqdm_class=_progress_class(progress, deadline),
            ),
            deadline,
        )
    )


def _progress_class(progress: bool, deadline: Deadline) -> type[hf_tqdm]:
    """huggingface_hub's bar (stderr, TTY only) or a disabled one; either moves the deadline on each chunk."""
    show = progress and sys.stderr.isatty()

    class Bar(hf_tqdm):
        def __init__(self, *args, **kwargs):
            if not show:
                kwargs["disable"] = True
            super().__init__(*args, **kwargs)

        def update(self, n=1):
            deadline.moved()
            return super().update(n)

    return Bar


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


def _status(error: HfHubHTTPError) -> int:
    """The HTTP status of a hub error (0 if there was no response)."""
    response = getattr(error, "response", None)
    return int(getattr(response, "status_code", 0) or 0)


def _short(error: BaseException) -> str:
    """An exception as a short single line: its class and first message line."""
    if not str(error).strip():
        return type(error).__name__
    return f"{type(error).__name__}: {first_line(error)}"[:200]
