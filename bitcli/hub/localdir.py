"""`bit download MODEL --local-dir DIR`: a model's checkpoint files copied into a plain folder,
each atomically; a file DIR holds with the same name is kept when equal and refused when not."""

from __future__ import annotations

import filecmp
import shutil
from pathlib import Path

from bitcli.errors import UsageError
from bitcli.hub.cache import ResolvedModel
from bitcli.util import os_error_reason, write_atomic


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
