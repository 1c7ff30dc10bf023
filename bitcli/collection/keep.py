"""`bit dedup --keep`: from duplicate groups, the files one would delete to keep one per group.

Nothing is deleted here. A member counts only while its file is still the one embedded (the
row's path resolved as recorded, its recorded size and mtime, and sha256 where the collection
has them): a file changed since is reported, never listed and never kept in place of another.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field

from bitcli.collection.dedup import DuplicateGroup
from bitcli.collection.index import EmbeddingIndex
from bitcli.errors import UsageError
from bitcli.store.metadata import FileIdentity, read_file_rows, still_embedded
from bitcli.util import open_regular

KEEP_POLICIES = ("first", "largest", "newest")


@dataclass
class Deletions:
    """What `--keep` would delete, and the members left out because their file is no longer
    the one embedded (changed since, or not identified when it was embedded)."""

    delete: list[str]
    changed: list[str]
    kept: list[str] = field(default_factory=list)  # the member kept in each group that lists any
    files: dict[str, str] = field(default_factory=dict)  # each listed path -> the file it names (resolved as recorded)


def paths_to_delete(index: EmbeddingIndex, groups: list[DuplicateGroup], keep: str) -> Deletions:
    """The files one would delete to keep one file per group; nothing is deleted here.

    first: the member earliest in the index; largest: the most pixels (then the most bytes);
    newest: the latest modification time; ties go to the earliest member. Each member's file is
    the row's path resolved as recorded, and it counts only while it is still the file that was
    embedded: its size and mtime (and sha256, where the collection recorded them) as in the row
    file. Members whose file is gone are skipped, members whose file changed are reported in
    `changed` (never listed for deletion, never kept in place of another), and a member that is
    the very file kept (the same path given twice, a hard or symbolic link) is never listed."""
    if keep not in KEEP_POLICIES:
        raise UsageError(f"--keep {keep}: choose one of {', '.join(KEEP_POLICIES)}")
    identities = _recorded_identities(index, groups)
    out: list[str] = []
    changed: list[str] = []
    kept_paths: list[str] = []
    seen: set[str] = set()
    for group in groups:
        present = _present(index, group, identities, changed)
        if len(present) < 2:
            continue
        kept = max(present, key=lambda m: (_rank(m, keep), -m[0]))
        kept_paths.append(kept[1])
        for member in present:
            if member is kept or os.path.samestat(member[2], kept[2]) or member[1] in seen:
                continue
            seen.add(member[1])
            out.append(member[1])
    return Deletions(out, list(dict.fromkeys(changed)), kept_paths, {p: index.locate(p) or p for p in out})


def _recorded_identities(index: EmbeddingIndex, groups: list[DuplicateGroup]) -> dict[int, FileIdentity | None] | None:
    """The recorded identity of each grouped row (None: an index without metadata, from elsewhere)."""
    if index.meta is None or index.meta_path is None:
        return None
    wanted = {row for group in groups for row in group.rows}
    try:
        rows = read_file_rows(index.meta_path, index.meta, only=wanted)
    except UsageError:
        if _republished(index):  # an update published since the index was opened: not damage
            raise UsageError(f"{index.array_path} was updated while dedup ran (a bit embed --update?); run it again") from None
        raise
    # a row's identity is its file's only while the manifest read (`--manifest`) names that file
    return {row: rows[row][1] if _same_name(index, rows[row][0], index.recorded[row]) else None for row in wanted}


def _republished(index: EmbeddingIndex) -> bool:
    """Whether the header on disk is no longer the one `index` was opened with."""
    from bitcli.store.metadata import read_metadata

    try:
        return read_metadata(index.meta_path).files_sha256 != index.meta.files_sha256
    except UsageError:
        return False


def _same_name(index: EmbeddingIndex, recorded: str, listed: str) -> bool:
    if recorded == listed:
        return True
    base = index.base_dir or ""
    return os.path.normpath(os.path.join(base, recorded)) == os.path.normpath(os.path.join(base, listed))


def _present(
    index: EmbeddingIndex, group: DuplicateGroup, identities: dict[int, FileIdentity | None] | None, changed: list[str]
) -> list[tuple[int, str, os.stat_result]]:
    """(row, path as printed, stat) for the members whose file still exists and is still
    the embedded one (`changed` collects the others that exist)."""
    present = []
    for row, path in zip(group.rows, group.paths):
        found = index.locate(path)
        if found is None:
            continue
        try:
            info = os.stat(found)
            if not stat.S_ISREG(info.st_mode):  # a FIFO or device now: never the embedded image
                changed.append(path)
                continue
            if identities is not None and not still_embedded(found, identities.get(row)):
                changed.append(path)
                continue
        except OSError:
            continue
        present.append((row, path, info))  # as every command prints it: it resolves from here
    return present


def _rank(member: tuple[int, str, os.stat_result], keep: str) -> tuple:
    row, path, info = member
    if keep == "newest":
        return (info.st_mtime_ns,)
    if keep == "largest":
        return (_pixels(path), info.st_size)
    return ()


def _pixels(path: str) -> int:
    """Width x height from the image header (0 when it cannot be read); no decoding."""
    try:
        from PIL import Image

        with open_regular(path) as fh, Image.open(fh) as image:  # a FIFO swapped in never blocks
            width, height = image.size
        return width * height
    except Exception:  # any unreadable header just ranks lowest
        return 0
