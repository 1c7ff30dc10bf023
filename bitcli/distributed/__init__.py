"""Beyond one machine: `bit embed` as numbered shards, on a Ray cluster or as a job array
(docs/distributed.md; ARCHITECTURE.md says which module owns what). Nothing here imports torch
or ray at import time.
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

