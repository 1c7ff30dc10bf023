"""Inference engine settings: how a loaded BiT runs fastest on this machine with the same numbers.

`checkpoint.load_model` calls `prepare` once, after the weights are loaded (and weight
standardization folded into them). `prepare` changes the model in place and returns an
`EngineRecord` of what it chose; `LoadedModel.engine` keeps it, and `bit embed --resume`'s
fingerprint reads it. What it does, measured on a 2-core AVX-512 CPU (`python bench/run.py`;
numbers in docs/speed.md):

- channels-last weights: oneDNN's convolutions run on NHWC without reordering activations;
- batch slicing (`slicing.SlicedBackbone`): a 448 px image's stem and first stages write 6-13
  MB per activation, so a batch of 8 streams every GroupNorm, ReLU and add through DRAM (and
  every >32 MB tensor is a fresh mmap: ~460k page faults per batch-8 forward); run one image at
  a time there, and larger slices in the late stages, whose cost is reading their (large)
  weights. ~1.6x at batch 8 (budget 2/4/8/16/32 MB measured; 8 best), same numbers up to
  summation order (<= 1e-4 on logits);
- precision "bf16" (opt-in): bfloat16 weights and activations through oneDNN's AVX512-BF16
  kernels, ~1.9x faster at batch 8 but logits move by ~2.5e-2, so never the default;
- on one thread, oneDNN convolutions called directly (`StdConv2d.onednn`, a private op probed
  first): PyTorch would send the 1x1 convolutions of a small slice to a GEMM that is ~1.5x
  slower on this CPU (1.60 vs 2.45 CPU-seconds per batch of 8). With more threads PyTorch picks
  oneDNN itself. The thread count is read once, here, when the model is prepared (`--threads`
  is applied before loading), never in the forward pass;
- compile (opt-in): `torch.compile` of the backbone (inductor). Slow to start (35 s here) and
  slower than this eager engine on this CPU (7.2 vs 9.5 images/s at batch 8); kept for
  machines where it is not.

Tried and left out (measured, see docs/speed.md): TorchScript freeze / optimize_for_inference
(<= 1.06x), oneDNN fused conv + residual add (no gain once activations stay in cache),
GroupNorm + ReLU rewritten from torch ops (10x slower than the native kernel).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from bitcli.engine.slicing import SlicedBackbone, slice_size
from bitcli.model.architecture import BiT, StdConv2d, onednn_conv

__all__ = [
    "DEFAULT_CHUNK_BYTES", "PRECISIONS", "EngineRecord", "bf16_supported", "optimize_for_inference", "prepare",
    "slice_size",
]

PRECISIONS = ("fp32", "bf16")
# Largest activation (bytes per slice) a step of the backbone should write before the batch is
# sliced smaller. About a quarter of this machine's 32 MB L3: the block's input, its pre-activation
# copy and its output must fit together.
DEFAULT_CHUNK_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class EngineRecord:
    """What `prepare` chose for a model: kept on `LoadedModel.engine`, read by the resume fingerprint."""

    device: str  # "cpu", "cuda", "mps"
    precision: str = "fp32"  # "fp32" or "bf16"
    chunk_bytes: int | None = None  # the batch-slicing budget; None: every step on the whole batch
    convolution: str = "torch"  # "onednn": called directly; "torch": PyTorch's dispatch
    compiled: bool = False


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: choose one of {', '.join(PRECISIONS)}")


def prepare(
    model: BiT,
    *,
    precision: str = "fp32",
    compile: bool = False,
    chunk_bytes: int | None = DEFAULT_CHUNK_BYTES,
) -> EngineRecord:
    """Prepare `model` in place for fast inference on its device; return what was chosen.

    precision: "fp32" (exact: within 1e-4 of the reference) or "bf16" (approximate).
    chunk_bytes: the batch-slicing budget; None runs each step on the whole batch.
    State-dict key names and the model's public methods are unchanged.
    """
    check_precision(precision)
    device = next(model.parameters()).device
    model.to(memory_format=torch.channels_last)
    on_cpu = device.type == "cpu"
    if on_cpu and chunk_bytes is not None:
        # Slicing only pays where activations would otherwise leave the cache: a CPU.
        model.bit = SlicedBackbone(model.bit, chunk_bytes)
    if precision == "bf16":
        # The backbone in bfloat16; the classifier stays float32 (it is tiny, and pooled
        # features are averaged in float32 by forward_features).
        model.bit.to(torch.bfloat16)
    direct = on_cpu and not compile and torch.get_num_threads() == 1 and onednn_conv_works(model)
    if direct:
        for module in model.modules():
            if isinstance(module, StdConv2d):
                module.onednn = True
    if compile:
        # nn.Module.compile compiles in place: the state-dict keys keep their names.
        model.bit.compile(dynamic=False)
    return EngineRecord(
        device=device.type,
        precision=precision,
        chunk_bytes=chunk_bytes if on_cpu else None,
        convolution="onednn" if direct else "torch",
        compiled=compile,
    )


def optimize_for_inference(model: BiT, **settings: Any) -> BiT:
    """`prepare(model, **settings)`, returning the model (for callers that do not need the record)."""
    prepare(model, **settings)
    return model


def bf16_supported() -> bool:
    """Whether this CPU has native bfloat16 arithmetic (AVX512-BF16 / AMX), where bf16 pays."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def onednn_conv_works(model: BiT) -> bool:
    """Whether oneDNN's convolution op exists here and gives F.conv2d's numbers (1x1 and 3x3)."""
    dtype = model.bit.embedder.convolution.weight.dtype
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
