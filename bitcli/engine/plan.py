"""Devices and what the inference engine does on them, decided apart from doing it (no torch).

`--device` values (auto, cpu, cuda, cuda:N, mps; case and spaces ignored) are parsed without
torch, then resolved to an available torch.device; a bad or unavailable one is a one-line
`UsageError`. CPU: channels-last, batch slicing, oneDNN on one thread, the accurate GroupNorm; "bf16" runs the
convolutions after the stem in bfloat16. CUDA and MPS: nothing CPU-specific; fp32 turns TF32
off; "fp16" / "bf16" are autocast (norms, pooling and head in float32), channels-last only then."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bitcli.errors import UsageError

if TYPE_CHECKING:
    import torch

PRECISIONS = ("fp32", "bf16", "fp16")
GPU_TYPES = ("cuda", "mps")


@dataclass(frozen=True)
class Plan:
    device_type: str  # "cpu", "cuda", "mps"
    precision: str
    channels_last: bool
    chunk_bytes: int | str | None  # batch-slicing budget (CPU): bytes, "auto" or None (no slicing)
    direct_onednn: bool  # CPU: let convolutions call oneDNN directly (on one thread; probed first)
    cpu_bfloat16: bool  # CPU bf16 mode: bfloat16 convolutions after the stem
    autocast: str | None  # GPU: "float16" or "bfloat16" autocast around the backbone
    allow_tf32: bool | None  # CUDA: whether cuDNN may use TF32 (never in fp32); None elsewhere


def check_precision(precision: str, device_type: str | None = None) -> None:
    """ValueError (one line) for an unknown precision, or (given the device type) fp16 off a GPU."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    if precision == "fp16" and device_type is not None and device_type not in GPU_TYPES:
        raise ValueError("precision fp16 runs on GPUs only (CPUs have no fast fp16 convolutions); use bf16 on a CPU")


def make_plan(
    device_type: str,
    precision: str = "fp32",
    *,
    compile: bool = False,
    chunk_bytes: int | str | None = None,
) -> Plan:
    """The engine's choices on `device_type`; chunk_bytes: the CPU slicing budget (None: no slicing)."""
    check_precision(precision, device_type)
    on_cpu = device_type == "cpu"
    on_gpu = device_type in GPU_TYPES
    autocast = {"fp16": "float16", "bf16": "bfloat16"}.get(precision) if on_gpu else None
    return Plan(
        device_type=device_type,
        precision=precision,
        channels_last=on_cpu or autocast is not None,
        chunk_bytes=chunk_bytes if on_cpu else None,
        direct_onednn=on_cpu and not compile,
        cpu_bfloat16=on_cpu and precision == "bf16",
        autocast=autocast,
        allow_tf32=(precision != "fp32") if device_type == "cuda" else None,
    )


# -- --device values --------------------------------------------------------------------------------

DEVICE_CHOICES = "auto, cpu, cuda, cuda:N or mps"
_PATTERN = re.compile(r"(auto|cpu|mps|cuda)(?::(\d{1,4}))?")


@dataclass(frozen=True)
class DeviceSpec:
    kind: str  # "auto", "cpu", "cuda" or "mps"
    index: int | None = None  # cuda:N only

    def __str__(self) -> str:
        return self.kind if self.index is None else f"{self.kind}:{self.index}"


def parse_device(text: str) -> DeviceSpec:
    """'cuda:1' -> DeviceSpec('cuda', 1). Only cuda takes an index."""
    match = _PATTERN.fullmatch(str(text).strip().lower())
    if match is None or (match.group(2) is not None and match.group(1) != "cuda"):
        raise UsageError(f"--device {text!r}: use {DEVICE_CHOICES}")
    index = match.group(2)
    return DeviceSpec(match.group(1), None if index is None else int(index))


def resolve_device(text: str | None = "auto") -> "torch.device":
    """The torch.device for a `--device` value (None: auto); UsageError when malformed or unavailable."""
    import torch

    spec = parse_device("auto" if text is None else text)
    if spec.kind == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec.kind == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise UsageError(
                f"--device {spec}: CUDA is not available on this machine (or in this torch build); use --device cpu"
            )
        if spec.index is not None and spec.index >= count:
            gpus = "cuda:0" if count == 1 else f"cuda:0 to cuda:{count - 1}"
            raise UsageError(f"--device {spec}: this machine has {count} CUDA device(s) ({gpus})")
        return torch.device(str(spec))
    if spec.kind == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise UsageError("--device mps: Apple MPS is not available on this machine; use --device cpu")
    return torch.device(spec.kind)
