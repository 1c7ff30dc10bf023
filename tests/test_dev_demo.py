"""`./dev demo` without a network: one line saying google/bit-50 is not reachable, then the bundled
bit-digits model classifying sample_digits/, exit 0.

The script runs for real against a stand-in environment (BIT_DEV_VENV): its python is this one,
its `bit` runs this checkout, and its install stamp is current, so nothing is installed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from relhelpers import ROOT, bit_env


@pytest.mark.slow
def test_demo_falls_back_to_the_bundled_model_offline(tmp_path):
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(sys.executable)
    bit = venv / "bin" / "bit"
    bit.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m bitcli "$@"\n')
    bit.chmod(0o755)
    stamp = venv / ".installed"
    stamp.touch()
    later = time.time() + 60
    os.utime(stamp, (later, later))  # newer than pyproject.toml: no install
    env = bit_env(BIT_DEV_VENV=str(venv), HF_ENDPOINT="http://127.0.0.1:9")
    done = subprocess.run(["sh", str(ROOT / "dev"), "demo"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "google/bit-50 is not reachable" in lines[0] and "bit-digits" in lines[0]
    records = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(records) == 20 and all(r["path"].startswith("sample_digits/") for r in records)
    right = sum(r["predictions"][0]["label"] == r["path"].split("/")[1] for r in records)
    assert right >= 18  # real answers from trained weights
