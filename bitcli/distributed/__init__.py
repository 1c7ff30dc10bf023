"""Beyond one machine: `bit embed` as numbered shards, on a Ray cluster or as a job array.

    shards.py      the deterministic split of the input list into shards of whole batches,
                   `--shard I/N`, the input list streamed to disk; a shard is a collection
                   written by the embed store (`shard-00000j.npy` and its set)
    combine.py     shards concatenated -> exactly the files a local run writes
    worker.py      a worker: the model loaded once, shards embedded with the local pipeline;
                   `run_shards` runs `--shard I/N` in this process
    ray_engine.py  `--engine ray`: the shards through a pool of Ray actors, then combine

Nothing here imports torch or ray at import time.
"""

from __future__ import annotations

from bitcli.distributed.combine import combine
from bitcli.distributed.ray_engine import RayOptions, default_shard_dir, embed_on_ray, groups_on_ray, leftover_ray_run
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
    "leftover_ray_run",
    "parse_selection",
    "run_shards",
]

