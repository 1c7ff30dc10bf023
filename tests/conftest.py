"""Shared test fixtures: every test runs with a private, empty Hugging Face cache and no network."""

from __future__ import annotations

import signal

import pytest

# A suite started as a background job of a non-interactive shell (`./dev test &`, nohup, some CI
# runners) inherits SIGINT ignored, and Python then installs no KeyboardInterrupt handler, in
# this process or in the `bit` processes the tests start: every Ctrl-C test would see nothing.
# A Python-level handler here is reset to the default at exec, so the children get theirs too.
signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(autouse=True)
def isolated_hf_home(tmp_path_factory, monkeypatch):
    """Point every cache variable at a fresh temp dir so no test touches the real home cache."""
    home = tmp_path_factory.mktemp("hf_home")
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.delenv("BIT_MODEL", raising=False)
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    # Any hub call that a test did not set up for must fail fast instead of reaching the internet.
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    return home


@pytest.fixture(autouse=True)
def torch_threads_restored():
    """`bit ... --threads N` run in this process sets torch's thread count for the whole process,
    as the command may; the next test gets the count it had before (otherwise the engine picks
    another convolution path, and a later `--resume` in this process refuses a run's partial
    output made by a `bit` subprocess)."""
    import torch

    before = torch.get_num_threads()
    yield
    if torch.get_num_threads() != before:
        torch.set_num_threads(before)


@pytest.fixture(scope="session")
def ckpt(tmp_path_factory):
    """A tiny random transformers BiT checkpoint shared by the CLI and pipeline tests.

    Read-only: a test that needs to change a checkpoint makes its own with `make_checkpoint`.
    """
    from clihelpers import make_checkpoint

    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny")
