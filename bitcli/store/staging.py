"""What `finish()` writes under staged names before its commit point (`publish.py` renames them):
the manifest, the error list, the metadata sidecar (`metadata.py`) and the run record.

The run record lists every published file with its size, so `--resume` of a finished output
notices any of them replaced or edited, the sidecar included.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bitcli.store.files import write_lines, write_synced
from bitcli.store.metadata import EmbeddingMetadata, stage_metadata
from bitcli.store.paths import EmbedPaths, escape_error_path, writing

if TYPE_CHECKING:
    from bitcli.store.journal import Journal


def record_files(paths: EmbedPaths) -> dict[str, Path]:
    """The published files by role, as the run record lists them."""
    return {"array": paths.out, "manifest": paths.manifest, "errors": paths.errors,
            "metadata": paths.sidecars.meta, "identities": paths.sidecars.files}


def stage_files(paths: EmbedPaths, journal: "Journal", meta: EmbeddingMetadata, staged: dict[str, Path]) -> dict[str, Any]:
    """Write the manifest, (when inputs failed) the error list and the metadata sidecar under
    their staged names, recording each in `staged` (role -> staged path); their sizes by role."""
    sizes: dict[str, Any] = {}
    with writing(paths.manifest):
        staged["manifest"] = paths.staged(paths.manifest)
        sizes["manifest"] = write_lines(staged["manifest"], journal.paths)
    if journal.errors:
        with writing(paths.errors):
            staged["errors"] = paths.staged(paths.errors)
            lines = (f"{escape_error_path(p)}\t{r}" for p, r in journal.errors)
            sizes["errors"] = write_lines(staged["errors"], lines)
    with writing(paths.sidecars.meta):
        staged.update(stage_metadata(paths.sidecars, meta, zip(journal.paths, journal.identities)))
        sizes["metadata"], sizes["identities"] = (os.stat(staged[r]).st_size for r in ("meta", "files"))
    return sizes


def stage_record(paths: EmbedPaths, record: dict[str, Any], sizes: dict[str, Any], staged: dict[str, Path]) -> None:
    """The run record (`record`: settings and counts) plus each published file's path and size."""

    def entry(role: str, path: Path) -> dict[str, Any] | None:
        return None if role not in sizes else {"path": os.path.abspath(path), "size": sizes[role]}

    record = {**record, "files": {role: entry(role, path) for role, path in record_files(paths).items()}}
    with writing(paths.out):
        staged["record"] = paths.staged(paths.record)
        write_synced(staged["record"], (json.dumps(record, indent=1, sort_keys=True) + "\n").encode("utf-8"))


def metadata_for(paths: EmbedPaths, fingerprint: dict[str, Any], *, rows: int, dim: int) -> EmbeddingMetadata:
    """`OUT.meta.json`'s content: what made the rows (docs/collection.md). `fingerprint` is the
    run's, with "dtype"; "content_hash" in it says every row's file was hashed (`--hash`)."""
    from bitcli import __version__

    base = paths.sidecars.meta.parent
    return EmbeddingMetadata.from_fingerprint(
        fingerprint,
        rows=rows,
        feature_dim=dim,
        bitcli_version=__version__,
        content_hash="sha256" if fingerprint.get("content_hash") else None,
        cwd=os.getcwd(),
        array=None if paths.out is None else _name_from(paths.out, base),
        manifest=_name_from(paths.manifest, base),
    )


def _name_from(path: Path, base: Path) -> str:
    """`path` relative to `base` when it lies there, else absolute."""
    absolute = Path(os.path.abspath(path))
    return absolute.name if absolute.parent == Path(os.path.abspath(base)) else str(absolute)
