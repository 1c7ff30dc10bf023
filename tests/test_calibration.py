"""Per-machine engine settings (bitcli/engine/calibration.py): reading the machine, choosing a budget
from timings (a fake clock here, so the choice is deterministic), remembering it."""

from __future__ import annotations

import json
import os

import pytest
import torch

from bitcli.engine import calibration
from bitcli.engine.calibration import (
    MB,
    best_budget,
    cgroup_cpu_quota,
    count_cpus,
    estimate_chunk_bytes,
    parse_size,
    read_caches,
)
from bitcli.checkpoint import load_model


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
    "caches, cpus, expected",
    [
        ({"L2": {"bytes": 512 * 1024, "shared_by": 1}, "L3": {"bytes": 32 * MB, "shared_by": 2}}, 2, 8 * MB),
        ({"L2": {"bytes": 512 * 1024, "shared_by": 1}, "L3": {"bytes": 32 * MB, "shared_by": 8}}, 2, 2 * MB),
        ({"L2": {"bytes": 2 * MB, "shared_by": 1}, "L3": {"bytes": 300 * MB, "shared_by": 2}}, 2, 32 * MB),
        ({"L2": {"bytes": 2 * MB, "shared_by": 1}, "L3": {"bytes": 4 * MB, "shared_by": 2}}, 2, 4 * MB),
        ({}, 2, 8 * MB),
    ],
    ids=["EPYC VM, its own L3", "EPYC, L3 of a CCX", "this VM (L3 as reported)", "small L3", "unknown"],
)
def test_estimate_from_cache_sizes(caches, cpus, expected):
    assert estimate_chunk_bytes({"caches": caches, "cpus": cpus}) == expected


# Per image at 448 px: stem, 4 stages, final norm (as step_activation_bytes gives them).
PER_IMAGE = [4 * c * s * s for c, s in [(64, 224), (256, 112), (512, 56), (1024, 28), (2048, 14), (2048, 14)]]


def test_budget_follows_the_timings():
    # Early steps fastest one image at a time, late steps on 4: the budget whose slices are
    # 1 for the 12.8 MB steps and 4 for the 1.6 MB ones wins.
    table = [{1: 1.0, 2: 1.3, 4: 1.6}] * 3 + [{1: 1.0, 2: 0.9, 4: 0.8}] * 3
    budget = best_budget(PER_IMAGE, table, 8, prefer=32 * MB)
    assert budget == 8 * MB  # stem to stage 1 on 1 image, stage 2 on 2, stage 3 on 4
    # Everything fastest on big slices: the largest candidate.
    flat = [{1: 2.0, 2: 1.5, 4: 1.0}] * 6
    assert best_budget(PER_IMAGE, flat, 8, prefer=8 * MB) == 32 * MB
    # No real difference: the estimate is kept.
    same = [{1: 1.0, 2: 1.0, 4: 1.0}] * 6
    assert best_budget(PER_IMAGE, same, 8, prefer=4 * MB) == 4 * MB


@pytest.fixture
def tiny_backbone(ckpt, monkeypatch):
    monkeypatch.setattr(calibration.os, "getloadavg", lambda: (0.0, 0.0, 0.0))  # an idle machine
    monkeypatch.setattr(calibration, "MAX_MEASURING_SECONDS", 1e9)
    return load_model(ckpt).model.bit


def test_measured_budget_is_remembered_and_reused(tiny_backbone, monkeypatch, tmp_path):
    monkeypatch.setenv("BITCLI_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("BITCLI_CALIBRATE", "1")
    ticks = iter(range(10_000))
    monkeypatch.setattr(calibration.time, "perf_counter", lambda: float(next(ticks)))
    x = torch.randn(3, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    chosen, record = calibration.chunk_bytes_for(tiny_backbone, x)
    assert record["source"] == "measured" and chosen == record["chunk_bytes"]
    assert len(record["seconds_per_image"]) == len(tiny_backbone.steps())
    saved = json.loads((tmp_path / "engine-settings.json").read_text())
    assert [entry["chunk_bytes"] for entry in saved.values()] == [chosen]

    def must_not_measure(*args, **kwargs):
        raise AssertionError("measured again")

    monkeypatch.setattr(calibration, "measure_steps", must_not_measure)
    assert calibration.chunk_bytes_for(tiny_backbone, x)[0] == chosen
    # Another input size is another key: measured anew.
    with pytest.raises(AssertionError, match="measured again"):
        other = torch.randn(3, 3, 40, 40).contiguous(memory_format=torch.channels_last)
        calibration.chunk_bytes_for(tiny_backbone, other)


def test_calibration_off_uses_the_estimate_and_writes_nothing(tiny_backbone, monkeypatch, tmp_path):
    monkeypatch.setenv("BITCLI_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("BITCLI_CALIBRATE", "0")
    x = torch.randn(2, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    chosen, record = calibration.chunk_bytes_for(tiny_backbone, x)
    assert chosen == estimate_chunk_bytes(calibration.machine_info())
    assert record["source"] == "estimated from cache sizes"
    assert not (tmp_path / "engine-settings.json").exists()


def test_corrupt_or_unwritable_settings_only_mean_measuring_again(tiny_backbone, monkeypatch, tmp_path):
    monkeypatch.setenv("BITCLI_CALIBRATE", "1")
    even = {1: 1.0, 2: 1.0, 4: 1.0}
    monkeypatch.setattr(calibration, "measure_steps", lambda steps, sample, **_: [even] * len(steps))
    x = torch.randn(2, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    (tmp_path / "engine-settings.json").write_text("{not json")
    monkeypatch.setenv("BITCLI_CACHE_DIR", str(tmp_path))
    assert calibration.chunk_bytes_for(tiny_backbone, x)[1]["source"] == "measured"
    assert len(json.loads((tmp_path / "engine-settings.json").read_text())) == 1  # rewritten, whole
    blocked = tmp_path / "file"
    blocked.write_text("")
    monkeypatch.setenv("BITCLI_CACHE_DIR", str(blocked / "sub"))  # a directory that cannot exist
    assert calibration.chunk_bytes_for(tiny_backbone, x)[1]["source"] == "measured"


def test_busy_or_slow_machines_are_not_measured(tiny_backbone, monkeypatch, tmp_path):
    monkeypatch.setenv("BITCLI_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("BITCLI_CALIBRATE", "1")
    x = torch.randn(2, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    monkeypatch.setattr(calibration.os, "getloadavg", lambda: (64.0, 64.0, 64.0))
    chosen, record = calibration.chunk_bytes_for(tiny_backbone, x)
    assert "not measured" in record["source"] and chosen == estimate_chunk_bytes(calibration.machine_info())
    monkeypatch.setattr(calibration.os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    monkeypatch.setattr(calibration, "MAX_MEASURING_SECONDS", 0.0)
    assert "too long" in calibration.chunk_bytes_for(tiny_backbone, x)[1]["source"]
    assert not (tmp_path / "engine-settings.json").exists()  # neither is remembered


def test_the_model_resolves_auto_at_its_first_batch(ckpt, monkeypatch, tmp_path):
    monkeypatch.setenv("BITCLI_CACHE_DIR", str(tmp_path))
    model = load_model(ckpt).model
    assert model.bit.chunk_bytes == "auto"
    with torch.inference_mode():
        model(torch.randn(1, 3, 32, 32))
        assert model.bit.chunk_bytes == "auto"  # one image: nothing to slice, nothing decided
        model(torch.randn(2, 3, 32, 32))
    assert isinstance(model.bit.chunk_bytes, int) and model.bit.calibration["chunk_bytes"] == model.bit.chunk_bytes


def test_threads_are_capped_at_usable_cpus(monkeypatch):
    from bitcli import engine

    calls = []
    monkeypatch.setattr(engine, "usable_cpus", lambda: 2)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 64)
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    engine.fit_threads()
    assert calls == [2]
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)  # the user's --threads 1 is kept
    engine.fit_threads()
    assert calls == [2]


def test_usable_cpus_respects_affinity():
    if hasattr(os, "sched_getaffinity"):
        assert 1 <= calibration.usable_cpus() <= len(os.sched_getaffinity(0))


def test_new_labels_reuse_the_backbone_settings(tiny_backbone, monkeypatch, tmp_path):
    """A model fine-tuned to other classes runs the same backbone: not measured again."""
    import dataclasses

    monkeypatch.setenv("BITCLI_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("BITCLI_CALIBRATE", "1")
    x = torch.randn(3, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    chosen = calibration.chunk_bytes_for(tiny_backbone, x)[0]
    monkeypatch.setattr(calibration, "measure_steps", lambda *a, **k: pytest.fail("measured again"))
    tiny_backbone.config = dataclasses.replace(tiny_backbone.config, num_labels=3, id2label={0: "a", 1: "b", 2: "c"})
    assert calibration.chunk_bytes_for(tiny_backbone, x)[0] == chosen
    tiny_backbone.config = dataclasses.replace(tiny_backbone.config, depths=[2, 1, 2, 1])  # another backbone
    with pytest.raises(pytest.fail.Exception, match="measured again"):
        calibration.chunk_bytes_for(tiny_backbone, x)


def test_settings_file_stays_small(tmp_path, monkeypatch):
    """At most MAX_ENTRIES entries, newest kept; an oversized file is not read (only rewritten)."""
    path = tmp_path / "engine-settings.json"
    for index in range(calibration.MAX_ENTRIES + 5):
        assert calibration.remember(f"key{index}", {"chunk_bytes": index}, path)
    saved = json.loads(path.read_text())
    assert len(saved) == calibration.MAX_ENTRIES and "key4" not in saved and f"key{calibration.MAX_ENTRIES + 4}" in saved
    path.write_text('{"k": {"chunk_bytes": 1}, "pad": "' + "x" * calibration.SETTINGS_MAX_BYTES + '"}')
    assert calibration.read_settings(path) == {}
    assert calibration.remember("new", {"chunk_bytes": 2}, path)
    assert json.loads(path.read_text()) == {"new": {"chunk_bytes": 2}}
