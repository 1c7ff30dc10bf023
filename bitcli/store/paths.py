"""The files an embed run writes (`EmbedPaths`), and what is refused before any of them is
touched (`check_output`, exit 2; docs/collection.md, "Writing and reading one set"):

- only regular files are replaced (or missing ones created): never a FIFO, device, directory or
  symbolic link (the publishing rename replaces the name it is given; a planted link would let
  --overwrite reach any file its owner can write);
- `OUT.npy.partial` is discarded only when it holds nothing but bitcli's own files;
- no output may be another output, or lie inside the partial directory (through `..` or a link too);
- every name, the temporary ones included, must fit the file system's limit on a name.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from bitcli import util
from bitcli.collection import norms
from bitcli.errors import BitError, UsageError
from bitcli.store.files import (
    OWN_PARTIAL_FILES, STATE, lock_holder, partial_problem, read_json_record, read_lines, staged_name,
)
from bitcli.store.metadata import SidecarPaths
from bitcli.util import beside, file_kind

# How messages name a file of the set beyond the three outputs.
ROLE_NAMES = {"metadata": "the metadata", "identities": "the row identities", "record": "the run record",
              "norms": "the row norms"}


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
    def partial_tmp(self) -> Path | None:
        """Where the partial directory is assembled before it appears under its name."""
        return None if self.out is None else self.out.with_name(f".{self.out.name}.partial.tmp")

    @property
    def record(self) -> Path | None:
        """The finished run's record (settings, input digest, file sizes) beside the array."""
        return None if self.out is None else self.out.with_name(f".{self.out.name}.run.json")

    @property
    def sidecars(self) -> SidecarPaths:
        """The metadata sidecar: `OUT.meta.json`, `OUT.files.jsonl` (with -o -, beside the manifest)."""
        return SidecarPaths.for_output(self.out if self.out is not None else self.manifest)

    @property
    def outputs(self) -> list[Path]:
        """The files a finished run publishes (the array only when it is not streamed)."""
        return [p for p in (self.out, self.manifest, self.errors) if p is not None]

    def set_files(self) -> dict[str, Path]:
        """The published set by role, the run record included: what a finished run stages and
        renames as one (`publish.StagedSet`), and what the run record lists. A new file of the set
        is one more entry here; a file of the set a run does not stage (the error list, without
        failures) is removed. Renamed in this order (the sidecar's row file before the header that
        names its digest), then the array, then the row norms (`publish.publication`)."""
        sidecars = self.sidecars
        roles = (("array", self.out), ("manifest", self.manifest), ("errors", self.errors),
                 ("identities", sidecars.files), ("metadata", sidecars.meta), ("record", self.record),
                 ("norms", None if self.out is None else beside(self.out, ".norms.npz")))
        return {role: path for role, path in roles if path is not None}

    def staged_files(self) -> dict[str, Path]:
        """The files of the set written beside their final names first (all but the array)."""
        return {role: path for role, path in self.set_files().items() if role != "array"}

    @staticmethod
    def staged(path: Path) -> Path:
        return staged_name(path)

    def every_name(self) -> list[tuple[str, Path]]:
        """(role, path) of everything this run may create, for the name and kind checks."""
        named = [("-o", self.out), ("--manifest", self.manifest), ("the error list", self.errors)]
        named += [(ROLE_NAMES.get(role, f"the {role} file"), path) for role, path in self.set_files().items()
                  if path not in (self.out, self.manifest, self.errors)]
        named += [("the partial run", self.partial), ("a temporary file", self.partial_tmp)]
        named += [("a temporary file", self.staged(p)) for p in self.staged_files().values()]
        return [(what, path) for what, path in named if path is not None]

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


def output_paths(output: str, manifest: Path | None) -> EmbedPaths:
    """`-o` as given: `-` (stdout; the sidecar beside the manifest), else the `.npy` file (`.npy`
    added to a name without it, as numpy.save does). A directory is a UsageError."""
    if output == "-":
        return EmbedPaths.for_output(None, manifest=manifest)
    out = Path(output)
    if os.path.isdir(out):  # False for a name too long to look up: check_names says so
        raise UsageError(f"-o {out}: is a directory; give a file name such as {out / 'embeddings.npy'}")
    return EmbedPaths.for_output(out if out.name.endswith(".npy") else out.with_name(out.name + ".npy"), manifest=manifest)


def check_output(paths: EmbedPaths, *, resume: bool, overwrite: bool, update: bool = False, exists: str | None = None) -> None:
    """Refuse early (before the model loads) what `EmbedWriter` would refuse: UsageError, exit 2.

    `update` (`--update`): an existing output is the one being brought up to date, not in the way;
    --overwrite then discards only an interrupted run, --resume continues an interrupted update.
    `exists`: what to advise when the output exists (default: `bit embed`'s flags)."""
    if resume and overwrite:
        raise UsageError("--resume continues a run and --overwrite discards it: pass one of them")
    if paths.out is None and (resume or update):
        raise UsageError(f"{'--update' if update else '--resume'} needs an output file, not -o -")
    check_names(paths)  # first: a name too long is said as such, not as a name that cannot be looked up
    check_place(paths)
    for what, path in paths.every_name():
        if path != paths.partial:
            check_replaceable(path, what)
    partial = paths.partial
    if partial is not None:
        check_own_partial(paths)
        holder = lock_holder(partial) if partial.is_dir() else None
        if holder is not None:
            raise UsageError(
                f"{paths.out}: another bit embed run ({holder}) is writing it; wait for it to finish or stop it"
            )
        if resume and partial.is_dir():
            problem = partial_problem(partial)
            if problem:
                raise UsageError(f"{partial} is damaged ({problem}), so it cannot be resumed; pass --overwrite to start again")
    if resume or overwrite:
        return
    if partial is not None and partial.exists():
        state = read_json_record(partial / STATE) if partial.is_dir() else None
        if state is not None:  # the flags that continue the run interrupted, not the ones given now
            update = state.get("update") is not None
        again = "--update --resume" if update else "--resume"
        over = "--update --overwrite to start the update over" if update else "--overwrite to start over"
        raise UsageError(f"{paths.out}: an interrupted run left {partial}; pass {again} to continue it or {over}")
    if update and paths.out.exists():
        return  # the output, its manifest and sidecar are what --update brings up to date
    if paths.out is not None and paths.out.exists():
        advice = exists or "pass --overwrite to replace it, --update to bring it up to date (or --resume)"
        raise UsageError(f"{paths.out} already exists; {advice}")
    for role, path in paths.staged_files().items():  # the run record and the norms are bitcli's own: not asked about
        if role != "record" and os.path.lexists(path) and not (role == "norms" and norms.is_ours(path)):
            raise UsageError(f"{path} already exists; pass --overwrite to replace it")


def check_replaceable(path: Path, what: str = "output") -> None:
    """A UsageError unless `path` is missing or a regular file (the only things bitcli replaces)."""
    info = _lstat(path)
    if what == "--manifest" and info is not None and stat.S_ISDIR(info.st_mode):
        raise UsageError(f"--manifest {path}: is a directory; give a file name")
    util.check_replaceable(path)


def check_own_partial(paths: EmbedPaths) -> None:
    """The partial directory (and its temporary twin), when they exist, must be bitcli's own."""
    for path in (paths.partial, paths.partial_tmp):
        info = _lstat(path)
        if info is None:
            continue
        if not stat.S_ISDIR(info.st_mode):
            raise UsageError(
                f"{path}: is a {file_kind(info.st_mode)}, not a partial run bitcli made; "
                "move it away or choose another -o"
            )
        try:
            entries = list(os.scandir(path))
        except OSError as exc:
            raise UsageError(f"{path}: cannot read it ({exc.strerror or exc}); fix its permissions or move it away") from None
        foreign = [e.name for e in entries if e.name not in OWN_PARTIAL_FILES or not e.is_file(follow_symlinks=False)]
        if foreign:
            shown = ", ".join(sorted(foreign)[:3]) + (" ..." if len(foreign) > 3 else "")
            raise UsageError(
                f"{path}: holds files bitcli did not write there ({shown}); move it away or choose another -o"
            )


def check_place(paths: EmbedPaths) -> None:
    """Refuse outputs in the system's device folder (/dev's own file system; /dev/shm is one of
    files), and an output named after a special file:
    `-o /dev/null` would create `/dev/null.npy`, `/dev/null.paths.txt`, ... there (as root)."""
    for name in (paths.out, paths.manifest):
        if name is None:
            continue
        folder = os.path.realpath(name.parent)
        if (folder == "/dev" or folder.startswith("/dev/")) and _on_dev_file_system(folder):
            raise UsageError(f"{name}: in {folder}, the system's device folder; write the output to a folder of files")
    if paths.out is not None:
        stem = paths.out.with_suffix("") if paths.out.suffix == ".npy" else paths.out
        info = _lstat(stem)
        if info is not None and not (stat.S_ISREG(info.st_mode) or stat.S_ISDIR(info.st_mode) or stat.S_ISLNK(info.st_mode)):
            raise UsageError(
                f"{stem}: is a {file_kind(info.st_mode)}; the output's files ({paths.out.name}, ...) would be "
                "written beside it: choose a file name"
            )


def _on_dev_file_system(folder: str) -> bool:
    """Whether `folder` (under /dev) is the device folder's own file system: /dev/shm, a RAM file
    system of files mounted there, is not (it is scratch space for outputs like any other)."""
    try:
        return os.stat(folder).st_dev == os.stat("/dev").st_dev
    except OSError:
        return True  # a folder that cannot be checked there is refused


def check_names(paths: EmbedPaths) -> None:
    """Every name this run may create (the temporary ones too) fits the file system's limit on a
    name and is a file of its own: no two are the same file, and the manifest and the error list
    are not inside the partial directory (deleted when the run ends)."""
    base = paths.out if paths.out is not None else paths.manifest  # what the other names derive from
    seen: dict[str, str] = {}
    limits = {folder: _name_max(folder) for folder in dict.fromkeys(p.parent for _, p in paths.every_name())}
    for folder, limit in limits.items():  # a folder on the way, which the run would create
        if any(len(os.fsencode(part)) > limit for part in folder.parts):
            raise UsageError(f"{folder}: a folder name in it is too long for this file system, at most {limit} bytes "
                             "per name; choose a shorter one")
    for what, path in paths.every_name():
        size, limit = len(os.fsencode(path.name)), limits[path.parent]
        if size > limit:
            output = next((o for o in (paths.manifest, paths.errors) if path in (o, paths.staged(o))), base)
            beside = "" if path == output else f": bitcli also writes {path.name} beside it ({size} bytes)"
            raise UsageError(f"{output}: the name is too long for this file system, at most {limit} bytes per name{beside}; "
                             "choose a shorter name")
        key = os.path.realpath(path)
        if key in seen:
            raise UsageError(f"{path}: {seen[key]} and {what} would be the same file; choose another --manifest or -o")
        seen[key] = what
    inside = None if paths.partial is None else os.path.realpath(paths.partial) + os.sep
    for what, path in (("--manifest", paths.manifest), ("the error list", paths.errors)):
        if inside is not None and os.path.realpath(path).startswith(inside):
            raise UsageError(
                f"{path}: {what} would be inside {paths.partial}, which is deleted when the run ends; choose another place"
            )


def _name_max(directory: Path) -> int:
    for candidate in (directory, *directory.parents):
        try:
            return os.pathconf(candidate if str(candidate) else ".", "PC_NAME_MAX")
        except (OSError, ValueError):
            continue
    return 255


def _lstat(path: Path | None) -> os.stat_result | None:
    if path is None:
        return None
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None
    except NotADirectoryError:
        return None
    except OSError as exc:
        raise UsageError(f"{path}: cannot use this name ({exc.strerror or exc})") from None


def escape_error_path(path: str) -> str:
    """One-line form of a path for `OUT.errors.txt` (backslash, tab and line breaks escaped)."""
    return path.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def unescape_error_path(text: str) -> str:
    """The path `escape_error_path` made `text` from."""
    return re.sub(r"\\(.)", lambda m: _UNESCAPES.get(m.group(1), m.group(1)), text)


_UNESCAPES = {"t": "\t", "n": "\n", "r": "\r"}


def read_errors(path: Path) -> list[tuple[str, str]]:
    """(path, reason) of each line of an error list (`OUT.errors.txt`), in order; none when absent."""
    if not path.exists():
        return []
    return [(unescape_error_path(name), reason) for name, _, reason in (line.partition("\t") for line in read_lines(path))]


class OutputWriteError(OSError):
    """A failed write, named after the output it was for (not a temporary or partial file)."""


@contextlib.contextmanager
def writing(output: Path | None, error: type[OutputWriteError] = OutputWriteError) -> Iterator[None]:
    """Inside, an OSError becomes an `error` naming `output` (a closed pipe stays itself)."""
    try:
        yield
    except (BrokenPipeError, OutputWriteError):
        raise
    except OSError as exc:
        raise error(exc.errno, exc.strerror or str(exc), str(output)) from exc


@contextlib.contextmanager
def write_errors(paths: EmbedPaths, error: type[BitError] = BitError, again: str = "--resume") -> Iterator[None]:
    """A failed write (disk full, permission denied) becomes `error`: one line naming the output
    and, when a partial run is kept, how to continue it (`again`: `--update --resume` for an update).

    Pass UsageError (exit 2) while the output cannot even be created, BitError (exit 1) after."""
    try:
        yield
    except BrokenPipeError:
        raise
    except OSError as exc:
        name = exc.filename if isinstance(exc, OutputWriteError) else paths.outputs[0]
        resumable = paths.partial is not None and os.path.isdir(paths.partial)  # False for a name too long
        hint = f"; fix that and rerun with {again}" if resumable else ""
        raise error(f"{name}: cannot write ({exc.strerror or exc}){hint}") from exc
