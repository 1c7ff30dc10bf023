"""The metadata sidecar of an embedding (format: docs/collection.md): `OUT.meta.json`, one small
JSON object (what made the rows, their shape, the set's file names and the row file's sha256),
and `OUT.files.jsonl`, line i the file row i came from (`{"path", "size", "mtime_ns"}`, plus
`"sha256"` with `--hash`; JSON Lines, so a million rows stream). Both are staged and published
in the same set as the array (`publish.py`). A row whose file could not be identified has
`"size": null`: `--update` embeds it again.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator

from bitcli.errors import UsageError
from bitcli.store.settings import EmbedSettings
from bitcli.store.files import FileIdentity, staged_name
from bitcli.util import open_regular, read_capped, sha256_file, write_synced

if TYPE_CHECKING:
    from bitcli.store.paths import EmbedPaths

FORMAT = "bitcli.embedding"
FORMAT_VERSION = 1
HEADER_MAX_BYTES = 1 << 20  # the header is a few kB
ROW_LINE_MAX = 64 << 10  # one row file line: a path (at most PATH_MAX, escaped) and its identity


@dataclass(frozen=True)
class SidecarPaths:
    """Where the header and the row file of an embedding live."""

    meta: Path
    files: Path

    @classmethod
    def for_output(cls, out: Path) -> "SidecarPaths":
        """`photos.npy` -> `photos.meta.json`, `photos.files.jsonl` (the manifest's stem rule)."""
        out = Path(out)
        stem = out.with_suffix("") if out.suffix in (".npy", ".txt") else out
        return cls(meta=stem.with_name(stem.name + ".meta.json"), files=stem.with_name(stem.name + ".files.jsonl"))


def identify(path: str, *, content_hash: bool = False) -> FileIdentity:
    """Stat `path` (following links) and, with `content_hash`, hash its bytes. Raises OSError;
    a FIFO, device or directory raises `NotRegularFile` without blocking (it is never an
    embeddable file: its row would fail anyway), and the hash reads no more than the size the
    file had when it was opened (a file growing meanwhile is not read forever)."""
    with open_regular(path) as fh:
        info = os.fstat(fh.fileno())
        digest = sha256_file(fh, info.st_size) if content_hash else None
    return FileIdentity(size=info.st_size, mtime_ns=info.st_mtime_ns, sha256=digest)


def still_embedded(path: str, recorded: FileIdentity | None) -> bool:
    """Whether the file at `path` is still the one `recorded` describes: its size and mtime, and
    its content's sha256 where one was recorded (None: never identified, so not). Raises OSError."""
    if recorded is None:
        return False
    now = identify(path, content_hash=recorded.sha256 is not None)
    return recorded.same_stat(now) and now.sha256 == recorded.sha256


def identify_all(paths: Iterable[str], *, content_hash: bool = False) -> dict[str, FileIdentity | None]:
    """Each distinct path's identity now (None when it cannot be read: embedding will say why)."""
    found: dict[str, FileIdentity | None] = {}
    for path in paths:
        if path not in found:
            try:
                found[path] = identify(path, content_hash=content_hash)
            except OSError:
                found[path] = None
    return found


@dataclass
class EmbeddingMetadata:
    """The header (`OUT.meta.json`): the settings record (`EmbedSettings`, whose keys are the
    header's `model`, `preprocessing`, `decode`, `dtype`, `normalize`, `content_hash`), the
    array's shape, where the run happened and which files form the set. `extra` keeps keys a
    newer bitcli may add (round-tripped)."""

    rows: int
    feature_dim: int
    settings: EmbedSettings
    runtime: dict[str, Any] = field(default_factory=dict)  # device, batch_size, convolution: informative
    cwd: str | None = None  # relative row paths are relative to this directory
    cwd_from_header: str | None = None  # the same directory, relative to the header's
    bitcli_version: str = ""
    array: str | None = None  # file names, relative to the header's directory
    manifest: str | None = None
    files: str | None = None
    files_sha256: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_fingerprint(cls, fingerprint: dict[str, Any], *, rows: int, feature_dim: int, **fields: Any) -> "EmbeddingMetadata":
        """From a run's fingerprint (`Embedder.fingerprint()` plus "dtype", "content_hash")."""
        return cls(rows=rows, feature_dim=feature_dim, settings=EmbedSettings.from_fingerprint(fingerprint),
                   runtime=EmbedSettings.runtime(fingerprint), **fields)

    def base_dir(self, meta_path: Path | None, sample: str | None = None) -> str | None:
        """The directory relative row paths are relative to: the one `bit embed` ran in, found
        from the header's own place (so a collection moved or copied with its files keeps
        naming them), else as recorded. `sample`, one relative row path: where it names no file
        but the recorded directory holds it, the collection was moved without its files, and
        the recorded directory is the one."""
        found = self._base_dir(meta_path)
        if sample and not os.path.isabs(sample) and found and not os.path.lexists(os.path.join(found, sample)):
            if isinstance(self.cwd, str) and os.path.lexists(os.path.join(self.cwd, sample)):
                return self.cwd
        return found

    def _base_dir(self, meta_path: Path | None) -> str | None:
        if meta_path is not None and self.cwd_from_header is not None:
            # Written from the header's real folder; older headers from the folder as spelled.
            # The spelling that leads back to the recorded directory wins, then the real one.
            folder = os.path.dirname(os.path.abspath(meta_path))
            found = [os.path.normpath(os.path.join(base, self.cwd_from_header)) for base in (os.path.realpath(folder), folder)]
            found = [f for f in found if os.path.isdir(f)]
            for candidate in found:
                if isinstance(self.cwd, str) and os.path.isdir(self.cwd) and os.path.samefile(candidate, self.cwd):
                    return candidate
            if found:
                return found[0]
        return self.cwd

    def to_dict(self) -> dict[str, Any]:
        names = [f.name for f in fields(self) if f.name not in ("extra", "settings")]
        order = ["bitcli_version", "array", "manifest", "files", "files_sha256", "rows", "feature_dim"]  # where it came from, first
        known = {name: getattr(self, name) for name in order + [n for n in names if n not in order]}
        record = {"format": FORMAT, "format_version": FORMAT_VERSION, **known, **self.settings.to_json(), **self.extra}
        return {key: _sorted(value) for key, value in record.items()}  # one order, whichever producer read what from where

    @classmethod
    def from_dict(cls, data: Any, source: str) -> "EmbeddingMetadata":
        """Validate a parsed header; every problem is one UsageError line naming `source`."""
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise UsageError(f"{source}: not a bitcli embedding header (no \"format\": \"{FORMAT}\")")
        version = data.get("format_version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise UsageError(f"{source}: format version {version!r} is newer than this bitcli reads ({FORMAT_VERSION}); upgrade bitcli")
        names = {f.name for f in fields(cls)} - {"extra", "settings"}
        try:
            missing = [key for key in ("rows", "feature_dim", "dtype", "normalize", "model") if key not in data]
            if missing:
                raise KeyError(", ".join(missing))
            for key in ("rows", "feature_dim"):
                _int(data[key], key)
            for key in ("model", "preprocessing", "decode", "runtime"):
                if not isinstance(data.get(key, {}), dict):
                    raise TypeError(f"{key} must be an object")
            known = {k: v for k, v in data.items() if k in names}
            taken = names | set(EmbedSettings.KEYS) | {"format", "format_version"}
            return cls(**known, settings=EmbedSettings.from_json(data), extra={k: v for k, v in data.items() if k not in taken})
        except (KeyError, TypeError, ValueError) as exc:
            raise UsageError(f"{source}: malformed header ({type(exc).__name__}: {exc}); embed anew with --overwrite") from exc

    def model_reference(self) -> str:
        """What `bitcli.load` takes to get the same weights: `repo@commit`, or the local path."""
        return self.settings.model_reference()


def _int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, not {value!r}")
    return value


def _sorted(value: Any) -> Any:
    """`value` with every object's keys in sorted order (a run's settings as made or as read back)."""
    return {k: _sorted(value[k]) for k in sorted(value)} if isinstance(value, dict) else value


def check_compatible(stored: EmbeddingMetadata, current: EmbeddingMetadata, out: str) -> None:
    """UsageError (exit 2, one line) when `current` settings would make rows unlike `stored` ones."""
    then, now = stored.settings, current.settings
    diffs = then.diff(now)
    if stored.feature_dim != current.feature_dim and current.feature_dim:
        diffs.append(f"feature_dim {stored.feature_dim} then, {current.feature_dim} now")
    if not diffs:
        return
    if then.model_changed(now):
        raise UsageError(
            f"{out} was made with other weights: the model {now.model.get('reference')} changed since "
            "(its files' content differs); embed anew with --overwrite, or use the weights it was made with"
        )
    raise UsageError(
        f"{out} was made with other settings ({'; '.join(diffs[:3])}); update with the same "
        "--model, --dtype, --normalize and image options, or embed anew with --overwrite"
    )


# -- writing and reading ---------------------------------------------------------------------


def metadata_for(paths: "EmbedPaths", record: dict[str, Any], *, rows: int, dim: int,
                 cwd: str | None = None) -> EmbeddingMetadata:
    """`OUT.meta.json`'s content for the output `paths`: what made the rows (docs/collection.md),
    from the run record's `settings` and `runtime` (`files.run_state`). `cwd`: the directory the
    rows' relative paths are relative to (default: this process's; `combine`: the shards')."""
    from bitcli import __version__

    header = paths.sidecars.meta
    cwd = cwd or os.getcwd()
    return EmbeddingMetadata(
        settings=EmbedSettings.from_json(record["settings"]),
        runtime=dict(record["runtime"]),
        rows=rows,
        feature_dim=dim,
        bitcli_version=__version__,
        cwd=cwd,
        cwd_from_header=os.path.relpath(cwd, os.path.realpath(os.path.dirname(os.path.abspath(header)))),
        array=None if paths.out is None else _relative_name(paths.out, header),
        manifest=_relative_name(paths.manifest, header),
    )


def stage_metadata(
    paths: SidecarPaths, meta: EmbeddingMetadata, rows: Iterable[tuple[str, FileIdentity | None]]
) -> dict[str, Path]:
    """Write the row file and the header under their staged names (`files.staged_name`); the
    header names the final row file and its digest. {"files": staged, "meta": staged}: the
    caller publishes them (the embed store: `publish.StagedSet.sidecar`, in its one set).

    `rows` must yield exactly `meta.rows` (path, identity) pairs, in row order."""
    sha = hashlib.sha256()
    count = 0

    def lines() -> Iterator[bytes]:
        nonlocal count
        for path, identity in rows:
            record = identity.to_dict(path) if identity is not None else {"path": path, "size": None, "mtime_ns": None}
            # ASCII with \\u escapes: non-UTF-8 file names (lone surrogates) round-trip through json.
            line = (json.dumps(record, ensure_ascii=True) + "\n").encode("ascii")
            sha.update(line)
            count += 1
            yield line

    staged = {"files": staged_name(paths.files), "meta": staged_name(paths.meta)}
    try:
        write_synced(staged["files"], lines())
        if count != meta.rows:
            raise ValueError(f"{count} file identities given for {meta.rows} rows")
        meta.files = _relative_name(paths.files, paths.meta)
        meta.files_sha256 = sha.hexdigest()
        header = json.dumps(meta.to_dict(), indent=1, ensure_ascii=True) + "\n"
        write_synced(staged["meta"], header.encode("ascii"))
    except BaseException:
        for path in staged.values():
            path.unlink(missing_ok=True)
        raise
    return staged


def read_metadata(path: Path) -> EmbeddingMetadata:
    """Read and validate `OUT.meta.json` (UsageError naming the file when it is unusable)."""
    try:
        text = read_capped(path, HEADER_MAX_BYTES).decode("utf-8")
    except OSError as exc:
        raise UsageError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    except ValueError as exc:  # too large, or not UTF-8
        raise UsageError(f"{path}: not a bitcli embedding header ({exc}); embed anew with --overwrite") from exc
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise UsageError(f"{path}: not valid JSON ({exc}); embed anew with --overwrite") from exc
    return EmbeddingMetadata.from_dict(data, str(path))


def sidecar_file(meta_path: Path, name: str | None) -> Path | None:
    """A file the header names (relative to the header's directory), or None."""
    if not name:
        return None
    return Path(meta_path).parent / name


def read_file_rows(
    meta_path: Path, meta: EmbeddingMetadata, only: set[int] | None = None
) -> list[tuple[str, FileIdentity | None] | None]:
    """Every row's (path, identity), checked against the header's row count and digest. Read line
    by line, each line capped, never beyond the header's row count. With `only`, just those rows
    are parsed (the others are None; the whole file is still checked)."""
    files = sidecar_file(meta_path, meta.files)
    if files is None:
        raise UsageError(f"{meta_path}: names no row file; embed anew with --overwrite")
    again = "; embed anew with --overwrite"
    sha = hashlib.sha256()
    rows: list[tuple[str, FileIdentity | None] | None] = []
    try:
        with open_regular(files) as fh:  # a FIFO or device here must not block the reader
            while raw := fh.readline(ROW_LINE_MAX + 1):
                if len(rows) == meta.rows or not raw.endswith(b"\n"):
                    raise UsageError(f"{files} holds more than {meta_path}'s {meta.rows} rows, or a torn line{again}")
                sha.update(raw)
                rows.append(_row(raw, files, len(rows) + 1) if only is None or len(rows) in only else None)
    except OSError as exc:
        raise UsageError(f"{files}: cannot read ({exc.strerror or exc}){again}") from exc
    if meta.files_sha256 is not None and sha.hexdigest() != meta.files_sha256:
        raise UsageError(f"{files} does not match {meta_path} (changed since it was written){again}")
    if len(rows) != meta.rows:
        raise UsageError(f"{files} lists {len(rows)} files but {meta_path} says {meta.rows} rows{again}")
    return rows


def _row(raw: bytes, files: Path, number: int) -> tuple[str, FileIdentity | None]:
    try:
        record = json.loads(raw)
        identity = None
        if record["size"] is not None:
            identity = FileIdentity(size=_int(record["size"], "size"), mtime_ns=int(record["mtime_ns"]), sha256=record.get("sha256"))
        return str(record["path"]), identity
    except (ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"{files}, line {number}: malformed ({exc}); embed anew with --overwrite") from exc


def _relative_name(target: Path, meta_path: Path) -> str:
    """`target` relative to the header's directory when it lies there, else absolute."""
    target, base = Path(os.path.abspath(target)), Path(os.path.abspath(meta_path)).parent
    return target.name if target.parent == base else str(target)
