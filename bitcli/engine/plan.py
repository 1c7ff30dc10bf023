"""What the inference engine does on a device, decided apart from doing it (testable without it).

CPU: channels-last, batch slicing, oneDNN on one thread, the accurate GroupNorm; "bf16" runs the
convolutions after the stem in bfloat16. CUDA and MPS: nothing CPU-specific; fp32 turns TF32
off; "fp16" / "bf16" are autocast (norms, pooling and head in float32), channels-last only then."""

from __future__ import annotations

from dataclasses import dataclass

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
    device_type: str, precision: str = "fp32", *, compile: bool = False, chunk_bytes: int | str | None = None
) -> Plan:
    """The engine's choices for a model on `device_type` ("cpu", "cuda", "mps"; others get neither
    CPU nor GPU specifics). chunk_bytes: the CPU slicing budget (None: no slicing)."""
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
