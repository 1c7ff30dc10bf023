"""`prepare`: a loaded BiT made ready for fast inference on its device (see the package docstring)."""

from __future__ import annotations

from dataclasses import dataclass
import torch

from bitcli.engine.machine import slicing_budget
from bitcli.engine.plan import make_plan
from bitcli.engine.native import onednn_conv_works
from bitcli.engine.slicing import SlicedBackbone
from bitcli.model.architecture import BiT, PreActBottleneck, StdConv2d


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


def prepare(
    model: BiT,
    *,
    precision: str = "fp32",
    compile: bool = False,
    chunk_bytes: int | str | None = DEFAULT_CHUNK_BYTES,
) -> EngineRecord:
    """Prepare `model` in place for fast inference on its device; return what was chosen.

    precision: "fp32" (within 1e-4 of the reference), "bf16" or "fp16" (GPUs). chunk_bytes: the
    slicing budget, "auto" (this machine's) or None (no slicing). Keys and methods are unchanged."""
    device = next(model.parameters()).device
    plan = make_plan(device.type, precision, compile=compile, chunk_bytes=chunk_bytes)
    if plan.channels_last:
        model.to(memory_format=torch.channels_last)
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
    direct = plan.direct_onednn and torch.get_num_threads() == 1 and onednn_conv_works({m.weight.dtype for m in model.modules() if isinstance(m, StdConv2d)})
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


def to_bfloat16(model: BiT) -> None:
    """bf16 mode: the convolutions after the stem in bfloat16 (and the residual stream); the stem,
    GroupNorm, the final norm, pooling and the head in float32 (half the error, docs/engine.md)."""
    stem = model.bit.embedder.convolution
    if model.bit.norm is not None:
        model.bit.norm.out_dtype = torch.float32  # the feature map and its pooling
    for module in model.modules():
        if isinstance(module, StdConv2d) and module is not stem:
            module.to(torch.bfloat16)
        elif isinstance(module, PreActBottleneck):
            for norm in (module.norm1, module.norm2, module.norm3):  # each feeds convolutions
                norm.out_dtype = torch.bfloat16
