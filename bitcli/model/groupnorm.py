"""GroupNorm (+ its activation) that stays accurate on channels-last CPU tensors.

Why: PyTorch's CPU GroupNorm kernel for channels-last (NHWC) input sums x and x^2 of a whole
group in float32, one value after another, and takes E[x^2] - E[x]^2 (pytorch/pytorch#54293).
Where a group's variance is small next to its mean the difference cancels (`GroupNorm(32, 64)`
on `5 + 1e-3 * randn` is off by 0.5); and on flat images, whose many equal values round the
same way at every addition, the long sums alone drift by ~1e-4 relative. The contiguous
kernel (cascade Welford) has neither problem, but converting every activation to NCHW and
back costs 4-7x the GroupNorm itself.

How (measured against five alternatives in the issue 11 note):

1. Statistics: `torch.batch_norm_update_stats`, PyTorch's two-pass batch-norm statistics
   kernel (a mean pass, then a pass over (x - mean)^2: no cancellation), vectorized along the
   contiguous channel axis. It is given each image's NHWC memory viewed as H rows of W * C
   columns, so each float32 running sum covers only H values (<= a few hundred, not H * W);
   the W * C column means and variances are then combined per group in float64, exactly
   (mean of the variances plus variance of the means).
2. Apply: one fused multiply-add per element (`x * scale + shift`, scale and shift per image
   and channel, computed in float64 and rounded once), in place where the caller says the
   input is a fresh tensor nobody reads again, then the activation in place.

Same speed as the native kernel in the engine's forward pass (its statistics pass is the slow
part of the native kernel too), and as accurate as the contiguous kernel against float64.
Tensors that need gradients, contiguous tensors and non-CPU devices take `F.group_norm`.
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def group_norm_act(x: Tensor, norm: nn.GroupNorm, act: nn.Module, *, inplace: bool = False) -> Tensor:
    """act(group_norm(x)) with `norm`'s groups, weight, bias and eps.

    inplace: `x` may be overwritten (a fresh tensor nobody reads again).
    """
    if not takes_accurate_path(x):
        return act(F.group_norm(x, norm.num_groups, norm.weight, norm.bias, norm.eps))
    mean, var = group_stats(x, norm.num_groups)
    scale, shift = scale_and_shift(mean, var, norm.weight, norm.bias, norm.eps, x.dtype)
    y = torch.addcmul(shift, x, scale, out=x) if inplace else torch.addcmul(shift, x, scale)
    if isinstance(act, nn.ReLU):
        return y.relu_()
    return y if isinstance(act, nn.Identity) else act(y)


def takes_accurate_path(x: Tensor) -> bool:
    """Channels-last (and not also contiguous) 4-D float32 CPU tensor, no gradient wanted."""
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and x.dim() == 4
        and not x.is_contiguous()
        and x.is_contiguous(memory_format=torch.channels_last)
        and not (x.requires_grad and torch.is_grad_enabled())
    )


def group_stats(x: Tensor, groups: int, method: str | None = None) -> tuple[Tensor, Tensor]:
    """(mean, biased variance) per image and group, float64 [N, G], of a channels-last tensor.

    method: "rows" (batch-norm statistics over H rows, the default where it works) or
    "sums" (cascade-summed passes of torch.sum; slower, the fallback where the first is missing).
    """
    method = method or ("rows" if row_stats_work() else "sums")
    return _row_stats(x, groups) if method == "rows" else _sum_stats(x, groups)


def _row_stats(x: Tensor, groups: int) -> tuple[Tensor, Tensor]:
    n, c, h, w = x.shape
    means, variances = [], []
    for image in x.split(1):
        # [1, C, H, W] channels-last memory is [H][W][C]: view it as a channels-last
        # [1, W*C, H, 1] tensor, whose "channels" are the W*C columns and whose rows are H.
        columns = image.permute(0, 2, 3, 1).reshape(1, h, 1, w * c).permute(0, 3, 1, 2)
        mean, var = torch.batch_norm_update_stats(columns, None, None, 0.0)
        means.append(mean)
        variances.append(var)
    column_means = torch.stack(means).to(torch.float64).view(n, w, groups, c // groups)
    column_vars = torch.stack(variances).to(torch.float64).view(n, w, groups, c // groups)
    mean = column_means.mean(dim=(1, 3))
    spread = (column_means - mean[:, None, :, None]).square_().mean(dim=(1, 3))
    return mean, column_vars.mean(dim=(1, 3)) + spread


def _sum_stats(x: Tensor, groups: int) -> tuple[Tensor, Tensor]:
    """The corrected two-pass algorithm (Chan, Golub and LeVeque): the float32 deviations from
    a first mean still sum to the small error of that mean, which is added back."""
    n, c, h, w = x.shape
    count = h * w * (c // groups)
    mean = _group_sums(x, groups) / count
    deviations = torch.sub(x, _per_channel(mean, c).to(x.dtype))
    correction = _group_sums(deviations, groups) / count
    var = _group_sums(deviations.square_(), groups) / count - correction.square()
    return mean + correction, var


def _group_sums(x: Tensor, groups: int) -> Tensor:
    """Per image and group, float64 [N, G]: cascade sums over H * W, then over the group."""
    n, c, h, w = x.shape
    per_channel = x.permute(0, 2, 3, 1).reshape(n, h * w, c).sum(dim=1)
    return per_channel.to(torch.float64).view(n, groups, c // groups).sum(dim=2)


def _per_channel(values: Tensor, channels: int) -> Tensor:
    """[N, G] -> [N, C, 1, 1], each group's value repeated over its channels."""
    n, groups = values.shape
    return values.unsqueeze(2).expand(n, groups, channels // groups).reshape(n, channels, 1, 1)


def scale_and_shift(
    mean: Tensor, var: Tensor, weight: Tensor, bias: Tensor, eps: float, dtype: torch.dtype
) -> tuple[Tensor, Tensor]:
    """[N, C, 1, 1] scale and shift with group_norm(x) == x * scale + shift, computed in float64."""
    n, groups = mean.shape
    channels = weight.shape[0]
    rstd = (var + eps).rsqrt()
    scale = weight.to(torch.float64).view(1, groups, -1) * rstd.unsqueeze(2)
    shift = bias.to(torch.float64).view(1, groups, -1) - mean.unsqueeze(2) * scale
    return scale.reshape(n, channels, 1, 1).to(dtype), shift.reshape(n, channels, 1, 1).to(dtype)


@lru_cache(maxsize=1)
def row_stats_work() -> bool:
    """Whether `torch.batch_norm_update_stats` exists here and gives float64's numbers.

    Probed once on an input that the one-pass kernel gets badly wrong.
    """
    generator = torch.Generator().manual_seed(0)
    x = (5 + 1e-3 * torch.randn(2, 8, 6, 5, generator=generator)).contiguous(memory_format=torch.channels_last)
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
