"""Combining shards: concatenate collections into exactly the files a local `bit embed` writes.

The shards are checked first (each of the split once, all of one input list, split and settings:
`plan`), then committed shard by shard through the store's writer, as a local run commits its
batches, and published as one set: byte-identical to a local run, resumable after a kill, with
the local run's lock and refusals. The shards are left as they are.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Sequence

from bitcli.distributed.shards import (
    UPDATE_PLAN, DuplicateShardError, MissingShardError, ShardInfo, ShardMismatchError, Split,
    check_alike, read_shard, shard_outputs,
)
from bitcli.errors import UsageError
from bitcli.store.collection import Collection, copy_parts, counted_off, in_batches, stored_results
from bitcli.store.files import RECORD_MAX_BYTES, STATE, read_json_record
from bitcli.store.metadata import read_metadata
from bitcli.store.paths import EmbedPaths, check_output
from bitcli.store.publish import recover
from bitcli.store.writer import EmbedSummary, EmbedWriter
from bitcli.util import name_some, read_capped

if TYPE_CHECKING:
    from bitcli.results import EmbedResult

OnFailure = Callable[[str, str], None]  # (path, reason) of a failed input, in input order


def find_shards(sources: Iterable[Path]) -> list[ShardInfo]:
    """Every shard in `sources`: shard directories, or shards' arrays themselves."""
    found: list[ShardInfo] = []
    seen: set[str] = set()
    for source in sources:
        source = Path(source)
        if source.is_file():
            shards = [EmbedPaths.for_output(source)]
        elif source.is_dir():
            shards = list(shard_outputs(source).values())
        else:
            raise UsageError(f"{source}: not a shard directory (no such directory)")
        for paths in shards:
            key = os.path.realpath(paths.out)
            if key not in seen:  # the same shard named twice is one shard, not a duplicate
                seen.add(key)
                found.append(read_shard(paths))
    return found


def plan(shards: Sequence[ShardInfo], sources: Sequence[Path], *, split: Split | None = None) -> list[ShardInfo]:
    """The shards in order, once each, all of one run and split; else a ShardError (exit 2)."""
    if not shards:
        where = ", ".join(str(s) for s in sources[:3]) + (" ..." if len(sources) > 3 else "")
        raise MissingShardError(f"no shard outputs in {where}; run the shards first (bit embed ... --shard I/N)")
    ordered = sorted(shards, key=lambda s: (s.index, str(s.out)))
    first = ordered[0]
    reference_split = split or first.split
    for shard in ordered:
        check_alike(shard, reference_split, first.settings(), other=str(first.out), names=(f"in {shard.out.name}", f"in {first.out.name}"),
                    other_run="{shard} and {other} are of different runs ({difference}); combine the shards of one run",
                    other_settings="{shard} was made with other settings than {other} ({difference}); rerun it with the same model and options")
    by_index: dict[int, ShardInfo] = {}
    for shard in ordered:
        if shard.index in by_index:
            raise DuplicateShardError(f"shard {shard.index} is both {by_index[shard.index].out} and {shard.out}; keep one of them")
        by_index[shard.index] = shard
    missing = [i for i in range(reference_split.shards) if i not in by_index]
    if missing:
        raise MissingShardError(
            f"{len(missing)} of {reference_split.shards} shards have no output yet "
            f"(shard{'s' if len(missing) > 1 else ''} {name_some(missing)}); "
            "run them (bit embed ... --shard I/N) and combine again"
        )
    return [by_index[i] for i in range(reference_split.shards)]


def combine(
    sources: Sequence[Path],
    paths: EmbedPaths,
    *,
    overwrite: bool = False,
    split: Split | None = None,
    on_failure: OnFailure | None = None,
    recovered: bool = False,
) -> EmbedSummary:
    """Check the shards in `sources` and publish their concatenation as `paths`.

    `split`: the split the shards must have; None takes the first shard's. `on_failure` is
    called for every failed input, in input order, once the files are published. An interrupted
    combine (or local run) of the same inputs and settings is continued, unless `overwrite`.
    A publication a kill left half-renamed is completed first (`recovered`: the caller did it);
    when it was a combine of these very shards, that is this combine: its summary is returned.
    """
    if paths.out is None:
        raise UsageError("combining shards writes a file: give -o OUT.npy, not -o -")
    if (recover(paths) or recovered) and not overwrite and (done := completed(paths, sources, split)) is not None:
        return done
    resume = os.path.isdir(paths.partial) and not overwrite  # False for a name too long: check_output says so
    plans = [p for p in (Path(s) / UPDATE_PLAN if Path(s).is_dir() else Path(s).parent / UPDATE_PLAN for s in sources) if p.is_file()]
    if plans:
        return combine_update(plans[0], sources, paths, resume=resume, overwrite=overwrite, split=split, on_failure=on_failure)
    check_output(paths, resume=resume, overwrite=overwrite, exists="pass --overwrite to replace it")  # before the shards
    check_continuable(paths, resume, None)
    found = find_shards(sources)
    if not found:
        plan(found, list(sources))  # says there is none
    if any(shard.update for shard in found):  # only what changed: published alone, they would replace OUT's other rows
        shard = next(shard for shard in found if shard.update)
        raise ShardMismatchError(f"{shard.out}: a shard of --update jobs (only what changed), but their plan ({UPDATE_PLAN}) "
                                 "is not beside it; run the jobs again with --overwrite")
    first = min(found, key=lambda s: s.index)  # checked against the others by `plan`, after the output is held
    meta = first.paths.sidecars.meta
    made = {**first.record, "inputs": first.split.inputs}
    writer = EmbedWriter(paths, dim=first.dim, dtype=first.dtype, resume=resume, overwrite=overwrite, made=made,
                         cwd=read_metadata(meta).base_dir(meta))  # relative paths: where the jobs ran
    with held(writer):
        shards = plan(found, list(sources), split=split)
        check_outside(paths, shards)
        writer.made_by({"combined": {"shards": shards_digest(shards)}})  # recognised by `completed`
        return concatenate(writer, shards, on_failure)


def shards_digest(shards: Sequence[ShardInfo]) -> str:
    """What the run record of a combine keeps of its shards (`combined`): their run records' digest."""
    sha = hashlib.sha256()
    for shard in shards:
        sha.update(hashlib.sha256(read_capped(shard.paths.record, RECORD_MAX_BYTES)).digest())
    return sha.hexdigest()


def completed(paths: EmbedPaths, sources: Sequence[Path], split: Split | None) -> EmbedSummary | None:
    """The summary of the combine of these shards that the output's run record says was published
    (just completed by `recover`); None when the output was not made by a combine. One of other
    shards is refused (exit 2): the user asked for these."""
    record = read_json_record(paths.record) if paths.out.exists() else None
    combined = record.get("combined") if record is not None else None
    if not isinstance(combined, dict):
        return None
    if shards_digest(plan(find_shards(sources), list(sources), split=split)) != combined.get("shards"):
        raise UsageError(f"{paths.out}: the publication just completed combined other shards than these; "
                         "pass --overwrite to replace it with these")
    errors = paths.errors if paths.errors is not None and paths.errors.is_file() else None
    return EmbedSummary(rows=int(record["rows"]), dim=int(record["dim"]), dtype=str(record["dtype"]),
                        failed=int(record["failed"]), out=paths.out, manifest=paths.manifest, errors_file=errors,
                        update=combined.get("update"))


def check_continuable(paths: EmbedPaths, resume: bool, update: str | None) -> None:
    """Refuse (exit 2) a partial run of the output that this combine cannot continue: another
    update's (`update`: this combine's plan digest, None for plain shards), or a plain run's under
    an update, in words of `bit combine`'s flags (the writer would advise `bit embed`'s)."""
    state = read_json_record(paths.partial / STATE) if resume else None
    if state is not None and state.get("update") != update:
        raise UsageError(f"{paths.partial}: another run's interrupted work on the output, which this combine cannot continue; "
                         "pass --overwrite to discard it (or finish it with the command that started it)")


def check_outside(paths: EmbedPaths, shards: Sequence[ShardInfo]) -> None:
    """Refuse (exit 2) an output that is a file of a shard being combined: publishing it would
    replace that shard (a job's work) with the whole set."""
    taken = {os.path.realpath(p): s.out for s in shards for p in (*s.paths.set_files().values(), s.paths.partial)}
    for target in paths.set_files().values():
        shard = taken.get(os.path.realpath(target))
        if shard is not None:
            raise UsageError(f"{target}: a file of the shard {shard}, which this combine reads; write the combined files elsewhere")


def combine_update(
    plan_file: Path, sources: Sequence[Path], paths: EmbedPaths, *, resume: bool, overwrite: bool, split: Split | None,
    on_failure: OnFailure | None,
) -> EmbedSummary:
    """`--update --shard` jobs' shards: the update they planned (`plan_file`) carried out on the
    output, as a local `--update` does (`store.Collection`): kept rows copied from the output, the
    embedded ones taken from the shards, in the plan's order; `summary.update` says what changed.
    Refused when the output changed since the jobs planned, or the shards were cut from another plan."""
    from bitcli.collection.index import open_index
    from bitcli.store.files import inputs_digest
    from bitcli.store.update import read_plan

    check_output(paths, resume=resume, overwrite=overwrite, update=True)
    old = open_index(paths.out, manifest=paths.manifest, allow_empty=True) if paths.out.exists() else None
    planned = read_plan(plan_file, old)
    check_continuable(paths, resume, planned.digest())
    shards = plan(find_shards(sources), list(sources), split=split)
    check_outside(paths, shards)
    to_embed = [step.path for step in planned.to_embed]
    if shards[0].split.inputs != inputs_digest(to_embed) or any(s.update != planned.digest() for s in shards):
        raise ShardMismatchError(f"{plan_file}: the shards were cut from another update's plan; run every job again with --overwrite")
    first, failed = shards[0], []

    def embedded(todo: list[str]) -> Iterator[list[EmbedResult]]:
        results = (r for s in shards for r in stored_results(s.paths, to_embed[slice(*s.split.bounds(s.index))]))
        done = Counter(to_embed) - Counter(todo)  # an interrupted combine's: committed already
        return in_batches((r for r in results if not counted_off(done, r.path)), first.split.batch_size)

    meta = first.paths.sidecars.meta
    run = Collection(paths).plan(planned.steps, embedded, dim=first.dim, fingerprint={}, dtype=first.dtype, update=True,
                                 resume=resume, overwrite=overwrite, planned=planned, made=dict(first.record),
                                 cwd=read_metadata(meta).base_dir(meta))
    if run.up_to_date:
        return EmbedSummary(rows=0, dim=first.dim, dtype=first.dtype, failed=0, out=paths.out, already_complete=True,
                            update="up to date")
    run.writer.made_by({"combined": {"shards": shards_digest(shards), "update": run.summary}})  # recognised by `completed`
    summary = run.write(lambda group: failed.extend((r.path, str(r.error)) for r in group if not r.ok))
    summary.update = run.summary
    for path, reason in failed if on_failure else ():
        on_failure(path, reason)
    return summary


@contextlib.contextmanager
def held(writer: EmbedWriter) -> Iterator[EmbedWriter]:
    """`writer` for the block, closed after it; stopped before its first commit, its partial
    directory goes too (it held no work: the shards do), so nothing is left to `--resume`."""
    try:
        yield writer
    except BaseException:
        writer.discard_if_empty()
        raise
    finally:
        writer.close()


def concatenate(writer: EmbedWriter, shards: list[ShardInfo], on_failure: OnFailure | None = None) -> EmbedSummary:
    """Commit `shards` (planned: in order, of one run) through `writer` and publish them."""
    writer.made_by({**shards[0].record, "inputs": shards[0].split.inputs})
    copy_parts(writer, [shard.paths for shard in shards])
    summary = writer.finish()
    for path, reason in (f for shard in shards for f in shard.failures()) if on_failure else ():
        on_failure(path, reason)
    return summary
