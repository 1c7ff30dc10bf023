"""engine/allocator.py: with its glibc settings, a loop of activation-sized allocations stops
faulting pages in; without them every one maps fresh memory. Run in child processes, because
malloc settings are process-wide."""

from __future__ import annotations

import subprocess
import sys

import pytest

CHILD = """
import resource, sys
import numpy as np
if sys.argv[1] == "keep":
    from bitcli.engine.allocator import keep_freed_memory
    assert keep_freed_memory()
def step():  # a few 12 MB activations alive at once (one 448 px stage-1 block), then freed
    blocks = [np.ones(12 << 18, dtype=np.float32) for _ in range(4)]
    del blocks
step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults(mode: str, env: dict | None = None) -> int:
    result = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True, env=env, check=True)
    return int(result.stdout)


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc settings")
def test_freed_activations_stay_mapped():
    plain, kept = faults("plain"), faults("keep")
    assert plain > 10 * 1000  # glibc trims the heap's free top: pages faulted in again every round (~2,000)
    assert kept < 100  # the same pages reused (0 here)


@pytest.mark.slow
def test_user_settings_win(monkeypatch):
    from bitcli.engine.allocator import keep_freed_memory

    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "131072")
    assert keep_freed_memory() is False
