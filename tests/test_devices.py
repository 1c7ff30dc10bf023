"""--device parsing and resolution, and what the engine does per device (no GPU needed: the
decision is a function of the device type; real CUDA runs are untested here)."""

from __future__ import annotations

import pytest
import torch

from bitcli.engine import runtime as engine
from bitcli.engine.plan import DeviceSpec, parse_device, resolve_device
from bitcli.engine.plan import check_precision, make_plan
from bitcli.errors import UsageError
from clihelpers import run


@pytest.mark.parametrize(
    "text, expected",
    [
        ("auto", DeviceSpec("auto")),
        ("cpu", DeviceSpec("cpu")),
        ("cuda", DeviceSpec("cuda")),
        ("cuda:0", DeviceSpec("cuda", 0)),
        ("cuda:12", DeviceSpec("cuda", 12)),
        (" CUDA:1 ", DeviceSpec("cuda", 1)),
        ("mps", DeviceSpec("mps")),
    ],
)
def test_device_values_that_parse(text, expected):
    assert parse_device(text) == expected


@pytest.mark.parametrize(
    "text", ["tpu", "gpu", "", "cuda:", "cuda:-1", "cuda:x", "cuda:1:2", "cpu:0", "mps:1", "cuda 1"]
)
def test_device_values_that_do_not(text):
    with pytest.raises(UsageError, match="use auto, cpu, cuda, cuda:N or mps"):
        parse_device(text)


def fake_gpus(monkeypatch, count: int) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


def test_cuda_index_resolves_when_the_machine_has_it(monkeypatch):
    fake_gpus(monkeypatch, 2)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert resolve_device("auto") == torch.device("cuda")
    with pytest.raises(UsageError, match=r"--device cuda:2: this machine has 2 CUDA device\(s\) \(cuda:0 to cuda:1\)"):
        resolve_device("cuda:2")


def test_no_cuda_is_a_usage_error_naming_the_way_out(monkeypatch):
    fake_gpus(monkeypatch, 0)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(UsageError, match="--device cuda:0: CUDA is not available.*use --device cpu"):
        resolve_device("cuda:0")


@pytest.mark.slow
@pytest.mark.parametrize("value", ["cuda:x", "tpu"])
def test_bad_device_on_the_command_line_is_one_line_and_exit_2(ckpt, tmp_path, value):
    result = run(["classify", tmp_path / "none.png", "-m", ckpt, "--device", value])
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.strip().splitlines() == [f"error: --device '{value}': use auto, cpu, cuda, cuda:N or mps"]


def test_fp16_on_a_cpu_is_a_usage_error(ckpt, tmp_path):
    result = run(["classify", tmp_path / "none.png", "-m", ckpt, "--device", "cpu", "--precision", "fp16"])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        "error: precision fp16 runs on GPUs only (CPUs have no fast fp16 convolutions); use bf16 on a CPU"
    ]


# -- the engine's decision per device ---------------------------------------------------------


def test_cpu_plan_uses_the_cpu_machinery():
    plan = make_plan("cpu", "fp32", chunk_bytes=8 << 20)
    assert plan.channels_last and plan.chunk_bytes == 8 << 20 and plan.direct_onednn
    assert not plan.cpu_bfloat16 and plan.autocast is None and plan.allow_tf32 is None
    assert make_plan("cpu", "bf16", chunk_bytes=1).cpu_bfloat16
    assert not make_plan("cpu", "fp32", compile=True).direct_onednn


@pytest.mark.parametrize("device", ["cuda", "mps"])
@pytest.mark.parametrize("precision, autocast", [("fp32", None), ("bf16", "bfloat16"), ("fp16", "float16")])
def test_gpu_plans_use_nothing_cpu_specific(device, precision, autocast):
    plan = make_plan(device, precision, chunk_bytes=8 << 20)
    assert plan.chunk_bytes is None and not plan.direct_onednn and not plan.cpu_bfloat16
    assert plan.autocast == autocast
    assert plan.channels_last == (autocast is not None)
    # fp32 on CUDA must not use TF32 convolutions (~1e-3 off); the half precisions may.
    assert plan.allow_tf32 == ((precision != "fp32") if device == "cuda" else None)


def test_fp16_is_checked_against_the_device_only_once_it_is_known():
    from bitcli.pipeline import RunOptions

    assert RunOptions(device="cuda", precision="fp16").precision == "fp16"  # a GPU run may ask for it
    check_precision("fp16")
    check_precision("fp16", "cuda")
    with pytest.raises(ValueError, match="GPUs only"):
        check_precision("fp16", "cpu")


def test_fp16_on_cpu_and_unknown_precisions_are_refused():
    with pytest.raises(ValueError, match="GPUs only"):
        make_plan("cpu", "fp16")
    with pytest.raises(ValueError, match="unknown precision 'fp8'"):
        make_plan("cuda", "fp8")


@pytest.fixture
def keep_tf32():
    saved = torch.backends.cudnn.allow_tf32
    yield
    torch.backends.cudnn.allow_tf32 = saved


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_engine_applies_a_cuda_plan(ckpt, monkeypatch, keep_tf32, precision):
    """A CPU model prepared with the CUDA plan (the only part checkable without a GPU): no
    slicing, no oneDNN calls, no bfloat16 weights; autocast for bf16 (run here as CPU autocast)."""
    from bitcli.checkpoint import load_model
    from bitcli.engine.slicing import SlicedBackbone
    from bitcli.model.architecture import StdConv2d

    plain = load_model(ckpt, optimize=False).model
    model = load_model(ckpt, optimize=False).model
    monkeypatch.setattr(engine, "make_plan", lambda device_type, *a, **k: make_plan("cuda", *a, **k))
    engine.prepare(model, precision=precision)
    assert not isinstance(model.bit, SlicedBackbone)
    assert not any(m.onednn for m in model.modules() if isinstance(m, StdConv2d))
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert model.autocast_dtype == (torch.bfloat16 if precision == "bf16" else None)
    if precision == "fp32":
        assert torch.backends.cudnn.allow_tf32 is False
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        got, expected = model(pixels), plain(pixels)
    assert got.pooled.dtype == torch.float32 and got.logits.dtype == torch.float32
    tolerance = 1e-4 if precision == "fp32" else 0.1
    assert (got.logits - expected.logits).abs().max().item() <= tolerance * max(1.0, expected.logits.abs().max().item())
