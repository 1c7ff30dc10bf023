"""The `bit` process lets idle OpenMP threads sleep (cli/app.py settle_openmp): set before torch
loads, a user's own OMP_WAIT_POLICY kept. (Its effect is a timing, measured in docs/engine.md,
not asserted here.)"""

from __future__ import annotations

import os
import subprocess
import sys

CHILD = """
import os, sys
from bitcli.cli import main
try:
    main(["models"])
except SystemExit:
    pass
print("POLICY", os.environ.get("OMP_WAIT_POLICY"), "torch" in sys.modules)
"""


def policy(env_policy: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if env_policy is not None:
        env["OMP_WAIT_POLICY"] = env_policy
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, env=env, check=True).stdout
    return out.strip().splitlines()[-1]


def test_bit_sets_a_passive_wait_policy_before_torch_loads():
    assert policy(None) == "POLICY PASSIVE False"


def test_a_users_policy_wins():
    assert policy("active") == "POLICY active False"
