"""Publishing a finished run as one set of files, and completing a publication a kill interrupted.

`finish()` stages every new file first (the array in the partial directory; the manifest, the
error list, the metadata sidecar `OUT.meta.json` + `OUT.files.jsonl` and the run record under
`.NAME.bitcli.tmp` beside their final names), then writes
`publish.json` into the partial directory: the commit point. It lists each rename (staged ->
final) and each stale file to remove (an old error list when the new run has no failures). Only
then are the renames made, and the partial directory removed, `publish.json` last.

A kill before the commit point leaves the old files untouched (and the run resumable: the
journal is complete); a kill after it leaves a record of what remains to be done, and `recover`
(run by every later `bit embed` on the same output, whatever its options, before anything else)
finishes it. So the files on disk are always one run's set, or become it at the next touch.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

from bitcli.errors import UsageError
from bitcli.store.files import (
    LOCK,
    OWN_PARTIAL_FILES,
    PUBLISH,
    PUBLISH_TMP,
    fsync_dir,
    is_regular,
    read_json_record,
    take_lock,
    write_json_atomic,
)
from bitcli.store.paths import EmbedPaths, check_replaceable, writing

PUBLISH_VERSION = 1


def commit_publication(partial: Path, moves: list[tuple[Path, Path]], removals: list[Path]) -> None:
    """Write the commit record: after this, the publication happens even if the process dies."""
    record = {
        "version": PUBLISH_VERSION,
        "moves": [[os.path.abspath(src), os.path.abspath(dst)] for src, dst in moves],
        "remove": [os.path.abspath(path) for path in removals],
    }
    with writing(moves[0][1] if moves else partial):
        write_json_atomic(partial / PUBLISH, record, partial / PUBLISH_TMP)


def roll_forward(partial: Path) -> bool:
    """Carry out the committed publication in `partial` (idempotent); False when there is none."""
    record = read_json_record(partial / PUBLISH)
    if record is None or record.get("version") != PUBLISH_VERSION:
        return False
    touched = set()
    for src, dst in record.get("moves") or []:
        src, dst = Path(src), Path(dst)
        if not is_regular(src):
            continue  # renamed before the kill
        check_replaceable(dst)  # never replace a FIFO, device or link that appeared meanwhile
        with writing(dst):
            os.replace(src, dst)
        touched.add(dst.parent)
    for stale in record.get("remove") or []:
        stale = Path(stale)
        if is_regular(stale):
            with writing(stale):
                stale.unlink()
            touched.add(stale.parent)
    for directory in touched:
        fsync_dir(directory)
    remove_partial(partial)
    return True


def remove_partial(partial: Path) -> None:
    """Remove bitcli's own partial directory: its files, the commit record last, then the folder."""
    names = sorted(OWN_PARTIAL_FILES - {PUBLISH}, key=lambda n: n == LOCK) + [PUBLISH]
    for name in names:
        with contextlib.suppress(FileNotFoundError):
            (partial / name).unlink()
    with contextlib.suppress(FileNotFoundError):
        partial.rmdir()
    fsync_dir(partial.parent)


def recover(paths: EmbedPaths) -> bool:
    """Before anything else touches an output: complete a committed publication, and clear what a
    kill left behind (staged files, a half-made partial directory). True when a set was published.

    Only bitcli's own, unlocked partial directories are touched; anything else is left for
    `check_output` to refuse."""
    from bitcli.store.paths import check_own_partial

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
    for path in paths.published:
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


def publish_now(paths: EmbedPaths, staged: dict[str, Path]) -> None:
    """`-o -`: the array reached the stream; rename the staged manifest and error list into place."""
    moves, removals = publication(paths, None, staged)
    for src, dst in moves:
        check_replaceable(dst)
        with writing(dst):
            os.replace(src, dst)
    for stale in removals:
        if is_regular(stale):
            with writing(stale):
                stale.unlink()


def publication(paths: EmbedPaths, partial: Path | None, staged: dict[str, Any]) -> tuple[list, list]:
    """(moves, removals) for `finish()`: each staged file onto its output (the sidecar's header
    after its row file), the array last; an old error list removed when this run has none."""
    sidecars = paths.sidecars
    roles = (("manifest", paths.manifest), ("errors", paths.errors), ("files", sidecars.files),
             ("meta", sidecars.meta), ("record", paths.record))
    moves = [(staged[role], target) for role, target in roles if role in staged]
    if partial is not None:
        moves.append((partial / "data.npy", paths.out))
    removals = [paths.errors] if "errors" not in staged else []
    return moves, removals
