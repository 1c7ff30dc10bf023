"""Helpers for the command-line tests: a tiny checkpoint, a folder of images, and the real `bit` app."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from checkpoints import TINY, save_reference_checkpoint, tiny_preprocessor
from images import rgb

NUM_LABELS = 10
LABELS = [f"class {i}" for i in range(NUM_LABELS)]


def make_checkpoint(directory: Path, *, num_labels: int = NUM_LABELS) -> Path:
    """A random transformers BiT (feature dim 32, `num_labels` classes, 32x32 input) in `directory`."""
    save_reference_checkpoint(directory, num_labels=num_labels, preprocessor=tiny_preprocessor(32), **TINY)
    return directory


def make_images(directory: Path, count: int, *, bad: tuple[str, ...] = ()) -> list[Path]:
    """`count` small PNGs named img00.png... (different sizes and contents), plus broken files named in `bad`."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = directory / f"img{i:02d}.png"
        rgb(width=40 + 3 * i, height=36 + 2 * (i % 4), seed=i).save(path)
        paths.append(path)
    for name in bad:
        (directory / name).write_bytes(b"this is not an image")
    return paths


def run(args: list[str], *, input: str | None = None, env: dict[str, str] | None = None):
    """Invoke the real Typer app; stdout and stderr are kept apart (Click >= 8.2)."""
    from bitcli.cli import app

    return CliRunner().invoke(app, [str(a) for a in args], input=input, env=env)


def jsonl(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def assert_clean_failure(result, code: int) -> None:
    """Exit `code`, at least one `error:` line on stderr, no traceback anywhere, nothing else odd."""
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    assert "error" in result.stderr.lower()
