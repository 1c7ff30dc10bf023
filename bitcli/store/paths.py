"""The files an embed run writes, and the checks made before any of them is touched.

`EmbedPaths` names them all (the array, the manifest, the error list, the partial directory and
the temporary names they are written under); `check_output` refuses, before the model loads,
what the writer would refuse; `write_errors` turns a failed write into one line naming the
output it stands for.
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from bitcli.errors import BitError, UsageError
from bitcli.inputs import path_problem
from bitcli.store.metadata import SidecarPaths


@dataclass(frozen=True)
class EmbedPaths:
    """Every file an embed run writes; `out` is None when the array goes to a stream (`-o -`)."""

    out: Path | None
    manifest: Path
    errors: Path

    @property
    def partial(self) -> Path | None:
        return None if self.out is None else self.out.with_name(self.out.name + ".partial")

    @property
    def sidecars(self) -> SidecarPaths:
        """The metadata sidecar: `OUT.meta.json`, `OUT.files.jsonl` (with -o -, beside the manifest)."""
        return SidecarPaths.for_output(self.out if self.out is not None else self.manifest)

    @property
    def outputs(self) -> list[Path]:
        """The files a finished run publishes (the array only when it is not streamed)."""
        sidecars = self.sidecars
        return [p for p in (self.out, self.manifest, self.errors, sidecars.meta, sidecars.files) if p is not None]

    def output_for(self, filename: Any) -> Any:
        """The output a file name stands for: temporary files (`.NAME.xxxx`, see
        `files.write_atomic`) and the partial directory's contents are named after the file they
        become; None stands for the array (or the manifest, with `-o -`)."""
        if filename is None:
            return self.outputs[0]
        base = os.path.basename(os.fsdecode(filename))
        for path in self.outputs:
            if str(filename) == str(path) or base.startswith(f".{path.name}."):
                return path
        if self.partial is not None and Path(filename).parent == self.partial:
            return self.out
        return filename

    @classmethod
    def for_output(cls, out: Path | None, manifest: Path | None = None, errors: Path | None = None) -> "EmbedPaths":
        """Defaults: `OUT.paths.txt` and `OUT.errors.txt` (`OUT` without `.npy`).

        With `out=None` (stdout) the manifest must be given; errors go next to it, in
        `MANIFEST.errors.txt` (`MANIFEST` without its `.txt`).
        """
        if out is None:
            if manifest is None:
                raise UsageError("-o - writes the array to stdout: give --manifest FILE for the row paths")
            base = manifest.with_suffix("") if manifest.suffix == ".txt" else manifest
            return cls(out=None, manifest=manifest, errors=errors or base.with_name(base.name + ".errors.txt"))
        stem = out.with_suffix("") if out.suffix == ".npy" else out
        return cls(
            out=out,
            manifest=manifest if manifest is not None else stem.with_name(stem.name + ".paths.txt"),
            errors=errors if errors is not None else stem.with_name(stem.name + ".errors.txt"),
        )


def check_output(paths: EmbedPaths, *, resume: bool, overwrite: bool, update: bool = False) -> None:
    """Refuse early (before the model loads) what `EmbedWriter` would refuse: UsageError, exit 2.

    `update`: the existing output is the one being brought up to date (`--update`), not in the way."""
    if resume and overwrite:
        raise UsageError("--resume continues a run and --overwrite discards it: pass one of them")
    if update and (overwrite or paths.out is None):
        raise UsageError("--update keeps the output's rows: it cannot be combined with --overwrite or -o -")
    _check_distinct(paths)
    if paths.manifest.is_dir():
        raise UsageError(f"--manifest {paths.manifest}: is a directory; give a file name")
    if paths.out is None and resume:
        raise UsageError("--resume needs an output file, not -o -")
    partial = paths.partial
    if partial is not None and partial.exists() and not (resume or overwrite):
        again = "--update --resume" if update else "--resume"
        raise UsageError(
            f"{paths.out}: an interrupted run left {partial}; "
            f"pass {again} to continue it or --overwrite to start over"
        )
    if update:
        return
    if paths.out is not None and paths.out.exists() and not partial.exists() and not (resume or overwrite):
        raise UsageError(f"{paths.out} already exists; pass --overwrite to replace it, --update to bring it up to date (or --resume)")
    for existing in (paths.manifest, paths.sidecars.meta):
        if existing.exists() and not (resume or overwrite):
            raise UsageError(f"{existing} already exists; pass --overwrite to replace it")


def _check_distinct(paths: EmbedPaths) -> None:
    """The array, manifest, error list, partial run and metadata sidecar must be different files."""
    seen: dict[str, str] = {}
    sidecars = paths.sidecars
    named = (
        ("-o", paths.out), ("--manifest", paths.manifest), ("the error list", paths.errors),
        ("the partial run", paths.partial), ("the metadata", sidecars.meta), ("the row identities", sidecars.files),
    )
    for what, path in named:
        if path is None:
            continue
        key = os.path.abspath(path)
        if key in seen:
            raise UsageError(f"{path}: {seen[key]} and {what} would be the same file; choose another --manifest or -o")
        seen[key] = what


def manifest_problem(path: str) -> str | None:
    """Why `path` cannot be a manifest line, or None when it can (`inputs.path_problem`'s rule)."""
    if path_problem(path):
        return "the path contains a line break, so it cannot be listed in the manifest; rename the file"
    return None


def escape_error_path(path: str) -> str:
    """One-line form of a path for `OUT.errors.txt` (backslash, tab and line breaks escaped)."""
    return path.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def unescape_error_path(text: str) -> str:
    """The path `escape_error_path` made `text` from."""
    return re.sub(r"\\(.)", lambda m: _UNESCAPES.get(m.group(1), m.group(1)), text)


_UNESCAPES = {"t": "\t", "n": "\n", "r": "\r"}


@contextlib.contextmanager
def write_errors(paths: EmbedPaths, error: type[BitError] = BitError) -> Iterator[None]:
    """A failed write (disk full, permission denied) becomes `error`: one line naming the output.

    Pass UsageError (exit 2) while the output cannot even be created, BitError (exit 1) after."""
    try:
        yield
    except BrokenPipeError:
        raise
    except OSError as exc:
        resumable = paths.partial is not None and paths.partial.exists()
        hint = "; fix that and rerun with --resume" if resumable else ""
        raise error(f"{paths.output_for(exc.filename)}: cannot write ({exc.strerror or exc}){hint}") from exc
