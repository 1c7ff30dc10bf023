"""Beyond one machine: `bit embed` as numbered shards, on a Ray cluster or as a job array.

    shards.py      the deterministic split of the input list into shards of whole batches,
                   `--shard I/N`, and the input list streamed to disk
    shardfiles.py  one finished shard's files (written atomically) and the shard directory
    combine.py     shards -> exactly the files a local run writes
    worker.py      a worker: the model loaded once, shards embedded with the local pipeline;
                   `run_shards` runs `--shard I/N` in this process
    ray_engine.py  `--engine ray`: the shards through a Ray Data actor pool, then combine
    seams.py       everything borrowed from the rest of bitcli, in one place

Nothing here imports torch or ray at import time.
"""

from __future__ import annotations

from bitcli.distributed.combine import combine
from bitcli.distributed.ray_engine import RayOptions, default_shard_dir, embed_on_ray, groups_on_ray
from bitcli.distributed.shards import (
    DuplicateShardError,
    MissingShardError,
    ShardError,
    ShardMismatchError,
    Split,
    parse_selection,
)
from bitcli.distributed.worker import EmbedJob, Progress, run_shards

__all__ = [
    "DuplicateShardError",
    "EmbedJob",
    "MissingShardError",
    "Progress",
    "RayOptions",
    "ShardError",
    "ShardMismatchError",
    "Split",
    "combine",
    "default_shard_dir",
    "embed_on_ray",
    "groups_on_ray",
    "parse_selection",
    "run_shards",
]

