"""Publishing a finished run as one set of files, and completing a publication a kill interrupted.

Every output is published through `StagedSet` (a local run, `--update`, a shard, `bit combine`,
Ray alike): every file is staged beside its final name (the array is the partial directory's
`data.npy`), then `publish.json` is written into the partial directory (the commit point: each
rename and each stale file to remove), then the renames are made and the partial directory
removed, `publish.json` last. A kill before the commit point leaves the old set; after it,
`recover` (run first by every later `bit embed` or `bit combine` on the output) finishes it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import IO, Any, Callable, Iterable

from bitcli.collection import norms
from bitcli.errors import UsageError
from bitcli.store.files import DATA, LOCK, PUBLISH, PUBLISH_TMP, SEAL_TMP, is_regular, read_json_record, remove_partial, take_lock
from bitcli.store.metadata import EmbeddingMetadata, FileIdentity, stage_metadata
from bitcli.store.paths import EmbedPaths, check_own_partial, check_replaceable, writing
from bitcli.util import encode_lines, fsync_dir, write_atomic, write_synced

PUBLISH_VERSION = 1


def commit_publication(partial: Path, moves: list[tuple[Path, Path]], removals: list[Path], seal: list[Path] | None = None) -> None:
    """Write the commit record: after this, the publication happens even if the process dies.
    `seal`: (staged row norms, array): the norms are sealed with the published array's identity
    just before they are renamed (`collection.norms.seal`)."""
    record = {
        "version": PUBLISH_VERSION,
        "moves": [[os.path.abspath(src), os.path.abspath(dst)] for src, dst in moves],
        "remove": [os.path.abspath(path) for path in removals],
        "seal": [os.path.abspath(path) for path in seal] if seal else None,
    }
    with writing(moves[0][1] if moves else partial):
        record_bytes = (json.dumps(record, indent=1, sort_keys=True) + "\n").encode("utf-8")
        write_atomic(partial / PUBLISH, record_bytes, temporary=partial / PUBLISH_TMP)


def roll_forward(partial: Path) -> bool:
    """Carry out the committed publication in `partial` (idempotent); False when there is none."""
    record = read_json_record(partial / PUBLISH)
    if record is None or record.get("version") != PUBLISH_VERSION:
        return False
    seal = record.get("seal")

    def sealed(src: Path) -> bool:  # False: the array is not the one they were computed from: first use computes them
        return not seal or str(src) != seal[0] or norms.seal(src, Path(seal[1]), partial / SEAL_TMP)

    for directory in apply([(Path(s), Path(d)) for s, d in record.get("moves") or []], map(Path, record.get("remove") or []), sealed):
        fsync_dir(directory)
    remove_partial(partial)
    return True


def apply(moves: list[tuple[Path, Path]], removals: Iterable[Path], sealed: Callable[[Path], bool] = lambda src: True) -> set[Path]:
    """Each rename whose source is still there (not made before a kill) and `sealed`, then each
    stale file removed; the folders touched. Never replaces a FIFO, device or link that appeared."""
    touched = set()
    for src, dst in moves:
        if is_regular(src) and sealed(src):
            check_replaceable(dst)
            with writing(dst):
                os.replace(src, dst)
            touched.add(dst.parent)
    for stale in removals:
        if is_regular(stale):
            with writing(stale):
                stale.unlink()
            touched.add(stale.parent)
    return touched


def recover(paths: EmbedPaths) -> bool:
    """Before anything else touches an output: complete a committed publication, and clear what a
    kill left behind (staged files, a half-made partial directory). True when a set was published.

    Only bitcli's own, unlocked partial directories are touched; anything else is left for
    `check_output` to refuse."""
    partial = paths.partial
    if partial is None:
        return False
    try:
        check_own_partial(paths)
    except UsageError:
        return False
    published = False
    if partial.is_dir():
        try:
            lock = take_lock(partial)
        except OSError:
            return False  # unwritable: the writer reports it, naming the output
        if lock is None:
            return False  # another run is on it
        try:
            published = roll_forward(partial)
            if not published and _empty(partial):
                remove_partial(partial)  # killed in the middle of removing it
        finally:
            lock.close()
    if not partial.is_dir():
        clear_staged(paths)
    discard_tmp(paths)
    return published


def _empty(partial: Path) -> bool:
    return all(entry.name in (LOCK, PUBLISH_TMP) for entry in os.scandir(partial))


def clear_staged(paths: EmbedPaths) -> None:
    """Remove staged files a killed run left (only while no partial run needs them)."""
    for path in paths.staged_files().values():
        if is_regular(paths.staged(path)):
            paths.staged(path).unlink()


def discard_tmp(paths: EmbedPaths) -> None:
    """Remove a partial directory a killed run was still assembling (`.OUT.npy.partial.tmp`)."""
    tmp = paths.partial_tmp
    if tmp is None or not tmp.is_dir() or tmp.is_symlink():
        return
    try:
        lock = take_lock(tmp)
    except OSError:
        return
    if lock is None:
        return  # being assembled right now
    try:
        remove_partial(tmp)
    finally:
        lock.close()


def publication(paths: EmbedPaths, partial: Path | None, staged: dict[str, Any]) -> tuple[list, list]:
    """(moves, removals): each staged file onto its output, then the array (`partial`'s data.npy,
    unless it was streamed), then the row norms (sealed with the array's identity as published);
    every other file of the set removed (a stale one would mislead)."""
    targets = paths.set_files()
    last = ("array", "norms")
    moves = [(staged[role], target) for role, target in targets.items() if role in staged and role not in last]
    if partial is not None:
        moves.append((partial / DATA, paths.out))
    if "norms" in staged:
        moves.append((staged["norms"], targets["norms"]))
    removals = [target for role, target in targets.items() if role not in staged and role != "array"]
    return moves, removals


class StagedSet:
    """The files of one finished run, staged beside their final names, then published as one set.

    `partial` holds the array (`data.npy`, written by the caller; None when it was streamed).
    `lines` and `file` stage a file of the set by role (`EmbedPaths.set_files`), `sidecar` the
    metadata sidecar's two files (row file and header, in that order); `record` stages
    the run record, which lists every staged file's size for a strict `--resume` (`files.py`);
    `publish` commits and renames. A new file of the set is one more `lines` / `file` call.
    """

    def __init__(self, paths: EmbedPaths, partial: Path | None) -> None:
        self.paths, self.partial = paths, partial
        self.staged: dict[str, Path] = {}
        self.sizes: dict[str, int] = {}
        self._committed = False

    def lines(self, role: str, lines: Iterable[str]) -> None:
        """Stage text lines as `role` (`util.encode_lines`: non-UTF-8 names survive)."""
        target = self.paths.set_files()[role]
        with writing(target):
            self.staged[role] = self.paths.staged(target)
            target.parent.mkdir(parents=True, exist_ok=True)
            self.sizes[role] = write_synced(self.staged[role], encode_lines(lines))

    def file(self, role: str, write: Callable[[IO[bytes]], None]) -> None:
        """Stage `role` through `write(fh)` (an unbuffered binary file, synced after it)."""
        target = self.paths.set_files()[role]
        with writing(target):
            self.staged[role] = self.paths.staged(target)
            self.sizes[role] = write_synced(self.staged[role], write)

    def sidecar(self, meta: EmbeddingMetadata, rows: Iterable[tuple[str, FileIdentity | None]]) -> None:
        """Stage the metadata sidecar (`metadata.py`): the row file (`rows`: each row's path and
        file identity, None when unknown), then the header, which names the row file's digest."""
        with writing(self.paths.sidecars.meta):
            staged = stage_metadata(self.paths.sidecars, meta, rows)
        for role, key in (("identities", "files"), ("metadata", "meta")):
            self.staged[role] = staged[key]
            self.sizes[role] = os.stat(staged[key]).st_size

    def array(self, size: int) -> None:
        """The array is complete and synced in `partial/data.npy`, `size` bytes: its row norms are
        computed from it and staged (`collection.norms`), a member of the set like the rest."""
        self.sizes["array"] = size
        target = self.paths.set_files()["norms"]
        with writing(target):
            self.staged["norms"] = self.paths.staged(target)
            self.sizes["norms"] = norms.stage(self.partial / DATA, self.staged["norms"])

    def record(self, state: dict[str, Any], *, rows: int, failed: int, **extra: Any) -> None:
        """The run record: what made the rows (`state`, compared by --resume), counts, file sizes."""
        targets = self.paths.set_files()

        def entry(role: str) -> dict[str, Any] | None:
            return None if role not in self.sizes else {"path": os.path.abspath(targets[role]), "size": self.sizes[role]}

        record = {**state, **extra, "rows": rows, "failed": failed,
                  "files": {role: entry(role) for role in targets if role != "record"}}
        with writing(self.paths.out):
            self.staged["record"] = self.paths.staged(targets["record"])
            write_synced(self.staged["record"], (json.dumps(record, indent=1, sort_keys=True) + "\n").encode("utf-8"))

    def publish(self) -> None:
        """Commit (after this the set is published even if the process dies), then rename."""
        seal = [self.staged["norms"], self.paths.out] if "norms" in self.staged else None
        try:
            commit_publication(self.partial, *publication(self.paths, self.partial, self.staged), seal)
        except BaseException:
            self.discard()
            raise
        self._committed = True
        roll_forward(self.partial)  # a failure here leaves the commit record: the next run completes it

    def publish_now(self) -> None:
        """`-o -`: the array reached the stream; rename the staged manifest and error list into place."""
        apply(*publication(self.paths, None, self.staged))

    @property
    def committed(self) -> bool:
        """Whether the commit record was written: the set is published, or will be by `recover`."""
        return self._committed or (self.partial is not None and os.path.lexists(self.partial / PUBLISH))

    def discard(self) -> None:
        """Remove the staged files (not the array: the partial directory is the caller's), unless
        the commit record names them (interrupted just after writing it)."""
        if self.committed:
            return
        for role, path in self.staged.items():
            if role != "array" and is_regular(path):
                path.unlink()


ANOTHER_RUN = "another bit embed run is writing it; wait for it to finish or stop it"
