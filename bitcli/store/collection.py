"""`Collection`: an embedding on disk (OUT.npy and the files published with it), the one object
every producer embeds through.

A local `bit embed` (new, `--resume`, `--update`), a `--shard` job and a Ray worker all make the
same two calls: `Collection.plan` (what is left to do, known before anything is embedded) and
`Run.write` (batches embedded and committed one by one, then the set published).
"""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, IO, Any, Callable, Iterable, Iterator

import numpy as np

from bitcli.errors import InputError, UsageError
from bitcli.store.files import STATE, read_json_record, read_lines
from bitcli.store.metadata import EmbeddingMetadata, FileIdentity, identify_all, read_file_rows, read_metadata
from bitcli.store.paths import EmbedPaths, read_errors, write_errors
from bitcli.store.settings import EmbedSettings
from bitcli.store.update import COPY_ROWS, UpdatePlan, prepare_update, recorded_settings, update_groups
from bitcli.store.writer import EmbedSummary, EmbedWriter

if TYPE_CHECKING:
    from bitcli.results import EmbedResult

Groups = Callable[[list[Any]], Iterable[list["EmbedResult"]]]  # items -> result groups, one per batch


class Collection:
    """The embedding at `paths` (`EmbedPaths`: the array, or `-o -`'s stream, and its set)."""

    def __init__(self, paths: EmbedPaths) -> None:
        self.paths = paths

    def settings(self, *, update: bool, resume: bool) -> EmbedSettings | None:
        """The settings a run continues: an interrupted run's (`--resume`, `--update --resume`: its
        `state.json`), else the output's header (`--update`, `--resume` of a finished output), else
        for `--update` with no output yet an interrupted first run's (`--overwrite` discards its
        rows, not the settings not given); None when there is nothing to continue. Read before any
        model loads."""
        paths = self.paths
        state = read_json_record(paths.partial / STATE) if (resume or update) and paths.partial is not None else None
        interrupted = EmbedSettings.from_json(state["settings"]) if state and isinstance(state.get("settings"), dict) else None
        if resume and interrupted is not None:
            return interrupted
        if update:
            recorded = recorded_settings(paths)
            return interrupted if recorded is None else recorded.settings
        if resume and paths.out is not None and paths.sidecars.meta.is_file():
            try:
                return read_metadata(paths.sidecars.meta).settings
            except UsageError:
                return None  # the resume itself says what is wrong
        return None

    def plan(
        self,
        items: list[Any],
        embed_groups: Groups,
        *,
        dim: int,
        fingerprint: dict[str, Any],
        dtype: str = "float32",
        content_hash: bool = False,
        update: bool = False,
        resume: bool = False,
        overwrite: bool = False,
        extra: dict[str, Any] | None = None,
        planned: UpdatePlan | None = None,
        made: dict[str, Any] | None = None,
        cwd: str | None = None,
    ) -> "Run":
        """Open a run that embeds `items` (anything with `.path`; an `InputError` is recorded as a
        failure) with `embed_groups`, and say what is left: `Run.up_to_date` (an `--update` with
        nothing to change: nothing was opened), `Run.already_complete` (`--resume` of a finished
        output), `Run.todo` (the items still to do; `Run.to_embed` of them are embedded, not
        copied). `extra`: more of what made the rows, recorded and compared like the rest (a
        shard's split and index). `planned`: the `--update` plan already made (by `--update
        --shard` jobs, for `bit combine`); `made`, `cwd`: as `EmbedWriter` takes them. A bad
        output is refused here (UsageError, exit 2)."""
        steps, groups, known, summary, digest = items, embed_groups, None, None, None
        if update:
            plan = planned or prepare_update(self.paths, EmbeddingMetadata.from_fingerprint(fingerprint, rows=0, feature_dim=dim),
                                             [item.path for item in items], content_hash=content_hash)
            if plan.up_to_date() and not self.paths.partial.exists():
                return Run(None, [], groups, summary=plan.summary())
            steps, known, summary, digest = plan.steps, plan.identity_of(), plan.summary(), plan.digest()
            groups = lambda todo: update_groups(todo, plan.old, embed_groups)  # noqa: E731
        with write_errors(self.paths, UsageError):  # cannot even start: the output is unusable
            writer = EmbedWriter(
                self.paths, dim=dim, dtype=dtype, fingerprint=fingerprint, inputs=[item.path for item in steps],
                resume=resume and (not update or self.paths.partial.exists()), overwrite=overwrite,
                update_plan=digest, extra=extra, made=made, cwd=cwd,
            )
        try:
            remaining = writer.done  # what an interrupted run finished: each occurrence once
            todo = [] if writer.already_complete else [item for item in steps if not counted_off(remaining, item.path)]
        except BaseException:
            writer.close()
            raise
        return Run(writer, todo, groups, known, summary, content_hash)


@dataclass
class Run:
    """A planned run on a collection (`Collection.plan`); `write` does it."""

    writer: EmbedWriter | None  # None: up to date, nothing opened
    todo: list[Any]
    groups: Groups
    identity: Callable[[str], FileIdentity | None] | None = None  # --update: the plan's; else taken by `write`
    summary: str | None = None  # --update: `+12 new, 3 changed, 2 removed, 1043 kept`
    content_hash: bool = False  # identities with each file's sha256

    @property
    def up_to_date(self) -> bool:
        return self.writer is None

    @property
    def already_complete(self) -> bool:
        return self.writer is not None and self.writer.already_complete

    @property
    def embeds(self) -> list[bool]:
        """For each item of `todo`, in order, whether it is embedded (not copied by `--update`)."""
        return [getattr(item, "source_row", None) is None for item in self.todo]

    @property
    def to_embed(self) -> int:
        return sum(self.embeds)

    def write(self, on_group: Callable[[list["EmbedResult"]], None] | None = None, stream: IO[bytes] | None = None) -> EmbedSummary:
        """Embed and commit `todo` batch by batch (`on_group` sees each group after its commit),
        then publish the set (or, `-o -`, stream the array to `stream`). Interrupted, the partial
        run stays for `--resume` and its lock goes."""
        try:
            identity = self.identity
            if identity is None and not self.already_complete:  # before any file is read: one changed meanwhile is seen as changed
                paths = [item.path for item in self.todo if not isinstance(item, InputError)]
                identity = identify_all(paths, content_hash=self.content_hash).get
            for group in [] if self.already_complete else self.groups(self.todo):
                # One commit per group (a batch: its rows and failures, in input order), whole or
                # not at all: what makes `--resume` byte-identical.
                ok = [r for r in group if r.ok]
                rows = np.stack([r.vector for r in ok]) if ok else None
                errors = [(r.path, str(r.error)) for r in group if not r.ok]
                self.writer.commit([r.path for r in ok], rows, errors, [identity(r.path) for r in ok])
                if on_group is not None:
                    on_group(group)
            return self.writer.finish(stream)
        finally:
            self.close()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def copy_parts(writer: EmbedWriter, parts: Iterable[EmbedPaths]) -> None:
    """Commit the rows (with their recorded file identities) and then the failures of each finished
    collection of `parts`, in order, as `writer`'s own: `bit combine` and `--engine ray` concatenating
    shards. Rows are read and committed COPY_ROWS at a time; what `writer` already holds (a resumed
    copy, or a local run of the same inputs and settings: the same rows) is skipped, as a local
    `--resume` skips it. A part that cannot be read is a UsageError naming it (exit 2)."""
    remaining = writer.done
    for part in parts:
        try:
            rows = read_file_rows(part.sidecars.meta, read_metadata(part.sidecars.meta))
            failed = read_errors(part.errors)
            array = np.load(part.out, mmap_mode="r") if rows else None
        except (OSError, ValueError) as exc:
            raise UsageError(f"{part.out}: cannot read it ({exc}); run it again") from None
        for start in range(0, len(rows), COPY_ROWS):
            todo = [i for i in range(start, min(start + COPY_ROWS, len(rows))) if not counted_off(remaining, rows[i][0])]
            if todo:
                writer.commit([rows[i][0] for i in todo], np.asarray(array[todo]), [], [rows[i][1] for i in todo])
        writer.commit([], None, [(path, reason) for path, reason in failed if not counted_off(remaining, path)])


def counted_off(counts: "Counter[str]", key: str) -> bool:
    """Whether `key` is still counted in `counts` (one of the occurrences already done), counting it off."""
    if counts[key] > 0:
        counts[key] -= 1
        return True
    return False


def stored_results(part: EmbedPaths, entries: Iterable[str]) -> Iterator["EmbedResult"]:
    """The finished collection `part`'s rows and failures as results, in the order of `entries`,
    the inputs it was made from (a row where its manifest names the entry, else its next failure):
    rows embedded elsewhere (a shard, a Ray run) handed to a run here. Rows are read one by one."""
    from bitcli.results import EmbedResult

    manifest = read_lines(part.manifest)
    failures = iter([reason for _, reason in read_errors(part.errors)])
    array = np.load(part.out, mmap_mode="r") if manifest else None
    row = 0
    for path in entries:
        if row < len(manifest) and manifest[row] == path:
            yield EmbedResult(path=path, vector=np.asarray(array[row], dtype=np.float32))
            row += 1
        else:
            yield EmbedResult(path=path, error=next(failures, "not embedded"))


def in_batches(results: Iterable["EmbedResult"], size: int) -> Iterator[list["EmbedResult"]]:
    """`results` as groups of `size` (the last one shorter): a run's batches."""
    results = iter(results)
    return iter(lambda: list(itertools.islice(results, size)), [])
