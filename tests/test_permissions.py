"""Permission denied for real, also under root (as CI runs): a subprocess gives up the
capabilities that let root ignore file modes (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH)."""

from __future__ import annotations

import ctypes
import json
import subprocess
import sys
from pathlib import Path

import pytest

from images import rgb

PR_CAPBSET_DROP = 24
CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 1, 2

SCRIPT = """
import json, sys
from bitcli.decode import open_image
from bitcli.errors import InputError
from bitcli.inputs import expand_inputs

report = {"expanded": [], "decoded": {}}
for entry in expand_inputs([sys.argv[1]]):
    if isinstance(entry, InputError):
        report["expanded"].append([entry.path, entry.reason])
        continue
    report["expanded"].append([entry.path, None])
    try:
        report["decoded"][entry.path] = list(open_image(entry.path).size)
    except InputError as error:
        report["decoded"][entry.path] = error.reason
print(json.dumps(report))
"""


def without_file_mode_override() -> None:
    """preexec_fn: drop both capabilities from the bounding set, so the exec'd process lacks them."""
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
        if libc.prctl(PR_CAPBSET_DROP, capability, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


def run_restricted(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], preexec_fn=without_file_mode_override, capture_output=True, text=True
    )


@pytest.mark.skipif(sys.platform != "linux", reason="Linux capabilities")
def test_unreadable_file_and_folder_are_reported_and_the_rest_goes_on(tmp_path):
    rgb(width=20, height=10).save(tmp_path / "a_ok.png")
    rgb(width=20, height=10).save(tmp_path / "b_secret.png")
    (tmp_path / "b_secret.png").chmod(0)
    (tmp_path / "c_locked").mkdir()
    rgb(width=20, height=10).save(tmp_path / "c_locked" / "inside.png")
    (tmp_path / "c_locked").chmod(0)
    rgb(width=30, height=10).save(tmp_path / "d_ok.png")
    try:
        probe = run_restricted("-c", f"open({str(tmp_path / 'b_secret.png')!r}, 'rb')")
        if "PermissionError" not in probe.stderr:
            pytest.skip(f"file modes do not apply here: {probe.stderr[-200:] or 'the file was readable'}")
        done = run_restricted("-c", SCRIPT, str(tmp_path))
    finally:
        (tmp_path / "c_locked").chmod(0o755)  # so pytest can clean up
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    expanded = {Path(path).name: reason for path, reason in report["expanded"]}
    assert expanded["c_locked"] == "permission denied"
    decoded = {Path(path).name: value for path, value in report["decoded"].items()}
    assert decoded == {"a_ok.png": [20, 10], "b_secret.png": "permission denied", "d_ok.png": [30, 10]}
