"""The `bit` process lets idle OpenMP threads sleep when other work is running now
(cli/process.py settle_openmp): decided before torch loads, a user's own OMP_WAIT_POLICY kept. (The
effect is a timing, measured in docs/engine.md, not asserted here.)"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys

import pytest

app_module = importlib.import_module("bitcli.cli.process")

CHILD = """
import importlib, os, sys
app = importlib.import_module("bitcli.cli.process")
app.running_now = lambda: int(sys.argv[1])  # tasks runnable on the machine, this one included
from bitcli.cli import main
try:
    main(["models"])
except SystemExit:
    pass
print("POLICY", os.environ.get("OMP_WAIT_POLICY"), "torch" in sys.modules)
"""


def policy(running: int, env_policy: str | None = None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if env_policy is not None:
        env["OMP_WAIT_POLICY"] = env_policy
    out = subprocess.run([sys.executable, "-c", CHILD, str(running)], capture_output=True, text=True, env=env, check=True)
    return out.stdout.strip().splitlines()[-1]


@pytest.mark.slow
def test_busy_machine_gets_a_passive_policy_before_torch_loads():
    assert policy(running=3) == "POLICY PASSIVE False"


@pytest.mark.slow
def test_alone_on_the_machine_openmp_keeps_its_default():
    assert policy(running=1) == "POLICY None False"


@pytest.mark.slow
def test_a_users_policy_wins():
    assert policy(running=3, env_policy="active") == "POLICY active False"


@pytest.mark.parametrize(
    "samples, busy",
    [([1, 1, 1], False), ([1, 2, 1], False), ([2, 2, 1], True), ([3, 3, 3], True), ([None] * 3, False), ([None, 2, None], True)],
)
def test_the_median_sample_decides(samples, busy):
    assert app_module.others_running(samples) is busy


def test_running_now_reads_proc_stat(tmp_path):
    stat = tmp_path / "stat"
    stat.write_text("cpu  1 2 3\nctxt 5\nprocs_running 4\nprocs_blocked 0\n")
    assert app_module.running_now(str(stat)) == 4
    stat.write_text("cpu  1 2 3\n")
    assert app_module.running_now(str(stat)) is None
    assert app_module.running_now(str(tmp_path / "missing")) is None
