"""Deterministic shards of an embed run: the split, and the input list the shards are cut from.

The split. The expanded input list (every entry a local `bit embed` would process, including
inputs that failed to expand, in the same order) is cut into shards of `shard_size` consecutive
entries, a multiple of the batch size: shard j holds entries [j * shard_size, (j + 1) *
shard_size). A local run's batch k is entries [k * B, (k + 1) * B) whatever fails inside it (see
`bitcli.pipeline`), so every batch lies inside one shard and every row is computed in the same
batch as locally: the bytes are the same. `--shard I/N` runs shards I, I + N, I + 2N, ... of
the same split, so N jobs of an array and a Ray cluster produce interchangeable shards. A list
with no entries still has one (empty) shard, so a worker records the feature dimension.

The input list. `spool_inputs` streams the expansion into a JSON-lines file (`[path]`, or
`[path, reason]` for an input that failed to expand; ASCII, so non-UTF-8 names survive) while
counting and hashing it, and records where each shard starts: memory stays flat however long
the list. A worker reads its shard's entries back by offset (`ShardInputs.read`).

A finished shard's files: `shardfiles.py`; assembling them: `combine.py`.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

from bitcli.distributed.seams import InputError, InputItem, UsageError, encode_lines, write_atomic

DEFAULT_SHARD_IMAGES = 1024  # inputs per shard, rounded up to whole batches


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
    inputs: str = ""  # sha256 of the ordered input paths (`store.journal.inputs_digest`)

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
            # The same digest as `store.journal.inputs_digest` (pinned by a test), computed as we go.
            digest.update(entry.path.encode("utf-8", "surrogateescape") + b"\0")
            size, count = size + len(line) + 1, count + 1
            yield line

    write_atomic(path, encode_lines(lines()))
    return InputSpool(path, Split(batch_size, shard_size, count, digest.hexdigest()), tuple(offsets))
