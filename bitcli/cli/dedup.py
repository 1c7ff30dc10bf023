"""`bit dedup`: groups of near-duplicate images (`collection.dedup`), or with `--keep` the files one
would delete, printed or set aside with `--link DIR` / `--move DIR` (`collection.keep`)."""

from __future__ import annotations

import os
import sys
from enum import Enum
from pathlib import Path
from typing import Any, Optional

from bitcli.cli.common import EXIT_OK, EXIT_SOME_FAILED, ClassifyFormat, CsvRawOpt, Ui, epilog, option, require_stdout, takes
from bitcli.cli.search import HtmlOpt, IndexArg, ManifestOpt, open_collection
from bitcli.collection import DEFAULT_THRESHOLD
from bitcli.errors import UsageError
from bitcli.util import npy_name

EPILOG = epilog(
    "bit dedup photos.npy  # groups at the default threshold",
    "bit dedup photos.npy --threshold 0.95 --format csv > groups.csv",
    "bit dedup photos.npy --html groups.html  # look before deleting anything",
    "bit dedup photos.npy --keep largest -0 | xargs -0 rm --  # keep the largest of each group",
    "bit dedup photos.npy --keep largest --move dups/  # the others set aside in dups/",
    note=(
        f"Default threshold {DEFAULT_THRESHOLD} (docs/collection.md says why and how to tune it). --keep "
        "prints the files one would delete; --link/--move DIR set them aside in DIR (a taken name gets "
        "a -2, -3... suffix); bit never deletes or overwrites anything itself."
    ),
)


class Keep(str, Enum):
    first = "first"
    largest = "largest"
    newest = "newest"


def set_aside_option(name: str, what: str, never: str) -> Any:
    """--link DIR or --move DIR: where the files --keep would not keep are set aside."""
    help = f"With --keep: instead of printing the files one would delete, {what} (created if missing; {never}a taken name gets a -2, -3... suffix)."
    return option(Optional[Path], name, metavar="DIR", help=help)


@takes()
def dedup(
    index: IndexArg,
    threshold: option(
        float, "--threshold", "-t", metavar="T", help="Cosine similarity (-1 to 1) at or above which two images are near-duplicates."
    ) = DEFAULT_THRESHOLD,
    format: option(Optional[ClassifyFormat], "--format", "-f", help="auto: table on a terminal, jsonl otherwise.", show_default="auto") = None,
    keep: option(
        Optional[Keep], "--keep", help="Print the files to delete so that one per group is left: the first in the index, the largest "
        "(most pixels, then bytes) or the newest (modification time).",
    ) = None,
    null: option(bool, "--null", "-0", help="With --keep: end each path with NUL instead of a newline.") = False,
    link: set_aside_option("--link", "put a symbolic link to each in DIR", "") = None,
    move: set_aside_option("--move", "move them into DIR", "never overwriting: ") = None,
    html: HtmlOpt = None,
    manifest: ManifestOpt = None,
    csv_raw: CsvRawOpt = False,
    ui: Ui = Ui(),
) -> int:
    """Groups of near-duplicate images in INDEX, or with --keep the files one would delete."""
    from bitcli import output
    from bitcli.collection import check_threshold, find_groups, paths_to_delete
    from bitcli.output.info import render_groups

    check_threshold(threshold)
    if null and keep is None:
        raise UsageError("-0 ends the paths --keep prints; add --keep first|largest|newest")
    if keep is not None and format is not None:
        raise UsageError("--keep prints paths, one per line; --format applies to the groups (leave out --keep)")
    target = check_set_aside(keep, link, move, null)
    if target is None:
        require_stdout("the groups" if keep is None else "the paths")
    collection = open_collection(index, manifest, html)
    with ui.progress(collection.rows, "comparing") as bar:
        groups = find_groups(collection, threshold, progress=bar.advance)
    members = sum(len(g.paths) for g in groups)
    noun = "group" if len(groups) == 1 else "groups"
    ui.info(f"{len(groups)} {noun} of near-duplicates ({members} of {collection.rows} images) at threshold {threshold}")
    kept: list[str] = []
    if keep is not None:
        deletions = paths_to_delete(collection, groups, keep.value)
        kept = deletions.kept
        for path in deletions.changed:
            ui.warn(f"{path}: changed since it was embedded, not listed; bring the index up to date (bit embed INPUTS -o {npy_name(index)} --update) and run dedup again")
    else:
        render_groups(groups, output.resolve_format((format or ClassifyFormat.auto).value, sys.stdout), sys.stdout, csv_raw=csv_raw)
    if html is not None:  # before --move takes the files away: the page shows them
        from bitcli import __version__
        from bitcli.collection.html import dedup_page, write_page

        about = f"{len(groups)} groups among {collection.rows} images, cosine similarity >= {threshold}"
        title = f"bit dedup {collection.array_path.name}"
        write_page(html, dedup_page(groups, collection.locate, title=title, about=about, version=__version__, kept=kept))
    if keep is None:
        return EXIT_OK
    if target is not None:
        return EXIT_SOME_FAILED if set_aside(ui, deletions, *target) else EXIT_OK
    end = b"\0" if null else b"\n"  # non-UTF-8 names as their original bytes
    sys.stdout.buffer.write(b"".join(os.fsencode(path) + end for path in deletions.delete))
    sys.stdout.buffer.flush()
    return EXIT_OK


def check_set_aside(keep: Any, link: Path | None, move: Path | None, null: bool) -> tuple[Path, str] | None:
    """(DIR, "link" | "move") for --link/--move, checked before any work; None without them."""
    from bitcli.collection.keep import check_directory

    if link is None and move is None:
        return None
    if link is not None and move is not None:
        raise UsageError("--link and --move: choose one")
    option, directory = ("--link", link) if link is not None else ("--move", move)
    if keep is None:
        raise UsageError(f"{option} sets aside the files --keep would not keep; add --keep first|largest|newest")
    if null:
        raise UsageError(f"-0 ends the paths --keep prints; with {option} nothing is printed (leave out -0)")
    return check_directory(directory, option), option[2:]


def set_aside(ui: Ui, deletions: Any, directory: Path, mode: str) -> int:
    """Link or move the files --keep would not keep into `directory`, and say so; the number that failed."""
    from bitcli.collection.keep import relocate

    done = relocate(deletions.delete, deletions.files, directory, mode)
    verb = "linked" if mode == "link" else "moved"
    for path, reason in done.failed:
        ui.error(f"{path}: not {verb}: {reason}")
    total = len(deletions.delete)
    noun = "duplicate" if total == 1 else "duplicates"
    summary = f"{verb} {len(done.done)} of {total} {noun} into {directory}" if done.failed else f"{verb} {total} {noun} into {directory}"
    summary += f" ({len(deletions.kept)} kept, one per group)"
    if done.failed:
        ui.error(f"{summary}; {len(done.failed)} could not be {verb} (see above)")
    else:
        ui.info(summary)
    return len(done.failed)
