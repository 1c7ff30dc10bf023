"""Inference engine settings: how a loaded BiT runs fastest on this machine with the same numbers.

`checkpoint.load_model` calls `prepare` once, after the weights are loaded (and weight
standardization folded into them). `prepare` changes the model in place and returns an
`EngineRecord` of what it chose; `LoadedModel.engine` keeps it, and `bit embed --resume`'s
fingerprint reads it. What is done on which device is decided by `plan.make_plan` (testable
without the device); on a CPU (numbers in docs/speed.md and docs/engine.md):

- channels-last weights: oneDNN's convolutions run on NHWC without reordering activations;
  GroupNorm on NHWC takes `model.groupnorm` (PyTorch's own channels-last kernel loses
  precision on flat images);
- batch slicing (`slicing.SlicedBackbone`): a 448 px image's stem and first stages write 6-13
  MB per activation, so a batch of 8 streams every GroupNorm, ReLU and add through DRAM (and
  every >32 MB tensor is a fresh mmap: ~460k page faults per batch-8 forward); run one image at
  a time there, and larger slices in the late stages, whose cost is reading their (large)
  weights. The budget is fixed per machine ("auto", `machine.py`): four times one core's L2
  cache. Same numbers up to summation order (<= 1e-4 on logits);
- threads: capped at the CPUs this process may use (affinity, cgroup quota);
- precision "bf16" (opt-in, `to_bfloat16`): the convolutions after the stem in bfloat16 on
  the AVX512-BF16/AMX units; the stem, GroupNorm and the head in float32;
- on one thread, oneDNN convolutions called directly (`StdConv2d.onednn`, a private op probed
  first): PyTorch would send the 1x1 convolutions of a small slice to a GEMM that is ~1.5x
  slower on this CPU (1.60 vs 2.45 CPU-seconds per batch of 8). With more threads PyTorch picks
  oneDNN itself. The thread count is read once, here, when the model is prepared (`--threads`
  is applied before loading), never in the forward pass;
- compile (opt-in): `torch.compile` of the backbone (inductor). Slow to start (35 s here) and
  slower than this eager engine on this CPU (7.2 vs 9.5 images/s at batch 8); kept for
  machines where it is not.

On CUDA and MPS nothing CPU-specific runs (no slicing, no oneDNN calls); fp32 turns cuDNN's
TF32 off, "bf16"/"fp16" are autocast (see plan.py). Untested on real GPUs.

Tried and left out (measured, see docs/speed.md): TorchScript freeze / optimize_for_inference
(<= 1.06x), oneDNN fused conv + residual add (no gain once activations stay in cache).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from bitcli.engine.machine import slicing_budget, usable_cpus
from bitcli.engine.plan import PRECISIONS, make_plan
from bitcli.engine.plan import check_precision as check_plan_precision
from bitcli.engine.slicing import SlicedBackbone, slice_size
from bitcli.model.architecture import BiT, PreActBottleneck, StdConv2d, onednn_conv

__all__ = [
    "DEFAULT_CHUNK_BYTES", "PRECISIONS", "EngineRecord", "bf16_supported", "optimize_for_inference", "prepare",
    "slice_size", "to_bfloat16",
]

# Largest activation (bytes per slice) a step of the backbone should write before the batch is
# sliced smaller: "auto" derives it from this machine's L2 cache (machine.slicing_budget).
DEFAULT_CHUNK_BYTES = "auto"


@dataclass(frozen=True)
class EngineRecord:
    """What `prepare` chose for a model: kept on `LoadedModel.engine`, read by the resume fingerprint."""

    device: str  # "cpu", "cuda", "mps"
    precision: str = "fp32"  # "fp32", "bf16" or "fp16" (GPUs)
    chunk_bytes: int | None = None  # the batch-slicing budget in bytes; None: no slicing
    convolution: str = "torch"  # "onednn": called directly; "torch": PyTorch's dispatch
    compiled: bool = False


def check_precision(precision: str, device_type: str | None = None) -> None:
    """ValueError for an unknown precision (or, given the device type, one it cannot run)."""
    check_plan_precision(precision, device_type)


def prepare(
    model: BiT,
    *,
    precision: str = "fp32",
    compile: bool = False,
    chunk_bytes: int | str | None = DEFAULT_CHUNK_BYTES,
) -> EngineRecord:
    """Prepare `model` in place for fast inference on its device; return what was chosen.

    precision: "fp32" (exact: within 1e-4 of the reference), "bf16" (approximate) or "fp16"
    (approximate, GPUs only). chunk_bytes: the CPU batch-slicing budget in bytes, "auto" (from
    this machine's L2 cache) or None (each step on the whole batch). State-dict key names and the model's
    public methods are unchanged.
    """
    device = next(model.parameters()).device
    plan = make_plan(device.type, precision, compile=compile, chunk_bytes=chunk_bytes)
    if plan.channels_last:
        model.to(memory_format=torch.channels_last)
    if device.type == "cpu":
        fit_threads()
    budget = slicing_budget() if plan.chunk_bytes == "auto" else plan.chunk_bytes
    if budget is not None:
        # Slicing only pays where activations would otherwise leave the cache: a CPU.
        model.bit = SlicedBackbone(model.bit, budget)
    if plan.cpu_bfloat16:
        to_bfloat16(model)
    if plan.autocast is not None:
        model.autocast_dtype = getattr(torch, plan.autocast)
    if plan.allow_tf32 is not None:
        # Process-wide (PyTorch has no per-module switch): fp32 promises the reference's numbers.
        torch.backends.cudnn.allow_tf32 = plan.allow_tf32
    direct = plan.direct_onednn and torch.get_num_threads() == 1 and onednn_conv_works(model)
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
        chunk_bytes=budget,
        convolution="onednn" if direct else "torch",
        compiled=compile,
    )


def optimize_for_inference(model: BiT, **settings: Any) -> BiT:
    """`prepare(model, **settings)`, returning the model (for callers that do not need the record)."""
    prepare(model, **settings)
    return model


def fit_threads() -> None:
    """Cap torch's intra-op threads at the CPUs this process may use. torch counts the host's
    cores; in a container limited by a CPU quota or an affinity mask, more threads than CPUs
    only wait on each other. A smaller count set by the user (--threads) is kept."""
    cpus = usable_cpus()
    if torch.get_num_threads() > cpus:
        torch.set_num_threads(cpus)


def to_bfloat16(model: BiT) -> None:
    """bf16 mode: the convolutions after the stem in bfloat16 (and so the activations between
    them and the residual stream); the stem convolution, GroupNorm parameters and statistics,
    the final norm's output, pooling and the head in float32.

    Where an all-bfloat16 backbone's error comes from (issue 11 note: random R50x1 at 448, 30
    photos, max |logit difference| against float32 when only that part is rounded): the stem
    convolution's input and weights ~2e-2 (pixels in [-1, 1] lose a bit in 8 mantissa bits),
    GroupNorm parameters 1.2e-2, the residual stream 0.9e-2, the other convolutions' weights
    and activations ~2e-2 together (the speed-up itself). Keeping the stem and the norms in
    float32 halves the error (3.8e-2 -> 2.3e-2) at ~15% of bf16's speed; a float32 residual
    stream as well gave 2.0e-2 at ~40%, so the residual stays bfloat16.
    """
    stem = model.bit.embedder.convolution
    if model.bit.norm is not None:
        model.bit.norm.out_dtype = torch.float32  # the feature map and its pooling
    for module in model.modules():
        if isinstance(module, StdConv2d) and module is not stem:
            module.to(torch.bfloat16)
        elif isinstance(module, PreActBottleneck):
            for norm in (module.norm1, module.norm2, module.norm3):  # each feeds convolutions
                norm.out_dtype = torch.bfloat16


def bf16_supported() -> bool:
    """Whether this CPU has native bfloat16 arithmetic (AVX512-BF16 / AMX), where bf16 pays."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def onednn_conv_works(model: BiT) -> bool:
    """Whether oneDNN's convolution op exists here and gives F.conv2d's numbers (1x1 and 3x3)."""
    dtypes = {m.weight.dtype for m in model.modules() if isinstance(m, StdConv2d)}
    return all(_onednn_conv_works(dtype) for dtype in dtypes)


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
