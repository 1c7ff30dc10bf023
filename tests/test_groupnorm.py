"""The channels-last GroupNorm path (bitcli/model/groupnorm.py) against GroupNorm computed in float64."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import bitcli.model.groupnorm as groupnorm
from bitcli.model.groupnorm import group_norm_act, group_stats, row_stats_work

TOLERANCE = 1e-4  # relative to the largest output value


def channels_last(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last)


def norm(channels: int, groups: int, seed: int = 0) -> torch.nn.GroupNorm:
    module = torch.nn.GroupNorm(groups, channels, eps=1e-5)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        module.weight.copy_(1 + 0.5 * torch.randn(channels, generator=generator))
        module.bias.copy_(0.5 * torch.randn(channels, generator=generator))
    return module.requires_grad_(False)


def float64_reference(x: torch.Tensor, module: torch.nn.GroupNorm, act=torch.relu) -> torch.Tensor:
    return act(F.group_norm(x.double(), module.num_groups, module.weight.double(), module.bias.double(), module.eps))


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    return ((got.double() - expected).abs().max() / expected.abs().max()).item()


def hard_inputs() -> dict[str, torch.Tensor]:
    """Inputs whose groups have a variance tiny next to their mean, or many equal values."""
    generator = torch.Generator().manual_seed(0)
    flat = torch.full((2, 64, 56, 56), 3.0)
    flat[:, :, 0, :] = -1.0  # a border row that differs, as a convolution's zero padding makes
    return {
        "issue example": 5 + 1e-3 * torch.randn(1, 64, 56, 56, generator=generator),
        "flat with a border": flat,
        "per-channel offsets": (
            torch.arange(64.0).view(1, 64, 1, 1) * 10 + 1e-2 * torch.randn(3, 64, 28, 29, generator=generator)
        ),
        "ordinary": torch.randn(2, 32, 17, 13, generator=generator),
    }


@pytest.mark.parametrize("name", list(hard_inputs()))
def test_channels_last_path_matches_float64_where_the_native_kernel_does_not(name):
    x = channels_last(hard_inputs()[name])
    module = norm(x.shape[1], 32 if x.shape[1] == 64 else 8)
    expected = float64_reference(x, module)
    with torch.inference_mode():
        got = group_norm_act(x, module, torch.nn.ReLU(inplace=True))
    assert got.is_contiguous(memory_format=torch.channels_last)
    assert relative_error(got, expected) <= TOLERANCE


def test_the_native_channels_last_kernel_really_is_wrong_on_the_issue_example():
    """Guards the premise: if PyTorch fixes its kernel, this path may no longer be needed."""
    x = channels_last(hard_inputs()["issue example"])
    module = norm(64, 32)
    native = torch.relu(F.group_norm(x, 32, module.weight, module.bias, module.eps))
    assert relative_error(native, float64_reference(x, module)) > 1e-2


@pytest.mark.parametrize("method", ["rows", "sums"])
def test_both_statistics_methods_match_float64(method):
    x = channels_last(hard_inputs()["per-channel offsets"])
    mean, var = group_stats(x, 8, method)
    groups = x.double().contiguous().view(x.shape[0], 8, -1)
    assert torch.allclose(mean, groups.mean(dim=2), rtol=1e-7, atol=0)
    assert torch.allclose(var, groups.var(dim=2, correction=0), rtol=1e-5, atol=0)


def test_inplace_overwrites_the_input_only_when_asked():
    x = channels_last(hard_inputs()["ordinary"])
    module = norm(32, 8)
    kept = x.clone()
    with torch.inference_mode():
        out = group_norm_act(x, module, torch.nn.ReLU(inplace=True))
        assert torch.equal(x, kept) and out.data_ptr() != x.data_ptr()
        again = group_norm_act(x, module, torch.nn.ReLU(inplace=True), inplace=True)
    assert again.data_ptr() == x.data_ptr()
    assert torch.equal(again, out)


@pytest.mark.parametrize(
    "act, reference",
    [(torch.nn.GELU(), F.gelu), (torch.nn.Identity(), lambda t: t)],
    ids=["gelu", "no activation"],
)
def test_other_activations(act, reference):
    x = channels_last(hard_inputs()["flat with a border"])
    module = norm(64, 32)
    with torch.inference_mode():
        got = group_norm_act(x, module, act)
    assert relative_error(got, float64_reference(x, module, reference)) <= TOLERANCE


def test_contiguous_input_and_training_take_pytorchs_kernel():
    module = norm(32, 8)
    x = hard_inputs()["ordinary"]
    assert not groupnorm.takes_accurate_path(x)  # NCHW: the contiguous kernel is accurate already
    y = channels_last(x).requires_grad_(True)
    assert not groupnorm.takes_accurate_path(y)
    out = group_norm_act(y, module, torch.nn.ReLU())
    out.sum().backward()  # autograd works: the native kernel has a backward
    assert y.grad is not None and y.grad.shape == y.shape
    with torch.no_grad():
        assert groupnorm.takes_accurate_path(y)


def test_missing_statistics_op_falls_back_to_cascade_sums(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no such op")

    row_stats_work.cache_clear()
    monkeypatch.setattr(torch, "batch_norm_update_stats", broken)
    try:
        assert not row_stats_work()
        x = channels_last(hard_inputs()["issue example"])
        module = norm(64, 32)
        with torch.inference_mode():
            got = group_norm_act(x, module, torch.nn.ReLU(inplace=True))
        assert relative_error(got, float64_reference(x, module)) <= TOLERANCE
    finally:
        row_stats_work.cache_clear()


def test_pooling_of_a_channels_last_map_is_accurate():
    """The model's other reduction: the global average pool (float32, channels-last input)."""
    generator = torch.Generator().manual_seed(1)
    x = channels_last(7 + 1e-3 * torch.randn(2, 64, 56, 56, generator=generator))
    pooled = x.mean(dim=(2, 3), dtype=torch.float32)
    expected = x.double().mean(dim=(2, 3))
    assert ((pooled.double() - expected).abs() / expected.abs()).max().item() <= 1e-6


@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float32])
def test_bfloat16_input_gets_float32_statistics(out_dtype):
    """bf16 mode: bfloat16 activations, float32 parameters, statistics as accurate as float32's."""
    generator = torch.Generator().manual_seed(2)
    x = channels_last((50 + 0.3 * torch.randn(2, 64, 28, 28, generator=generator)).to(torch.bfloat16))
    module = norm(64, 32)
    assert groupnorm.takes_accurate_path(x, module)
    mean, var = group_stats(x, 32)
    groups = x.double().contiguous().view(2, 32, -1)
    assert torch.allclose(mean, groups.mean(dim=2), rtol=1e-7, atol=0)
    assert torch.allclose(var, groups.var(dim=2, correction=0), rtol=1e-5, atol=0)
    with torch.inference_mode():
        got = group_norm_act(x, module, torch.nn.ReLU(inplace=True), out_dtype=out_dtype)
    assert got.dtype == out_dtype and got.is_contiguous(memory_format=torch.channels_last)
    # bfloat16 output keeps 8 bits: its rounding is the only error left.
    tolerance = 1e-2 if out_dtype == torch.bfloat16 else 1e-5
    assert relative_error(got, float64_reference(x, module)) <= tolerance


def test_float32_input_to_bfloat16_output():
    """bf16 mode's first norm: the float32 stem's output in, bfloat16 for the convolutions out."""
    x = channels_last(hard_inputs()["flat with a border"])
    module = norm(64, 32)
    with torch.inference_mode():
        got = group_norm_act(x, module, torch.nn.ReLU(inplace=True), out_dtype=torch.bfloat16)
    assert got.dtype == torch.bfloat16
    assert relative_error(got, float64_reference(x, module)) <= 1e-2
