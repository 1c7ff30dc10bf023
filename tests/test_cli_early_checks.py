"""Bad settings fail before torch is imported: --device, BIT_HUB_TIMEOUT, BIT_MODEL / --model.

Each case runs the real `bit` entry point in a child process and reports, after it exits,
whether torch was ever imported: a check that waited for the model to load would show it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
CHILD = """
import sys
from bitcli.cli import main
try:
    main(sys.argv[1:])
except SystemExit as exit:
    print("EXIT", exit.code, "torch" in sys.modules)
"""


def run_bit(args: list[str], tmp_path: Path, **env: str) -> tuple[str, str]:
    environment = {key: value for key, value in os.environ.items() if key != "BIT_MODEL"}
    environment.update(PYTHONPATH=str(ROOT), **env)
    done = subprocess.run(
        [sys.executable, "-c", CHILD, *args], cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=120
    )
    return done.stdout.strip().splitlines()[-1] if done.stdout.strip() else "no EXIT line (os._exit: torch was loaded)", done.stderr


@pytest.fixture
def photo(tmp_path):
    from PIL import Image

    Image.new("RGB", (8, 8), "red").save(tmp_path / "a.png")
    return str(tmp_path / "a.png")


CASES = [
    pytest.param(["classify", "{photo}", "--device", "tpu"], {}, 2, "--device", id="classify --device tpu"),
    pytest.param(["classify", "{photo}", "--device", "cuda:x"], {}, 2, "--device", id="classify --device cuda:x"),
    pytest.param(["classify", "{photo}"], {"BIT_HUB_TIMEOUT": "soon"}, 2, "BIT_HUB_TIMEOUT", id="classify BIT_HUB_TIMEOUT"),
    pytest.param(["classify", "{photo}"], {"BIT_MODEL": "./nowhere"}, 3, "./nowhere", id="classify BIT_MODEL"),
    pytest.param(["classify", "{photo}", "-m", "not a model"], {}, 3, "not a model", id="classify -m malformed"),
    pytest.param(["classify", "{photo}", "-m", "bit-digits", "--labels", "nowhere.txt"], {}, 2, "--labels", id="classify --labels missing"),
    pytest.param(["embed", "{photo}", "-o", "out.npy", "--device", "tpu"], {}, 2, "--device", id="embed --device"),
    pytest.param(["eval", ".", "-m", "./nowhere"], {}, 3, "./nowhere", id="eval -m missing"),
    pytest.param(["train", ".", "-o", "model", "--device", "tpu"], {}, 2, "--device", id="train --device"),
    pytest.param(["train", ".", "-o", "model"], {"BIT_HUB_TIMEOUT": "-1"}, 2, "BIT_HUB_TIMEOUT", id="train BIT_HUB_TIMEOUT"),
]


@pytest.mark.parametrize("args, env, code, named", CASES)
def test_a_bad_setting_fails_before_torch_is_imported(args, env, code, named, photo, tmp_path):
    args = [arg.replace("{photo}", photo) for arg in args]
    last, stderr = run_bit(args, tmp_path, **env)
    assert last == f"EXIT {code} False", (last, stderr)
    assert stderr.startswith("error: ") and stderr.count("\n") == 1 and named in stderr, stderr
