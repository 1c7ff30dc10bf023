"""What the machine says, read once without torch: the CPUs this process may use (affinity, cgroup
quota), CPU 0's cache sizes, and the slicing budget from them (eight L2s, 1-32 MB, else 8 MB)."""

from __future__ import annotations

import os
from pathlib import Path

MB = 1024 * 1024
DEFAULT_BUDGET = 8 * MB  # where the caches cannot be read
CACHE_ROOT = Path("/sys/devices/system/cpu/cpu0/cache")


def usable_cpus() -> int:
    """CPUs this process may run on: its affinity mask, capped by a cgroup CPU quota if any."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = cgroup_cpu_quota()
    return max(1, min(cpus, quota)) if quota else max(1, cpus)


def cgroup_cpu_quota(root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """ceil(quota / period) from cgroup v2 `cpu.max` or v1 `cpu.cfs_quota_us`; None when unlimited."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        if quota == "max":
            return None
        return max(1, -(-int(quota) // int(period)))
    except (OSError, ValueError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return max(1, -(-quota // period)) if quota > 0 else None
    except (OSError, ValueError):
        return None


def read_caches(root: Path = CACHE_ROOT) -> dict[str, dict[str, int]]:
    """{"L1d"|"L2"|"L3": {"bytes": size, "shared_by": CPUs sharing it}} for CPU 0's data caches."""
    caches: dict[str, dict[str, int]] = {}
    for index in sorted(root.glob("index*")):
        try:
            level = int((index / "level").read_text())
            kind = (index / "type").read_text().strip()
            size = parse_size((index / "size").read_text())
            shared = count_cpus((index / "shared_cpu_list").read_text())
        except (OSError, ValueError):
            continue
        if kind in ("Data", "Unified"):
            caches["L1d" if level == 1 else f"L{level}"] = {"bytes": size, "shared_by": shared}
    return caches


def parse_size(text: str) -> int:
    """'2048K' -> 2097152 (sysfs cache sizes)."""
    text = text.strip().upper()
    scale = {"K": 1024, "M": MB, "G": 1024 * MB}.get(text[-1:], 1)
    return int(text.rstrip("KMG")) * scale


def count_cpus(text: str) -> int:
    """'0-3,8' -> 5 (a sysfs CPU list)."""
    count = 0
    for part in text.strip().split(","):
        if part:
            low, _, high = part.partition("-")
            count += int(high or low) - int(low) + 1
    return max(1, count)


def slicing_budget(caches: dict[str, dict[str, int]] | None = None) -> int:
    """The batch-slicing budget in bytes: 8x one core's L2, 1-32 MB; DEFAULT_BUDGET when no L2 is known."""
    caches = read_caches() if caches is None else caches
    l2 = caches.get("L2", {}).get("bytes", 0)
    if not l2:
        return DEFAULT_BUDGET
    return min(max(8 * l2, 1 * MB), 32 * MB)
