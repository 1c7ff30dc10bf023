"""Per-machine engine settings: what the machine says, what is measured once, where it is kept.

Read (cheap, no torch import): the CPUs this process may use (affinity and a cgroup CPU quota),
the cache sizes (`/sys/devices/system/cpu/cpu0/cache`), the CPU model and flags (`/proc/cpuinfo`).

Measured once per machine + model architecture + input size + torch version (about 1-3 s): the
batch-slicing budget. Slicing runs each step of the backbone on a few images at a time so that
its activations stay in the CPU cache; how few pays best depends on cache sizes a virtual
machine often misreports (this development VM reports a 300 MiB L3). The first batch of two or
more images times every step on slices of 1, 2 and 4 random images and keeps the budget
whose slice sizes add up fastest. A single image never slices, so `bit classify one.jpg` and
`bit --help` never measure. BITCLI_CALIBRATE=0 skips measuring and uses the estimate from the
cache sizes (`estimate_chunk_bytes`).

Kept: JSON in $BITCLI_CACHE_DIR, else $XDG_CACHE_HOME/bitcli, else ~/.cache/bitcli
(`engine-settings.json`), replaced atomically. An unreadable, corrupt or unwritable file only
means measuring again next time.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from bitcli.util import read_capped

MB = 1024 * 1024
CANDIDATE_BUDGETS = (1 * MB, 2 * MB, 4 * MB, 8 * MB, 16 * MB, 32 * MB)
DEFAULT_BUDGET = 8 * MB  # measured best on a 2-core AMD EPYC with a 32 MB L3 (README)
SLICES = (1, 2, 4)  # images per slice that are timed
MAX_MEASURING_SECONDS = 20.0  # about 3 s for R50x1 at 448 px on an idle 2-core machine
SETTINGS_FILE = "engine-settings.json"
SETTINGS_MAX_BYTES = 4 << 20  # a few hundred entries; a larger file is not ours to trust
MAX_ENTRIES = 64  # machines x architectures x input sizes x thread counts kept (oldest dropped)
CACHE_ROOT = Path("/sys/devices/system/cpu/cpu0/cache")
FLAGS_OF_INTEREST = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_fp16")


# -- what the machine says --------------------------------------------------------------------


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


def cpu_model_and_flags(path: Path = Path("/proc/cpuinfo")) -> tuple[str, list[str]]:
    model, flags = platform.processor() or platform.machine(), []
    try:
        for line in path.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model in ("", platform.machine(), platform.processor()):
                model = value.strip()
            elif key.strip() == "flags":
                present = set(value.split())
                flags = [flag for flag in FLAGS_OF_INTEREST if flag in present]
                break
    except OSError:
        pass
    return model, flags


def machine_info() -> dict[str, Any]:
    """What identifies this machine for the engine (JSON-ready; part of the settings key)."""
    model, flags = cpu_model_and_flags()
    try:
        torch_version = metadata.version("torch")
    except metadata.PackageNotFoundError:
        torch_version = "unknown"
    return {"cpu": model, "cpus": usable_cpus(), "caches": read_caches(), "flags": flags, "torch": torch_version}


def estimate_chunk_bytes(info: dict[str, Any]) -> int:
    """The slicing budget from cache sizes alone: a quarter of this process's share of the
    last-level cache (a block's input, its normalized copy and its output must fit together),
    never under the private L2s it runs on, 1-32 MB; 8 MB when the caches are unknown."""
    caches, cpus = info.get("caches", {}), max(1, int(info.get("cpus", 1)))
    l2_info = caches.get("L2", {})
    l2 = l2_info.get("bytes", 0) * cpus / max(1, l2_info.get("shared_by", 1))  # the L2s our CPUs use
    last = caches.get("L3") or caches.get("L2")
    if not last:
        return DEFAULT_BUDGET
    share = last["bytes"] * min(1.0, cpus / max(1, last.get("shared_by", 1)))
    budget = max(share / 4, l2)
    return int(min(max(budget, 1 * MB), 32 * MB))


# -- what is measured ---------------------------------------------------------------------------


def measure_steps(steps: list[Any], sample: Any, *, deadline: float = float("inf")) -> list[dict[int, float]]:
    """Seconds per image of each step when run on slices of 1, 2 and 4 images of `sample`.

    `sample` holds max(SLICES) images; each step's input is the previous step's output.
    TimeoutError once time.perf_counter() passes `deadline`.
    """
    timer = time.perf_counter
    import torch

    table = []
    x = sample
    with torch.inference_mode():
        for step in steps:
            row = {}
            out = None
            for size in SLICES:
                step(x[:size])  # warm-up: oneDNN creates its kernels for this shape
                start = timer()
                parts = [step(part) for part in x.split(size)]
                row[size] = (timer() - start) / x.shape[0]
                out = parts
            table.append(row)
            x = torch.cat(out)
            if timer() > deadline:
                raise TimeoutError("measuring the slice sizes took too long")
    return table


def best_budget(per_image_bytes: list[int], table: list[dict[int, float]], batch: int, prefer: int) -> int:
    """The candidate budget whose slice sizes (at `batch` images, capped at the largest timed
    slice) add up to the least time; `prefer` on ties within 2% (timings are noisy)."""
    from bitcli.engine.slicing import slice_size

    def predicted(budget: int) -> float:
        total = 0.0
        for size, row in zip(per_image_bytes, table):
            images = min(slice_size(batch, size, budget), max(row))
            total += row.get(images, row[max(k for k in row if k <= images)])
        return total

    scores = {budget: predicted(budget) for budget in set(CANDIDATE_BUDGETS) | {prefer}}
    fastest = min(scores.values())
    if scores[prefer] <= fastest * 1.02:
        return prefer
    return min(scores, key=lambda budget: (scores[budget], budget))


# -- where it is kept ----------------------------------------------------------------------------


def settings_dir() -> Path:
    explicit = os.environ.get("BITCLI_CACHE_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "bitcli"


def backbone_fields(config: Any) -> str:
    """The configuration that shapes the backbone's work: every field but the head's labels
    (a model fine-tuned to new classes runs the same backbone as its base)."""
    fields = {name: getattr(config, name) for name in config.__dataclass_fields__ if name not in ("num_labels", "id2label")}
    return repr(sorted(fields.items()))


def settings_key(info: dict[str, Any], architecture: dict[str, Any]) -> str:
    blob = json.dumps({"machine": info, "architecture": architecture}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def read_settings(path: Path | None = None) -> dict[str, Any]:
    path = path or settings_dir() / SETTINGS_FILE
    try:
        data = json.loads(read_capped(path, SETTINGS_MAX_BYTES))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):  # FileTooLarge is an OSError: measure again, rewrite it small
        return {}


def remember(key: str, record: dict[str, Any], path: Path | None = None) -> bool:
    """Add `record` under `key`, replacing the file atomically; False when it cannot be written."""
    path = path or settings_dir() / SETTINGS_FILE
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = read_settings(path)
        data.pop(key, None)
        data[key] = record  # newest last: the oldest entries go first when there are too many
        data = dict(list(data.items())[-MAX_ENTRIES:])
        handle, temporary = tempfile.mkstemp(prefix=".engine-settings.", dir=path.parent)
        with os.fdopen(handle, "w") as stream:
            json.dump(data, stream, indent=1)
        os.replace(temporary, path)
        return True
    except OSError:
        return False


def calibration_enabled() -> bool:
    return os.environ.get("BITCLI_CALIBRATE", "1").strip().lower() not in ("0", "false", "no", "off")


def chunk_bytes_for(backbone: Any, x: Any) -> tuple[int, dict[str, Any]]:
    """The slicing budget for `backbone` on batches shaped like `x`, and the record behind it:
    remembered, else measured (and remembered), else estimated from the cache sizes."""
    import torch

    info = machine_info()
    estimate = estimate_chunk_bytes(info)
    architecture = {
        "config": backbone_fields(backbone.config),
        "input": list(x.shape[1:]),
        "dtype": str(x.dtype),
        "threads": torch.get_num_threads(),
    }
    key = settings_key(info, architecture)
    known = read_settings().get(key)
    if isinstance(known, dict) and isinstance(known.get("chunk_bytes"), int):
        return known["chunk_bytes"], known
    if not calibration_enabled():
        return estimate, {"chunk_bytes": estimate, "source": "estimated from cache sizes"}
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    if load >= info["cpus"]:
        # Timings on a busy machine measure the neighbours; estimate now, measure another time.
        source = f"estimated from cache sizes (load {load:.1f}: not measured)"
        return estimate, {"chunk_bytes": estimate, "source": source}
    sample = torch.randn(max(SLICES), *x.shape[1:], generator=torch.Generator().manual_seed(0))
    sample = sample.to(x.dtype).contiguous(memory_format=torch.channels_last)
    started = time.perf_counter()
    try:
        table = measure_steps(backbone.steps(), sample, deadline=started + MAX_MEASURING_SECONDS)
    except TimeoutError:
        return estimate, {"chunk_bytes": estimate, "source": "estimated from cache sizes (measuring took too long)"}
    per_image = backbone.step_activation_bytes(x.shape[-2], x.shape[-1], x.element_size())
    chosen = best_budget(per_image, table, max(x.shape[0], max(SLICES)), estimate)
    record = {
        "chunk_bytes": chosen,
        "source": "measured",
        "estimate": estimate,
        "seconds_per_image": [{str(k): round(v, 5) for k, v in row.items()} for row in table],
        "measuring_seconds": round(time.perf_counter() - started, 2),
        "load_average": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "machine": info,
        "architecture": architecture,
    }
    remember(key, record)
    return chosen, record
