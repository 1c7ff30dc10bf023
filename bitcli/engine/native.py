"""The private PyTorch operations bitcli calls, all of them, here; each is probed before use.

- `torch.ops.mkldnn._convolution_pointwise`: oneDNN's convolution called directly on one thread
  (PyTorch's GEMM path for small 1x1 convolutions is ~1.5x slower), where `onednn_conv_works`
  finds it giving `F.conv2d`'s numbers;
- `_is_mkldnn_bf16_supported`: only for the warning that bf16 will be slow on this CPU;
- `one_openmp_thread`: one OpenMP thread for a worker thread bitcli starts (exact search).

`BIT_TORCH_PRIVATE_OPS=0` (read when a model is prepared): none of them is called."""

from __future__ import annotations

import ctypes
import functools
import os
import threading

import torch
from torch import Tensor, nn

SWITCH = "BIT_TORCH_PRIVATE_OPS"


def allowed() -> bool:
    """False when the user turned the private operations off (BIT_TORCH_PRIVATE_OPS=0)."""
    return os.environ.get(SWITCH, "1").strip().lower() not in ("0", "false", "no", "off")


def onednn_conv(x: Tensor, conv: nn.Conv2d) -> Tensor:
    """`conv(x)` through oneDNN's convolution (only where `onednn_conv_works` said so)."""
    return torch.ops.mkldnn._convolution_pointwise(
        x, conv.weight, conv.bias, list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups,
        "none", [], "",
    )


def bf16_supported() -> bool:
    """Whether this CPU has native bfloat16 arithmetic (AVX512-BF16 / AMX), where bf16 pays."""
    if not allowed():
        return False
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def openmp_per_thread() -> bool:
    """Whether `one_openmp_thread` is allowed and reaches torch's OpenMP runtime."""
    return allowed() and _one_thread_probe()


@functools.cache
def _one_thread_probe() -> bool:
    if _omp_set_num_threads() is None:
        return False
    seen: list[int] = []

    def probe() -> None:
        one_openmp_thread()
        seen.append(torch.get_num_threads())

    thread = threading.Thread(target=probe, name="bit-openmp-probe")
    thread.start()
    thread.join()
    return seen == [1]


def one_openmp_thread() -> None:
    """The calling thread's torch operations on one thread (for threads bitcli starts and ends itself)."""
    torch.get_num_threads()  # torch sets a new thread's team size on first use: after that, ours holds
    setter = _omp_set_num_threads()
    if setter is not None:
        setter(1)


def _omp_set_num_threads():
    try:
        return ctypes.CDLL(None).omp_set_num_threads  # torch loads its OpenMP runtime globally
    except (AttributeError, OSError):
        return None


def onednn_conv_works(dtypes: set[torch.dtype]) -> bool:
    """Whether oneDNN's convolution op is allowed, exists and gives F.conv2d's numbers in each of `dtypes`."""
    return allowed() and all(_onednn_conv_works(dtype) for dtype in dtypes)


def _onednn_conv_works(dtype: torch.dtype) -> bool:
    generator = torch.Generator().manual_seed(0)
    try:
        for kernel, stride in ((1, 1), (3, 2)):
            conv = torch.nn.Conv2d(16, 32, kernel, stride=stride, padding=kernel // 2, bias=False)
            conv = conv.to(dtype=dtype, memory_format=torch.channels_last).requires_grad_(False)
            x = torch.randn(2, 16, 9, 9, generator=generator).to(dtype).contiguous(memory_format=torch.channels_last)
            with torch.inference_mode():
                expected, got = conv(x), onednn_conv(x, conv)
            tolerance = 1e-4 if dtype == torch.float32 else 5e-2
            if got.shape != expected.shape or (got.float() - expected.float()).abs().max().item() > tolerance:
                return False
        return True
    except (AttributeError, RuntimeError, NotImplementedError):
        return False
