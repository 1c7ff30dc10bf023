"""`--precision`: fp32 is the default and exact; bf16 is opt-in, close, and part of embed's resume fingerprint."""

from __future__ import annotations

import numpy as np
import pytest

from clihelpers import assert_clean_failure, jsonl, make_images, run


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    directory = tmp_path_factory.mktemp("photos") / "photos"
    make_images(directory, 3)
    return directory


def scores(result) -> list[list[float]]:
    return [[p["score"] for p in record["predictions"]] for record in jsonl(result.stdout)]


@pytest.mark.slow
def test_bf16_runs_and_stays_close_to_fp32(ckpt, photos):
    common = ["classify", photos, "-m", ckpt, "--format", "jsonl", "--top-k", "10"]
    fp32 = run(common)
    default = run(common[:-2] + ["--top-k", "10", "--precision", "fp32"])
    bf16 = run(common + ["--precision", "bf16"])
    assert fp32.exit_code == default.exit_code == bf16.exit_code == 0, bf16.stderr
    assert fp32.stdout == default.stdout  # fp32 is the default
    exact, approximate = np.sort(scores(fp32), axis=1), np.sort(scores(bf16), axis=1)
    assert not np.array_equal(exact, approximate)  # the option reached the model
    np.testing.assert_allclose(approximate, exact, atol=0.05)


def test_unknown_precision_is_a_usage_error(ckpt, photos):
    result = run(["classify", photos, "-m", ckpt, "--precision", "fp8"])
    assert result.exit_code == 2


def test_library_refuses_unknown_precision(ckpt):
    import bitcli
    from bitcli.errors import UsageError

    with pytest.raises(UsageError, match="unknown precision 'int8'"):
        bitcli.load(str(ckpt), device="cpu", precision="int8")


def test_resume_with_another_precision_is_refused(ckpt, photos, tmp_path, monkeypatch):
    from bitcli.pipeline import Embedder

    def interrupted(self, items):
        raise KeyboardInterrupt
        yield  # pragma: no cover

    monkeypatch.setattr(Embedder, "embed_groups", interrupted)
    out = tmp_path / "o.npy"
    assert run(["embed", photos, "-m", ckpt, "-o", out, "--precision", "bf16"]).exit_code == 130
    monkeypatch.undo()
    result = run(["embed", photos, "-m", ckpt, "-o", out, "--resume", "--precision", "fp32"])
    assert_clean_failure(result, 2)  # given and different: refused
    assert "precision" in result.stderr
    taken = run(["embed", photos, "-m", ckpt, "-o", out, "--resume"])  # not given: the run's own bf16
    assert taken.exit_code == 0, taken.stderr


@pytest.mark.slow
def test_bf16_on_a_cpu_without_bfloat16_units_warns(ckpt, photos, monkeypatch):
    # With the private torch ops off, no CPU counts as having bfloat16 units (engine/native.py).
    monkeypatch.setenv("BIT_TORCH_PRIVATE_OPS", "0")
    result = run(["classify", photos, "-m", ckpt, "--format", "jsonl", "--precision", "bf16"])
    assert result.exit_code == 0
    assert "no native bfloat16" in result.stderr
    assert "no native bfloat16" not in run(["classify", photos, "-m", ckpt, "--format", "jsonl"]).stderr
    monkeypatch.delenv("BIT_TORCH_PRIVATE_OPS")
