"""The process settings of the `bit` command, all of them, in one place.

A setting that belongs to the whole process (an environment variable OpenMP reads when torch
loads, glibc's malloc, PIL's global pixel limit) is the program's to make, never the library's:
`bitcli.load` and the rest change none of them. The `bit` process is bitcli's own, so it makes
these (docs/engine.md has the measurements):

- `before_torch` (first thing in `main`): idle OpenMP threads sleep when other work is running
  (`settle_openmp`);
- `before_the_hub` (every command, before huggingface_hub is imported): downloads over plain
  HTTP, where BIT_HUB_TIMEOUT bounds every request (hf_xet's transfers run outside it;
  HF_HUB_DISABLE_XET=0 opts back in);
- `before_the_model` (before a model loads: `common.before_loading`): torch's threads
  capped at the CPUs this process may use (`cap_threads`), freed activations stay mapped
  (`engine/allocator.py`), and PIL's own decompression-bomb limit is off, because every image's
  pixel count is checked against `--max-pixels` from its header before decoding
  (`bitcli.decode.open_image`).

Library warnings (PIL's, torch's) are not bitcli messages: `app.guarded` ignores them unless
--debug. A program that embeds bitcli makes its own choices (docs/engine.md says which pay).
"""

from __future__ import annotations

import os
import sys


def before_torch() -> None:
    """The settings that must be made before torch is imported."""
    settle_openmp()


def before_the_hub() -> None:
    """The settings huggingface_hub reads when it is imported."""
    os.environ.setdefault("HF_HUB_DISABLE_XET", "1")


def before_the_model() -> None:
    """The settings made before a model loads and images are decoded (after --threads is applied)."""
    from PIL import Image

    from bitcli.engine.allocator import keep_freed_memory

    cap_threads()
    keep_freed_memory()
    Image.MAX_IMAGE_PIXELS = None  # bit checks --max-pixels itself, from each image's header


def cap_threads() -> None:
    """Cap torch's intra-op threads at the CPUs this process may use. torch counts the host's
    cores; in a container limited by a CPU quota or an affinity mask, more threads than CPUs
    only wait on each other. A smaller count (--threads) is kept."""
    import torch

    from bitcli.engine.machine import usable_cpus

    cpus = usable_cpus()
    if torch.get_num_threads() > cpus:
        torch.set_num_threads(cpus)


def settle_openmp() -> None:
    """Before torch loads its OpenMP runtime: where other work is running right now, let idle
    OpenMP threads sleep (OMP_WAIT_POLICY=PASSIVE) instead of spinning at every barrier.

    Spinning is the faster alone; beside a busy process it holds a CPU the other needs and each
    parallel region waits out a time slice (docs/engine.md has the figures). "Running now" is
    /proc/stat's procs_running, sampled three times (the load average would count a `bit` that
    just finished). A value the user set wins; Ray workers of a local cluster inherit it.
    """
    if "torch" in sys.modules or "OMP_WAIT_POLICY" in os.environ:
        return
    import time

    samples = []
    for _ in range(3):
        samples.append(running_now())
        time.sleep(0.004)
    if others_running(samples):
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"


def others_running(samples: list[int | None]) -> bool:
    """Whether the median sample of runnable tasks (this process among them) shows another one."""
    known = sorted(s for s in samples if s is not None)
    return bool(known) and known[len(known) // 2] > 1


def running_now(path: str = "/proc/stat") -> int | None:
    """Tasks running or runnable on the whole machine now (Linux), or None where unknown."""
    try:
        with open(path, "rb") as stat:
            for line in stat.read(1 << 16).splitlines():
                if line.startswith(b"procs_running "):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None
