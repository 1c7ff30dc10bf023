"""What the engine reads from the machine (bitcli/engine/machine.py): CPUs, caches, the slicing
budget derived from them, and the thread count capped at the usable CPUs."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from bitcli.engine.machine import (
    DEFAULT_BUDGET,
    MB,
    cgroup_cpu_quota,
    count_cpus,
    parse_size,
    read_caches,
    slicing_budget,
    usable_cpus,
)


def test_sysfs_sizes_and_cpu_lists():
    assert parse_size("48K") == 48 * 1024 and parse_size("307200K") == 300 * MB and parse_size("2M") == 2 * MB
    assert count_cpus("0-1") == 2 and count_cpus("0-3,8,10-11") == 7 and count_cpus("5") == 1


def fake_cache(root, index, level, kind, size, shared):
    directory = root / f"index{index}"
    directory.mkdir(parents=True)
    for name, value in [("level", level), ("type", kind), ("size", size), ("shared_cpu_list", shared)]:
        (directory / name).write_text(f"{value}\n")


def test_read_caches_from_a_sysfs_tree(tmp_path):
    fake_cache(tmp_path, 0, 1, "Data", "48K", "0")
    fake_cache(tmp_path, 1, 1, "Instruction", "32K", "0")
    fake_cache(tmp_path, 2, 2, "Unified", "2048K", "0")
    fake_cache(tmp_path, 3, 3, "Unified", "307200K", "0-1")
    assert read_caches(tmp_path) == {
        "L1d": {"bytes": 48 * 1024, "shared_by": 1},
        "L2": {"bytes": 2 * MB, "shared_by": 1},
        "L3": {"bytes": 300 * MB, "shared_by": 2},
    }
    assert read_caches(tmp_path / "missing") == {}


def test_cgroup_quota(tmp_path):
    assert cgroup_cpu_quota(tmp_path) is None  # no cgroup files: no limit
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cgroup_cpu_quota(tmp_path) == 2
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_quota(tmp_path) is None
    (tmp_path / "cpu.max").unlink()
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("400000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_quota(tmp_path) == 4


@pytest.mark.parametrize(
    "caches, expected",
    [
        ({"L2": {"bytes": 2 * MB, "shared_by": 1}, "L3": {"bytes": 300 * MB, "shared_by": 2}}, 16 * MB),
        ({"L2": {"bytes": 1 * MB, "shared_by": 1}, "L3": {"bytes": 32 * MB, "shared_by": 2}}, 8 * MB),
        ({"L2": {"bytes": 64 * 1024, "shared_by": 1}}, 1 * MB),
        ({"L2": {"bytes": 16 * MB, "shared_by": 4}}, 32 * MB),
        ({"L1d": {"bytes": 48 * 1024, "shared_by": 1}}, DEFAULT_BUDGET),
        ({}, DEFAULT_BUDGET),
    ],
    ids=["Xeon VM, 2 MiB L2", "EPYC, 1 MiB L2", "small L2: at least 1 MB", "large L2: at most 32 MB", "no L2", "unknown"],
)
def test_budget_is_eight_times_one_cores_l2(caches, expected):
    assert slicing_budget(caches) == expected


def test_budget_of_this_machine_comes_from_its_sysfs_caches():
    assert slicing_budget() == slicing_budget(read_caches())


def test_usable_cpus_respects_affinity():
    if hasattr(os, "sched_getaffinity"):
        assert 1 <= usable_cpus() <= len(os.sched_getaffinity(0))


SHOW_THREADS = """
import sys, torch
from bitcli.checkpoint import load_model
if sys.argv[2] != "-":
    torch.set_num_threads(int(sys.argv[2]))  # as --threads does, before the settings
before = torch.get_num_threads()
load_model(sys.argv[1])
library = torch.get_num_threads()
from bitcli.cli.process import before_the_model
before_the_model()
print(before, library, torch.get_num_threads())
"""


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs CPU affinity (Linux)")
def test_the_bit_process_caps_threads_at_the_cpus_it_may_use_and_the_library_does_not(ckpt):
    """A process pinned to one CPU (as a container with one CPU would be): the `bit` command's
    settings run torch on one thread, whatever torch counted; loading a model through the
    library leaves torch's thread count alone; a smaller count set before is kept."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "2"}
    first_cpu = min(os.sched_getaffinity(0))

    def threads(count: str) -> list[int]:
        pinned = lambda: os.sched_setaffinity(0, {first_cpu})  # noqa: E731
        out = subprocess.run(
            [sys.executable, "-c", SHOW_THREADS, str(ckpt), count],
            env=env, preexec_fn=pinned, capture_output=True, text=True, check=True,
        )
        return [int(n) for n in out.stdout.split()[-3:]]

    assert threads("-") == [2, 2, 1]  # torch's count, untouched by the library, capped by `bit`
    assert threads("1") == [1, 1, 1]
