"""`bit embed --update`: bring an existing output up to date with its inputs (docs/collection.md,
"Updating"). `prepare_update` refuses other settings (`check_compatible`) and plans, input by
input in the current order: kept (same file, same size and mtime; with `--hash`, same sha256:
the row copied byte for byte), changed, new, moved (with `--hash`: a stored row's content under
a new path), retried (failed last time), and removed. `update_groups` yields result groups that
end where a local run's batches end, so an interrupted update resumes to the same bytes;
`UpdatePlan.digest` in the partial run's state lets only the same update resume.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import defaultdict, deque
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Sequence

from bitcli.errors import UsageError
from bitcli.store.metadata import (
    EmbeddingMetadata,
    FileIdentity,
    check_compatible,
    identify,
    read_file_rows,
    read_metadata,
)

if TYPE_CHECKING:
    from bitcli.collection.index import EmbeddingIndex
    from bitcli.results import EmbedResult
    from bitcli.store.paths import EmbedPaths

COPY_ROWS = 1024  # copied rows committed at a time (between embedded batches)


@dataclass(frozen=True)
class UpdateStep:
    """One current input: reuse row `source_row` of the old array, or embed it (None)."""

    path: str
    status: str  # "kept", "moved", "changed", "new" or "retried" (failed before)
    identity: FileIdentity | None  # its identity now (None when it cannot be read: embedding reports why)
    source_row: int | None = None
    refreshed: bool = False  # kept, but its recorded identity changes (a new mtime or a first hash)


@dataclass
class UpdatePlan:
    """What `--update` does, one step per current input in input order, the rows dropped, and
    the old output the kept rows are copied from (None: no output yet)."""

    steps: list[UpdateStep]
    removed: list[str]  # stored paths that no current input names (and no move claimed)
    old: "EmbeddingIndex | None" = None

    def count(self, status: str) -> int:
        return sum(1 for s in self.steps if s.status == status)

    def summary(self) -> str:
        """`+12 new, 3 changed, 4 moved, 2 removed, 1043 kept, 1 retried` (moved and retried only
        when any)."""
        parts = [f"+{self.count('new')} new", f"{self.count('changed')} changed"]
        parts += [f"{self.count('moved')} moved"] * bool(self.count("moved"))
        parts += [f"{len(self.removed)} removed", f"{self.count('kept')} kept"]
        parts += [f"{self.count('retried')} retried"] * bool(self.count("retried"))
        return ", ".join(parts)

    def retry(self, failed_before: set[str]) -> None:
        """Label "retried" the new inputs that the output lists as failed: embedded again (a
        failed input has no identity, so whether it changed is unknown), but not new."""
        self.steps = [replace(s, status="retried") if s.status == "new" and s.path in failed_before else s for s in self.steps]

    def up_to_date(self) -> bool:
        """Nothing to do: every row kept, in place, with the identity it had."""
        return (
            self.old is not None
            and not self.removed
            and len(self.steps) == self.old.rows
            and all(s.status == "kept" and s.source_row == i and not s.refreshed for i, s in enumerate(self.steps))
        )

    @property
    def to_embed(self) -> list[UpdateStep]:
        return [s for s in self.steps if s.source_row is None]

    def identity_of(self) -> Callable[[str], FileIdentity | None]:
        """Each input's identity as the plan saw it (recorded in the new sidecar)."""
        return {step.path: step.identity for step in self.steps}.get

    def digest(self) -> str:
        """What a resumed update must agree on: the plan, and the old array it copies from."""
        sha = hashlib.sha256()
        for step in self.steps:
            sha.update(f"{step.status}\0{step.source_row}\0".encode())
        if self.old is not None:
            info = self.old.stat()  # the array the plan's rows come from, even if renamed over since
            sha.update(f"{info.st_size}\0{info.st_mtime_ns}".encode())
        return sha.hexdigest()


def recorded_settings(paths: "EmbedPaths") -> EmbeddingMetadata | None:
    """What `--update` continues from: the output's header (None when there is no output yet,
    the first run of a command line that always says --update). An output without a readable
    header is refused here, before any model is loaded (UsageError, exit 2)."""
    out, meta = paths.out, paths.sidecars.meta
    if out is None or not os.path.lexists(out):
        return None
    if not os.path.lexists(meta):
        raise UsageError(
            f"{out} has no metadata ({meta.name}): it was made by an older bitcli or elsewhere; "
            "embed anew with --overwrite (without --update)"
        )
    with _advice_without_update():
        return read_metadata(meta)


def plan_update(
    stored: Sequence[tuple[str, FileIdentity | None]],
    current: Sequence[str],
    *,
    content_hash: bool = False,
    identify_fn: Callable[..., FileIdentity] = identify,
    base: str | None = None,
) -> UpdatePlan:
    """Diff the current input paths (in order) against the stored rows.

    Rows and inputs are matched by the file they name (`real_file`: stored paths from `base`,
    the directory the output was made in; inputs from the current one). Same file: kept when
    size and mtime are unchanged (with `content_hash`: when the stored sha256 equals the
    file's; a row stored without one is embedded again), else changed. A file given twice pairs
    with its stored rows in order. With `content_hash`, a new or changed file whose content
    equals a row no kept file claims reuses that row ("moved" for a new path).
    """
    by_path: dict[str, deque[int]] = defaultdict(deque)
    for row, (path, _) in enumerate(stored):
        by_path[real_file(path, base)].append(row)
    claimed: set[int] = set()  # rows reused as they are
    superseded: set[int] = set()  # rows of changed files (reusable by content, never "removed")
    drafts: list[UpdateStep] = []
    for path in current:
        identity = _try_identify(identify_fn, path, content_hash)
        rows = by_path.get(real_file(path, None))
        if not rows:
            drafts.append(UpdateStep(path, "new", identity))
            continue
        row = rows.popleft()
        old = stored[row][1]
        if identity is not None and old is not None and _unchanged(old, identity, content_hash):
            claimed.add(row)
            kept = identity if identity.sha256 else FileIdentity(identity.size, identity.mtime_ns, old.sha256)
            drafts.append(UpdateStep(path, "kept", kept, row, refreshed=kept != old))
        else:
            superseded.add(row)
            drafts.append(UpdateStep(path, "changed", identity))
    steps = _reuse_by_hash(drafts, stored, claimed) if content_hash else drafts
    removed = [path for row, (path, _) in enumerate(stored) if row not in claimed and row not in superseded]
    return UpdatePlan(steps=steps, removed=removed)


def real_file(path: str, base: str | None) -> str:
    """What identifies a row's file: its resolved real path, a relative path taken from `base`
    (the directory the output was made in; None: the current one). The spelling (relative,
    absolute, `./`, through a link) and the working directory do not matter."""
    if base and not os.path.isabs(path):
        path = os.path.join(base, path)
    return os.path.realpath(path)


def _try_identify(identify_fn: Callable[..., FileIdentity], path: str, content_hash: bool) -> FileIdentity | None:
    try:
        return identify_fn(path, content_hash=content_hash)
    except OSError:
        return None


def _unchanged(old: FileIdentity, new: FileIdentity, content_hash: bool) -> bool:
    """With content hashes, only an equal stored sha256 proves a row current: a row stored
    without one (`--hash` added later) is embedded again, so that no row ever carries a hash
    computed from content other than its own."""
    if content_hash:
        return old.sha256 is not None and old.sha256 == new.sha256
    return old.same_stat(new)


def _reuse_by_hash(drafts: list[UpdateStep], stored: Sequence[tuple[str, FileIdentity | None]], claimed: set[int]) -> list[UpdateStep]:
    """New or changed files whose content an unclaimed stored row has: reuse that row."""
    pool: dict[str, deque[int]] = defaultdict(deque)
    for row, (_, identity) in enumerate(stored):
        if row not in claimed and identity is not None and identity.sha256:
            pool[identity.sha256].append(row)
    steps = []
    for step in drafts:
        digest = step.identity.sha256 if step.identity is not None else None
        if step.source_row is None and digest and pool.get(digest):
            row = pool[digest].popleft()
            claimed.add(row)
            step = UpdateStep(step.path, "moved" if step.status == "new" else "changed", step.identity, row)
        steps.append(step)
    return steps


def prepare_update(paths: "EmbedPaths", current: EmbeddingMetadata, inputs: Sequence[str], *, content_hash: bool) -> UpdatePlan:
    """Plan `--update` of `paths.out` for `inputs`; UsageError (exit 2) when it cannot be done."""
    out = paths.out
    if out is None:
        raise UsageError("--update needs an output file, not -o -")
    if not out.exists():  # the first run of a command line that always says --update
        return plan_update([], inputs, content_hash=content_hash)
    with _advice_without_update():
        old, stored = _read_old(paths, current)
    plan = plan_update(stored, inputs, content_hash=content_hash, base=old.base_dir)
    plan.retry(_failed_before(paths))
    plan.old = old
    return plan


def _read_old(paths: "EmbedPaths", current: EmbeddingMetadata) -> tuple["EmbeddingIndex", list[tuple[str, FileIdentity | None]]]:
    """The output as it is (refused when incompatible or inconsistent) and its stored identities."""
    from bitcli.collection.index import open_index

    out, sidecars = paths.out, paths.sidecars
    stored_meta = recorded_settings(paths)
    if stored_meta is None:
        raise UsageError(f"{out}: vanished while --update planned; run it again")
    check_compatible(stored_meta, current, str(out))
    old = open_index(out, manifest=paths.manifest, allow_empty=True)
    stored = read_file_rows(sidecars.meta, stored_meta)
    if [path for path, _ in stored] != old.recorded:
        raise UsageError(f"{sidecars.files} and {paths.manifest} list different files; embed anew with --overwrite")
    return old, stored


@contextmanager
def _advice_without_update() -> Iterator[None]:
    """The readers' advice, "embed anew with --overwrite", is refused the same way when --update
    stays on the command line (`--update --overwrite` only restarts an interrupted update): say so."""
    try:
        yield
    except UsageError as exc:
        text = str(exc)
        if text.endswith(("anew with --overwrite", "again with --overwrite")):
            raise UsageError(f"{text} (without --update)") from exc
        raise


def _failed_before(paths: "EmbedPaths") -> set[str]:
    """The inputs the output's error list names (none when it has no error list)."""
    from bitcli.store.paths import read_errors

    try:
        return {path for path, _ in read_errors(paths.errors)}
    except OSError as exc:
        raise UsageError(f"{paths.errors}: cannot read ({exc.strerror or exc})") from exc


def write_plan(path: "os.PathLike[str]", plan: UpdatePlan) -> None:
    """The plan as `--update --shard` jobs leave it for `bit combine` (`update.jsonl` in the shard
    directory, atomically): a header (its digest, the removed paths), then one step per line."""
    from bitcli.store.files import encode_identity
    from bitcli.util import encode_lines, write_atomic

    header = {"digest": plan.digest(), "removed": plan.removed}
    steps = ([s.path, s.status, s.source_row, encode_identity(s.identity), s.refreshed] for s in plan.steps)
    lines = (json.dumps(record, ensure_ascii=True) for record in (header, *steps))  # ASCII: any file name survives
    write_atomic(path, encode_lines(lines))


def read_plan(path: "os.PathLike[str]", old: "EmbeddingIndex | None") -> UpdatePlan:
    """The plan `write_plan` left, for the output `old` as it is now; UsageError (exit 2) when the
    file is unreadable or the output changed since the jobs planned (the digest differs)."""
    from bitcli.store.files import decode_identity

    again = "run the --update --shard jobs again with --overwrite"
    try:
        with open(path, "rb") as fh:
            header = json.loads(fh.readline())  # then [path, status, source_row, identity, refreshed] per line
            steps = [UpdateStep(path, status, decode_identity(identity), row, refreshed)
                     for path, status, row, identity, refreshed in map(json.loads, fh)]
        plan = UpdatePlan(steps=steps, removed=[str(p) for p in header["removed"]], old=old)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"{path}: cannot read the update's plan ({exc}); {again}") from None
    if plan.digest() != header.get("digest"):
        raise UsageError(f"{path}: the output changed since the jobs planned the update; {again}")
    return plan


def update_groups(
    steps: Sequence[UpdateStep], old: "EmbeddingIndex | None", embed_groups: Callable[[list[str]], Iterable[list["EmbedResult"]]]
) -> Iterator[list["EmbedResult"]]:
    """Result groups in step order: copied rows from `old`, embedded rows from `embed_groups`
    (called once, lazily, with the paths to embed). A group closes when an embedded batch is
    complete, or after COPY_ROWS copied rows while no batch is open."""
    from bitcli.results import EmbedResult

    batches = iter(embed_groups([s.path for s in steps if s.source_row is None]))
    group: list[Any] = []  # EmbedResult, or (path, source row) until the copies are read
    batch: list[Any] = []  # what is left of the embedded batch being placed
    for step in steps:
        if step.source_row is not None:
            group.append((step.path, step.source_row))
        else:
            if not batch:
                batch = list(next(batches))
            group.append(batch.pop(0))
        if not batch and (step.source_row is None or len(group) >= COPY_ROWS):
            yield _read_copies(group, old, EmbedResult)
            group = []
    if group:
        yield _read_copies(group, old, EmbedResult)


def _read_copies(group: list[Any], old: "EmbeddingIndex | None", result: Any) -> list[Any]:
    """Replace (path, row) entries by results holding the old rows (float32: exact for float16)."""
    copies = [i for i, entry in enumerate(group) if isinstance(entry, tuple)]
    if copies:
        rows = old.take([group[i][1] for i in copies])
        for n, i in enumerate(copies):
            group[i] = result(path=group[i][0], vector=rows[n])
    return group
