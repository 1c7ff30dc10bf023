"""Deterministic shards of an embed run: the split, and the input list the shards are cut from
(docs/distributed.md, "How the work is cut").

The expanded input list (failed expansions included, in order) is cut into shards of
`shard_size` entries, a multiple of the batch size, so every batch of a local run lies inside
one shard and every row is computed in the same batch: the bytes are the same. `--shard I/N`
runs shards I, I + N, ... of the same split. `spool_inputs` streams the list into a JSON-lines
file (memory stays flat), recording where each shard starts. A shard is a collection
(`shard-00000j.npy` and its set, written by `store.Collection`), its run record adding the split
and its index.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from bitcli.errors import InputError, UsageError
from bitcli.inputs import InputItem
from bitcli.store.files import JOURNAL, read_json_record, remove_partial, take_lock
from bitcli.store.files import files_problem, read_journal
from bitcli.store.paths import EmbedPaths, read_errors
from bitcli.store.settings import check_made_alike
from bitcli.util import encode_lines, write_atomic

DEFAULT_SHARD_IMAGES = 1024  # inputs per shard, rounded up to whole batches
UPDATE_PLAN = "update.jsonl"  # `--update --shard` jobs' plan, in the shard directory (`store.update.write_plan`)


class ShardError(UsageError):
    """Shard outputs that cannot be used together: damaged, missing, duplicated or mismatched."""


class MissingShardError(ShardError):
    """Some shards of the split have no output yet."""


class DuplicateShardError(ShardError):
    """Two outputs claim the same shard."""


class ShardMismatchError(ShardError):
    """Shards cut from another input list or split, or made with another model or options."""


@dataclass(frozen=True)
class Split:
    """How an input list is cut: shard j holds entries [j * shard_size, (j + 1) * shard_size)."""

    batch_size: int
    shard_size: int
    entries: int = 0
    inputs: str = ""  # sha256 of the ordered input paths (`store.files.inputs_digest`)

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise UsageError("--batch-size must be at least 1")
        if self.shard_size < 1 or self.shard_size % self.batch_size:
            raise UsageError(
                f"--shard-size {self.shard_size}: must be a positive multiple of --batch-size "
                f"{self.batch_size} (a shard holds whole batches)"
            )

    @property
    def shards(self) -> int:
        return max(1, -(-self.entries // self.shard_size))

    def bounds(self, index: int) -> tuple[int, int]:
        """[start, stop) of shard `index` in the input list."""
        if not 0 <= index < self.shards:
            raise IndexError(f"shard {index} of {self.shards}")
        start = index * self.shard_size
        return start, min(start + self.shard_size, self.entries)

    def count(self, index: int) -> int:
        start, stop = self.bounds(index)
        return stop - start

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def unlike(self, other: "Split") -> str:
        """How this split differs from `other`, for a message."""
        if (self.inputs, self.entries) != (other.inputs, other.entries):
            return "the inputs changed"
        return f"batch size {self.batch_size} and shard size {self.shard_size}, not {other.batch_size} and {other.shard_size}"

    @classmethod
    def from_json(cls, data: Any) -> "Split":
        return cls(**{key: data[key] for key in ("batch_size", "shard_size", "entries", "inputs")})


def default_shard_size(batch_size: int, images: int = DEFAULT_SHARD_IMAGES) -> int:
    """About `images` inputs per shard, rounded up to whole batches."""
    return -(-images // batch_size) * batch_size


def parse_selection(text: str) -> tuple[int, int]:
    """`--shard I/N` -> (I, N): this job runs shards I, I + N, I + 2N, ... (0 <= I < N)."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not match:
        raise UsageError(f"--shard {text}: expected I/N, such as 0/4 (job I of N, counted from 0)")
    index, count = int(match[1]), int(match[2])
    if count < 1 or index >= count:
        raise UsageError(f"--shard {text}: N must be at least 1 and I between 0 and N-1")
    return index, count


def selected(split: Split, index: int, count: int) -> range:
    """The shards job `index` of `count` runs: index, index + count, ..."""
    return range(index, split.shards, count)


def shard_name(index: int) -> str:
    return f"shard-{index:06d}"


# -- the input list --------------------------------------------------------------------------


@dataclass(frozen=True)
class ShardInputs:
    """Where a worker finds shard `index`'s entries: `count` lines from `offset` of `spool`."""

    index: int
    spool: str
    offset: int
    count: int

    def read(self) -> list[InputItem | InputError]:
        entries: list[InputItem | InputError] = []
        with open(self.spool, "rb") as fh:
            fh.seek(self.offset)
            for n in range(self.count):
                line = fh.readline()
                if not line.endswith(b"\n"):
                    raise ShardError(f"{self.spool}: the input list ends early; start the run again with --overwrite")
                record = json.loads(line)
                entries.append(InputItem(index=n, path=record[0]) if len(record) == 1 else InputError(record[0], record[1]))
        return entries


@dataclass(frozen=True)
class InputSpool:
    """The expanded input list on disk, its split, and the byte offset of each shard's first entry."""

    path: Path
    split: Split
    offsets: tuple[int, ...]

    def shard(self, index: int) -> ShardInputs:
        offset = self.offsets[index] if index < len(self.offsets) else 0  # the empty list's shard 0
        return ShardInputs(index, str(self.path), offset, self.split.count(index))


def spool_inputs(
    entries: Iterable[InputItem | InputError], path: Path, *, batch_size: int, shard_size: int
) -> InputSpool:
    """Stream `entries` to `path` (published atomically), counting and hashing them on the way."""
    Split(batch_size, shard_size)  # refuse a bad split before listing anything
    digest = hashlib.sha256()
    offsets: list[int] = []
    size = count = 0

    def lines() -> Iterator[str]:
        nonlocal size, count
        for entry in entries:
            if count % shard_size == 0:
                offsets.append(size)
            record = [entry.path] if isinstance(entry, InputItem) else [entry.path, entry.reason]
            line = json.dumps(record, ensure_ascii=True)  # ASCII: its length is its size in bytes
            # The same digest as `store.files.inputs_digest` (pinned by a test), computed as we go.
            digest.update(entry.path.encode("utf-8", "surrogateescape") + b"\0")
            size, count = size + len(line) + 1, count + 1
            yield line

    write_atomic(path, encode_lines(lines()))
    return InputSpool(path, Split(batch_size, shard_size, count, digest.hexdigest()), tuple(offsets))


# -- a shard: a collection of the split's entries [j * shard_size, (j + 1) * shard_size) ------------

_SHARD_ARRAY = re.compile(r"shard-(\d{6,})\.npy")


@dataclass(frozen=True)
class ShardInfo:
    """A finished shard, as its run record describes it."""

    index: int
    split: Split
    record: dict[str, Any]  # its run record's `settings` and `runtime` (`files.run_state`)
    dim: int
    dtype: str
    rows: int
    failed: int
    paths: EmbedPaths
    update: str | None = None  # an `--update` job's shard: the digest of the plan it was cut from

    @property
    def out(self) -> Path:
        return self.paths.out

    def settings(self) -> dict[str, Any]:
        """What must agree between shards of one output: the settings record, the runtime that
        picks the rows' last bits, the shape (JSON round trip: tuples equal lists)."""
        return json.loads(json.dumps({**self.record, "dim": self.dim, "dtype": self.dtype}))

    def failures(self) -> Iterator[tuple[str, str]]:
        """(path, reason) of each input of the shard that failed, in input order."""
        yield from read_errors(self.paths.errors) if self.failed else ()


def check_alike(shard: ShardInfo, split: Split, made: dict[str, Any] | None = None, *, other: str = "this run",
                names: tuple[str, str] = ("in it", "in this run"),
                other_run: str = "{shard} belongs to another run ({difference}); pass --overwrite to start over",
                other_settings: str | None = None) -> None:
    """The one check that `shard` belongs with a run: cut by `split` and, given `made`
    (`ShardInfo.settings()`, or some of its keys), its rows made alike; else ShardMismatchError
    (exit 2), worded by `other_run` (another split) or `other_settings` (default: `other_run`),
    each formatted with the shard's path, `other` (what it is held against) and the difference."""
    if shard.split != split:
        raise ShardMismatchError(other_run.format(shard=shard.out, other=other, difference=shard.split.unlike(split)))
    if made is not None:
        check_made_alike(shard.settings(), json.loads(json.dumps(made)), lambda difference: ShardMismatchError(
            (other_settings or other_run).format(shard=shard.out, other=other, difference=difference)), names)


def shard_paths(directory: Path, index: int) -> EmbedPaths:
    return EmbedPaths.for_output(Path(directory) / f"{shard_name(index)}.npy")


def read_shard(paths: EmbedPaths) -> ShardInfo:
    """The finished shard at `paths`, its files checked against its run record (ShardError if damaged)."""
    record = read_json_record(paths.record) if paths.record is not None else None
    if record is None or "split" not in record:
        raise ShardError(f"{paths.out}: not a finished shard (no readable {paths.record.name}); remove it or run that shard again")
    try:
        info = ShardInfo(int(record["shard"]), Split.from_json(record["split"]),
                         {"settings": dict(record["settings"]), "runtime": dict(record["runtime"])},
                         int(record["dim"]), str(record["dtype"]), int(record["rows"]), int(record["failed"]), paths,
                         record.get("update_plan"))
        in_range = 0 <= info.index < info.split.shards and info.rows + info.failed == info.split.count(info.index)
    except (KeyError, TypeError, ValueError) as exc:
        raise ShardError(f"{paths.record}: malformed ({type(exc).__name__}: {exc}); run that shard again") from exc
    if not in_range:
        raise ShardError(f"{paths.record}: its counts do not fit its split; run that shard again")
    problem = files_problem(paths, record, info.dim, np.dtype(info.dtype).newbyteorder("<"), places=False)
    if problem:
        raise ShardError(f"{paths.out}: damaged shard ({problem}); remove it and run that shard again")
    return info


def make_shard_dir(directory: Path) -> None:
    """Create the shard directory (and its parents) if missing; one that cannot be a directory
    (a file, a dangling link, an unwritable parent) is a usage error naming it (exit 2)."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise UsageError(f"{directory}: not a directory, so shards cannot go there; give --shard-dir DIR") from None
    except OSError as exc:
        raise UsageError(f"{directory}: cannot create the shard directory ({exc.strerror or exc}); give --shard-dir DIR") from None


def shard_outputs(directory: Path, *, partial: bool = False) -> dict[int, EmbedPaths]:
    """The published shards in `directory` by index (with `partial`, those being written too)."""
    found: dict[int, EmbedPaths] = {}
    try:
        names = sorted(os.listdir(directory))
    except (FileNotFoundError, NotADirectoryError):
        return found
    for name in names:
        match = _SHARD_ARRAY.fullmatch(name.removesuffix(".partial") if partial else name)
        if match and (directory / name).exists():
            found[int(match[1])] = shard_paths(directory, int(match[1]))
    return found


def finished_shards(directory: Path, split: Split, indices: Iterable[int] | None = None, *,
                    changed: str | None = None) -> dict[int, ShardInfo]:
    """The finished shards of `split` in `directory` (all, or those in `indices`).

    A shard of another split (other inputs, batch or shard size) is refused: the directory
    belongs to another run; `changed`, if given, is the refusal when its inputs differ."""
    wanted = None if indices is None else set(indices)
    done = {}
    for index, paths in shard_outputs(directory).items():
        if wanted is not None and index not in wanted:
            continue
        done[index] = read_shard(paths)
        if changed and done[index].split.inputs != split.inputs:
            raise ShardMismatchError(changed)
        check_alike(done[index], split)
    return done


def inputs_in_flight(directory: Path) -> int:
    """Inputs already committed in the shards being written into `directory` (their journals):
    progress between whole shards. A shard published meanwhile counts 0."""
    done = 0
    for paths in shard_outputs(directory, partial=True).values():
        with contextlib.suppress(OSError):
            journal = read_journal(paths.partial / JOURNAL)
            done += len(journal.paths) + len(journal.errors)
    return done


def remove_shards(directory: Path, indices: Iterable[int] | None = None, *, finished: bool = True) -> None:
    """Remove shards (all, or those of `indices`): their partial runs, and (`finished`) their
    published files. Only files bitcli writes; a partial run another process holds stays."""
    wanted = None if indices is None else set(indices)
    for index, paths in shard_outputs(directory, partial=True).items():
        if wanted is not None and index not in wanted:
            continue
        if paths.partial.is_dir() and (lock := take_lock(paths.partial)) is not None:
            with lock:
                remove_partial(paths.partial)
        for path in paths.set_files().values() if finished else ():
            path.unlink(missing_ok=True)


def remove_directory(directory: Path, files: Sequence[str] = ()) -> None:
    """Remove the shards, the named `files` and then `directory`, if nothing else lives there."""
    remove_shards(directory)
    for name in files:
        (directory / name).unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        directory.rmdir()  # something else lives there: leave it
