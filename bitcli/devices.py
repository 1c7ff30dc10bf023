"""`--device` values (auto, cpu, cuda, cuda:N, mps; case and spaces ignored): parsed without torch,
then resolved to an available torch.device; a bad or unavailable one is a one-line `UsageError`."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bitcli.errors import UsageError

if TYPE_CHECKING:
    import torch

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
