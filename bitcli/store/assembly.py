"""An output assembled from parts made elsewhere: `bit combine` and `bit embed --engine ray`.

The parts (shard folders) are computed by other processes; the output is still a local run's
files, published the local run's way. `Assembly` opens the output like `EmbedWriter` does:
completes an interrupted publication (`recover`), refuses what `check_output` refuses (special
files, links, another run holding the output, an existing output without --overwrite), and
creates the same partial directory, `OUT.npy.partial/`, holding its lock until the end. A Ray
run holds it while its shards are computed, so a second run on the output is refused meanwhile.
The caller writes the array into `data.npy` (`data`) and stages the other files of the set on
`staged` (`publish.StagedSet`: the manifest, the error list, the run record, any file a later
version adds to the set), then `staged.publish()` publishes them as one set.

Its `state.json` says `"assembly": WHO` and its journal stays empty: the folder holds no work of
its own (the shard folders do). So the next `bit combine` or Ray run on the output discards one
that no process holds; `bit embed --resume` with the local engine is told which command
continues it; `--overwrite` removes it like any partial run.
"""

from __future__ import annotations

from pathlib import Path
from typing import IO

from bitcli.errors import UsageError
from bitcli.store.files import (
    DATA, STATE, is_regular, lock_holder, make_partial, read_json_record, remove_partial, take_lock,
)
from bitcli.store.journal import ASSEMBLY, RECORD_VERSION, assembled_by
from bitcli.store.paths import EmbedPaths, check_output, check_own_partial, writing
from bitcli.store.publish import StagedSet, clear_staged, recover

ANOTHER_RUN = "another bit embed run is writing it; wait for it to finish or stop it"


class Assembly:
    """The output's partial directory, held (locked) while an output is assembled from shards.

    `by` names the command ("bit combine"), for the message a local `--resume` gives. With
    `resume`, an unfinished local run in the way is refused as it is without it: only that
    run's engine can continue it.
    """

    def __init__(self, paths: EmbedPaths, *, by: str, resume: bool = False, overwrite: bool = False) -> None:
        if paths.out is None:
            raise UsageError("an assembled output is a file: give -o OUT.npy, not -o -")
        self.paths, self.by = paths, by
        recover(paths)
        discard_assembly(paths)  # a killed combine's or Ray run's: nothing in it is worth keeping
        partial = paths.partial
        if not overwrite and _local_run(partial):
            raise UsageError(
                f"{paths.out}: an interrupted local run left {partial}; continue it with bit embed --resume "
                "(--engine local), or pass --overwrite to discard it"
            )
        # Only the flags the assembling command has: bit combine has no --resume or --update.
        advice = "pass --overwrite to replace it" + ("" if by == "bit combine" else " (or --resume)")
        check_output(paths, resume=resume, overwrite=overwrite, exists=advice)
        if partial.is_dir():  # a local run's, with --overwrite
            self._remove_local(partial)
        clear_staged(paths)
        state = {"version": RECORD_VERSION, ASSEMBLY: by}
        with writing(paths.out):
            self._lock: IO[bytes] | None = make_partial(partial, paths.partial_tmp, state, b"")
        if self._lock is None:
            raise UsageError(f"{paths.out}: {ANOTHER_RUN}")
        self.staged = StagedSet(paths, partial)

    def _remove_local(self, partial: Path) -> None:
        lock = take_lock(partial)
        if lock is None:
            raise UsageError(f"{self.paths.out}: {ANOTHER_RUN}")
        try:
            remove_partial(partial)
        finally:
            lock.close()

    @property
    def data(self) -> Path:
        """Where the array is written (`data.npy` in the partial directory)."""
        return self.paths.partial / DATA

    def close(self) -> None:
        """Release the lock. Unless the set was published, remove the partial directory (it held
        no work) and anything staged; a killed process leaves both to the next run."""
        if self._lock is None:
            return
        try:
            if not self.staged.committed:
                self.staged.discard()
                remove_partial(self.paths.partial)
        finally:
            self._lock.close()
            self._lock = None

    def __enter__(self) -> "Assembly":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _local_run(partial: Path) -> bool:
    """Whether `partial` is an interrupted local run's (resumable, not held by a running one)."""
    if not partial.is_dir() or partial.is_symlink() or not is_regular(partial / STATE):
        return False
    return lock_holder(partial) is None and not assembled_by(read_json_record(partial / STATE))


def discard_assembly(paths: EmbedPaths) -> bool:
    """Remove an assembly's partial directory that no process holds (True when one was removed)."""
    partial = paths.partial
    if partial is None or not partial.is_dir() or partial.is_symlink():
        return False
    if not assembled_by(read_json_record(partial / STATE)):
        return False
    try:
        check_own_partial(paths)
        lock = take_lock(partial)
    except (UsageError, OSError):
        return False  # not bitcli's, or unwritable: check_output says so
    if lock is None:
        return False  # a run is assembling it now
    try:
        remove_partial(partial)
    finally:
        lock.close()
    return True
