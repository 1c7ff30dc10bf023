"""glibc malloc settings for a process that runs the engine: freed activations stay mapped.

A 448 px forward pass allocates and frees activations of 1-13 MB per image at every step.
glibc serves blocks over its dynamic mmap threshold with a fresh mmap and gives them back with
munmap when freed, and trims the heap's free top back to the OS; so every step of every batch
faults its output's pages in again (4 KiB each, zeroed by the kernel: ~8,000 page faults per
batch-1 forward and ~70,000 per batch of 8 on R50x1 at 448, measured with getrusage), which
costs most inside virtual machines. With blocks up to 32 MB (glibc's ceiling for this setting)
taken from the heap and the heap's free memory kept, a forward pass reuses the pages of the last
one: 0 faults at batch 1, ~25,000 at batch 8 (its >32 MB batch-wide tensors still map afresh).
Peak memory is unchanged (the same live tensors); what is freed is kept for the next batch
instead of being returned at once, so the resident size stays at its peak.

The process owns these settings, so only the `bit` command applies them (`cli/common.py`); a
program that embeds bitcli as a library may call `keep_freed_memory()` itself. Environment
variables the user set (MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_, MALLOC_TOP_PAD_) win.
"""

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
