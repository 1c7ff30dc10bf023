"""The tensor table of a safetensors file, read from its header: names, dtypes, shapes; no data.

Layout: 8 bytes little-endian N, then N bytes of JSON `{name: {"dtype", "shape", "data_offsets":
[begin, end]}, "__metadata__": {...}}`, then the data. Reading the header costs one small read
whatever the file's size, so `bit inspect` describes a 4 GB checkpoint as fast as a tiny one.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from bitcli.errors import CheckpointError

MAX_HEADER_BYTES = 100_000_000  # the safetensors library's own limit


@dataclass(frozen=True)
class TensorTable:
    """What a safetensors header says: each tensor's dtype and shape, and the data size it needs."""

    dtypes: dict[str, str]
    shapes: dict[str, tuple[int, ...]]
    data_bytes: int  # the end of the last tensor's data, counted from the end of the header


def read_tensor_table(path: Path) -> TensorTable:
    """The header of `path`; CheckpointError for anything malformed, or a file cut short."""
    try:
        with open(path, "rb") as file:
            size = os.fstat(file.fileno()).st_size
            prefix = file.read(8)
            if len(prefix) < 8:
                raise CheckpointError(f"{path}: truncated or corrupt safetensors file (no header)")
            (length,) = struct.unpack("<Q", prefix)
            if length > min(MAX_HEADER_BYTES, size - 8):
                raise CheckpointError(f"{path}: truncated or corrupt safetensors file (header of {length:,} bytes)")
            header = json.loads(file.read(length))
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CheckpointError(f"{path}: truncated or corrupt safetensors file (the header is not JSON)") from None
    table = _parse(header, path)
    if 8 + length + table.data_bytes > size:
        raise CheckpointError(
            f"{path}: truncated: its header describes {8 + length + table.data_bytes:,} bytes, "
            f"the file holds {size:,} (download it again)"
        )
    return table


def _parse(header: object, path: Path) -> TensorTable:
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: corrupt safetensors header (not a JSON object)")
    dtypes, shapes, end = {}, {}, 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, stop) = entry["dtype"], entry["shape"], entry["data_offsets"]
            if not (isinstance(dtype, str) and all(isinstance(d, int) and d >= 0 for d in shape) and 0 <= begin <= stop):
                raise ValueError
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{path}: corrupt safetensors header (entry {name!r})") from None
        dtypes[name], shapes[name] = dtype, tuple(shape)
        end = max(end, stop)
    return TensorTable(dtypes, shapes, end)
