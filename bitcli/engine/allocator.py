"""glibc malloc settings for a process that runs the engine: freed activations stay mapped.

Blocks up to 32 MB come from the heap and its free top is kept, so a forward pass reuses the
last one's pages instead of faulting fresh mmaps in (docs/engine.md). Only the `bit` command
applies them (a library user may call `keep_freed_memory()`); the user's MALLOC_* variables win."""

from __future__ import annotations

import ctypes
import os
import sys

# mallopt parameters (glibc's malloc.h)
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD = 32 << 20  # the largest value glibc accepts (HEAP_MAX_SIZE / 2 on 64-bit)
TRIM_THRESHOLD = 1 << 30  # keep up to 1 GiB of free heap top (a C int: at most 2^31 - 1)
TOP_PAD = 64 << 20  # grow the heap in 64 MB steps


def keep_freed_memory() -> bool:
    """Apply the settings above where the C library is glibc; return whether they were applied."""
    if not sys.platform.startswith("linux"):
        return False
    if any(name in os.environ for name in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # glibc; musl has no mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    settings = ((M_MMAP_THRESHOLD, MMAP_THRESHOLD), (M_TRIM_THRESHOLD, TRIM_THRESHOLD), (M_TOP_PAD, TOP_PAD))
    return all(mallopt(parameter, value) == 1 for parameter, value in settings)
