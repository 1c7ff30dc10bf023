"""GroupNorm (+ its activation) that stays accurate on channels-last CPU tensors.

PyTorch's channels-last CPU kernel sums a whole group in float32 and takes E[x^2] - E[x]^2
(pytorch/pytorch#54293): it cancels where the variance is small next to the mean and drifts by
~1e-4 on flat images; converting to NCHW costs 4-7x the norm. Here (docs/engine.md):

1. Statistics: `torch.batch_norm_update_stats` (two passes, no cancellation) over each image's
   NHWC memory viewed as H rows of W * C columns, so each float32 sum covers only H values;
   the column statistics are combined per group in float64, exactly.
2. Apply: one fused `x * scale + shift` per element (scale and shift in float64, rounded once),
   in place where the input is fresh, then the activation in place.

As fast as the native kernel and as accurate as the contiguous one. Tensors that need
gradients, contiguous tensors and other devices take `F.group_norm`."""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def group_norm_act(
    x: Tensor, norm: nn.GroupNorm, act: nn.Module, *, inplace: bool = False, out_dtype: torch.dtype | None = None
) -> Tensor:
    """act(group_norm(x)) with `norm`'s parameters, as `out_dtype` (None: x's); `inplace`: x may be overwritten."""
    out_dtype = out_dtype or x.dtype
    if not takes_accurate_path(x, norm):
        y = act(F.group_norm(x, norm.num_groups, norm.weight, norm.bias, norm.eps))
        return y.to(out_dtype)
    mean, var = group_stats(x, norm.num_groups)
    if x.dtype == torch.bfloat16 and out_dtype == torch.float32:  # bf16 mode's final norm
        x, inplace = x.to(torch.float32), True
    out = x if inplace else torch.empty_like(x, memory_format=torch.channels_last)
    if x.dtype == torch.float32:
        scale, shift = scale_and_shift(mean, var, norm, torch.float32)
        y = torch.addcmul(shift, x, scale, out=out)
    else:
        y = _apply_bfloat16(x, norm, mean, var, out)
    if isinstance(act, nn.ReLU):
        y = y.to(out_dtype).relu_() if out_dtype.itemsize < y.dtype.itemsize else y.relu_().to(out_dtype)
    elif not isinstance(act, nn.Identity):
        y = act(y)
    return y.to(out_dtype)


def _apply_bfloat16(x: Tensor, norm: nn.GroupNorm, mean: Tensor, var: Tensor, out: Tensor) -> Tensor:
    """The normalization of a bfloat16 `x` into `out`, an image at a time, through batch norm's fast
    mixed-precision inference kernel with the group statistics as its running statistics (exact)."""
    channels = x.shape[1]
    mean = _per_channel(mean, channels).flatten(1).to(torch.float32)
    var = _per_channel(var, channels).flatten(1).to(torch.float32)
    unused = torch.empty(0)
    for index in range(x.shape[0]):
        image = slice(index, index + 1)
        torch.ops.aten.native_batch_norm.out(
            x[image], norm.weight, norm.bias, mean[index], var[index], False, 0.0, norm.eps,
            out=out[image], save_mean=unused, save_invstd=unused,
        )
    return out


def takes_accurate_path(x: Tensor, norm: nn.GroupNorm | None = None) -> bool:
    """Channels-last (not contiguous) 4-D float32/bfloat16 CPU tensor, no gradient, float32 affine."""
    return (
        x.device.type == "cpu"
        and (x.dtype == torch.float32 or (x.dtype == torch.bfloat16 and bfloat16_path_works()))
        and (norm is None or norm.weight.dtype == torch.float32)
        and x.dim() == 4
        and not x.is_contiguous()
        and x.is_contiguous(memory_format=torch.channels_last)
        and not (x.requires_grad and torch.is_grad_enabled())
    )


def group_stats(x: Tensor, groups: int, method: str | None = None) -> tuple[Tensor, Tensor]:
    """(mean, biased variance) float64 [N, G] of a channels-last tensor; "rows" or the "sums" fallback."""
    method = method or ("rows" if row_stats_work(x.dtype) else "sums")
    return _row_stats(x, groups) if method == "rows" else _sum_stats(x, groups)


MAX_ROWS = 128  # longest float32 running sum per column: worst case 128 * 2^-24 ~ 8e-6 relative


def _row_stats(x: Tensor, groups: int) -> tuple[Tensor, Tensor]:
    n, c, h, w = x.shape
    # [N, C, H, W] channels-last memory is [N][H][W][C]. Split W into (W / k) x k and view each
    # image as a channels-last [1, k*C, H*W/k, 1] tensor: its "channels" are k*C columns, each
    # summing H*W/k <= MAX_ROWS values (few columns keep the float64 combine below cheap).
    k = next((d for d in range(1, w + 1) if w % d == 0 and h * (w // d) <= MAX_ROWS), w)
    rows = x.permute(0, 2, 3, 1).reshape(n, h * (w // k), 1, k * c)
    # For bfloat16 input, float32 running statistics make the kernel accumulate and return
    # float32 (its "mixed type" path); with momentum 0 they are left as they are.
    running = _dummy_running_stats(k * c) if x.dtype != torch.float32 else (None, None)
    stats = [torch.batch_norm_update_stats(rows[i : i + 1].permute(0, 3, 1, 2), *running, 0.0) for i in range(n)]
    if n == 1:
        column_means, column_vars = stats[0]
    else:
        column_means, column_vars = torch.stack([m for m, _ in stats]), torch.stack([v for _, v in stats])
    # Per group, in float64: mean = E[column mean]; variance = E[column variance + column
    # mean^2] - mean^2 (float64 keeps ~8 digits even where mean^2 is 1e8 x the variance).
    # Summing over the k columns of a channel first keeps the reductions contiguous (fast).
    means = column_means.to(torch.float64).view(n, k, c)
    squares = torch.addcmul(column_vars.to(torch.float64).view(n, k, c), means, means)
    count = k * (c // groups)
    mean = means.sum(dim=1).view(n, groups, -1).sum(dim=2).div_(count)
    square = squares.sum(dim=1).view(n, groups, -1).sum(dim=2).div_(count)
    return mean, square.sub_(mean * mean).clamp_(min=0)


@lru_cache(maxsize=64)
def _dummy_running_stats(size: int) -> tuple[Tensor, Tensor]:
    """float32 zeros and ones the kernel "updates" with momentum 0. It writes them (with their
    own values, or NaN after an input holding inf), but nothing ever reads them."""
    return torch.zeros(size), torch.ones(size)


def _sum_stats(x: Tensor, groups: int) -> tuple[Tensor, Tensor]:
    """The corrected two-pass algorithm (Chan, Golub and LeVeque): the float32 deviations from
    a first mean still sum to the small error of that mean, which is added back."""
    n, c, h, w = x.shape
    count = h * w * (c // groups)
    mean = _group_sums(x, groups) / count
    deviations = torch.sub(x, _per_channel(mean, c).to(torch.float32))  # float32 even for bfloat16 x
    correction = _group_sums(deviations, groups) / count
    var = _group_sums(deviations.square_(), groups) / count - correction.square()
    return mean + correction, var


def _group_sums(x: Tensor, groups: int) -> Tensor:
    """Per image and group, float64 [N, G]: cascade sums over H * W, then over the group."""
    n, c, h, w = x.shape
    per_channel = x.permute(0, 2, 3, 1).reshape(n, h * w, c).sum(dim=1, dtype=torch.float32)
    return per_channel.to(torch.float64).view(n, groups, c // groups).sum(dim=2)


def _per_channel(values: Tensor, channels: int) -> Tensor:
    """[N, G] -> [N, C, 1, 1], each group's value repeated over its channels."""
    n, groups = values.shape
    return values.unsqueeze(2).expand(n, groups, channels // groups).reshape(n, channels, 1, 1)


def scale_and_shift(mean: Tensor, var: Tensor, norm: nn.GroupNorm, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """[N, C, 1, 1] scale and shift with group_norm(x) == x * scale + shift, computed in float64."""
    n, groups = mean.shape
    weight = norm.weight.to(torch.float64).view(1, groups, -1)
    bias = norm.bias.to(torch.float64).view(1, groups, -1)
    scale = weight * var.add(norm.eps).rsqrt_().unsqueeze(2)  # [N, G, C/G]
    shift = torch.addcmul(bias, mean.unsqueeze(2), scale, value=-1)
    return scale.view(n, -1, 1, 1).to(dtype), shift.view(n, -1, 1, 1).to(dtype)


@lru_cache(maxsize=4)
def row_stats_work(dtype: torch.dtype = torch.float32) -> bool:
    """Whether `torch.batch_norm_update_stats` exists and gives float64's numbers for `dtype` (probed once)."""
    generator = torch.Generator().manual_seed(0)
    x = (5 + 1e-2 * torch.randn(2, 8, 6, 5, generator=generator)).to(dtype)
    x = x.contiguous(memory_format=torch.channels_last)
    try:
        mean, var = _row_stats(x, 4)
    except (AttributeError, RuntimeError, TypeError):
        return False
    groups = x.double().contiguous().view(2, 4, -1)
    expected_mean, expected_var = groups.mean(dim=2), groups.var(dim=2, correction=0)
    return bool(
        torch.allclose(mean, expected_mean, rtol=1e-6, atol=0)
        and torch.allclose(var, expected_var, rtol=1e-3, atol=0)
    )


@lru_cache(maxsize=1)
def bfloat16_path_works() -> bool:
    """Whether the bfloat16 statistics and apply (batch norm's mixed-type kernels) exist here
    and give GroupNorm's numbers to bfloat16 precision; if not, bfloat16 takes PyTorch's kernel."""
    generator = torch.Generator().manual_seed(0)
    x = (3 + torch.randn(2, 8, 6, 5, generator=generator)).to(torch.bfloat16)
    x = x.contiguous(memory_format=torch.channels_last)
    norm = nn.GroupNorm(4, 8)
    try:
        with torch.no_grad():
            mean, var = group_stats(x, 4, "rows" if row_stats_work(torch.bfloat16) else "sums")
            got = _apply_bfloat16(x, norm, mean, var, torch.empty_like(x))
    except (AttributeError, RuntimeError, TypeError):
        return False
    expected = F.group_norm(x.double(), 4, norm.weight.double(), norm.bias.double(), norm.eps)
    return got.dtype == torch.bfloat16 and bool(((got.double() - expected).abs().max() <= 2e-2).item())
