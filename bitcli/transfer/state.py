"""A fine-tune's resumable state: raw weights and momentum (safetensors) plus step, losses and unreadable images (JSON).

Both files are written atomically (temporary file, rename), the JSON last, so a state folder
always holds a consistent pair or the previous one. The fingerprint of the run (base model,
data listing, classes and the rule's settings) is stored with it and must match on resume.
Tensors are read back with safetensors: no pickle is ever loaded. A failed write (disk full) is a
`WriteFailed` naming the file's folder; `save_tensors` turns safetensors' own error for it into one.
A state folder without `state.json` holds no checkpoint (`has_checkpoint`): a first save that
failed leaves one, and `discard_empty` removes it so that no run mistakes it for a resumable one.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bitcli.errors import UsageError
from bitcli.util import read_capped, write_atomic, write_synced

STATE_INFO_MAX_BYTES = 256 << 20  # the step's losses: 8 bytes or so per step

STATE_WEIGHTS = "state.safetensors"
STATE_INFO = "state.json"
_TEMP_PREFIX = ".tmp-"


class WriteFailed(OSError):
    """Writing a file of a training run failed (disk full, permission denied); `filename` is the
    folder it was for, `strerror` the reason in a few words."""


def save_tensors(tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """`safetensors.torch.save_file`, whose I/O failures (a Rust error, not an OSError) become
    WriteFailed with the system's reason ("No space left on device")."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    try:
        save_file(tensors, str(path), metadata=metadata)
    except SafetensorError as exc:
        code = re.search(r"(?:os error |code: )(\d+)", str(exc))  # "... (os error 28)"
        number = int(code.group(1)) if code else errno.EIO
        raise WriteFailed(number, os.strerror(number), str(Path(path).parent)) from exc
    except OSError as exc:
        raise WriteFailed(exc.errno, exc.strerror or str(exc), str(Path(path).parent)) from exc


def has_checkpoint(directory: Path) -> bool:
    return (directory / STATE_INFO).is_file()


def discard_empty(directory: Path) -> None:
    """Before a run: remove the temporaries a killed save left in a state folder, and the folder
    itself when it holds no checkpoint (a first save that failed, or nothing)."""
    if not directory.is_dir() or directory.is_symlink():
        return
    empty = not has_checkpoint(directory)
    for entry in os.scandir(directory):
        if entry.name.startswith(_TEMP_PREFIX) or (empty and entry.name == STATE_WEIGHTS):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)
    if empty:
        with contextlib.suppress(OSError):
            os.rmdir(directory)


@dataclass
class Session:
    """Where a run stands: steps done, their losses, unreadable images, seconds spent."""

    step: int = 0
    losses: list[float] = field(default_factory=list)
    bad: dict[int, str] = field(default_factory=dict)
    seconds: float = 0.0


def save(directory: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
         session: Session, fingerprint: dict[str, Any]) -> None:
    tensors = {f"model/{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    for name, param in model.named_parameters():
        buf = optimizer.state.get(param, {}).get("momentum_buffer")
        if buf is not None:
            tensors[f"momentum/{name}"] = buf.detach().cpu().contiguous()
    info = {
        "fingerprint": fingerprint,
        "step": session.step,
        "losses": session.losses,
        "seconds": session.seconds,
        "bad": {str(k): v for k, v in dict(session.bad).items()},  # a copy: loader threads add to it
    }
    try:
        directory.mkdir(parents=True, exist_ok=True)
        for name, content in ((STATE_WEIGHTS, lambda fh: save_tensors(tensors, fh.name)), (STATE_INFO, json.dumps(info).encode())):
            write_atomic(directory / name, content, temporary=directory / f"{_TEMP_PREFIX}{os.getpid()}-{name}")
    except WriteFailed:
        raise
    except OSError as exc:
        raise WriteFailed(exc.errno, exc.strerror or str(exc), str(directory)) from exc


def write_text(path: str | Path, text: str) -> None:
    """`text` into `path`, synced (`util.write_synced`: a full disk fails here, not at some later
    close); a failure is WriteFailed naming the file's folder."""
    try:
        write_synced(path, text.encode("utf-8"))
    except OSError as exc:
        raise WriteFailed(exc.errno, exc.strerror or str(exc), str(Path(path).parent)) from exc


def restore(directory: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
            fingerprint: dict[str, Any], device: torch.device) -> Session:
    """Load the state into `model` and `optimizer`; UsageError when it is unreadable or another run's."""
    from safetensors.torch import load_file

    try:
        info = json.loads(read_capped(directory / STATE_INFO, STATE_INFO_MAX_BYTES).decode("utf-8"))
        tensors = load_file(directory / STATE_WEIGHTS)
    except (OSError, ValueError) as exc:
        raise UsageError(f"{directory}: the checkpoint cannot be read ({exc}); start again with --overwrite") from None
    if info.get("fingerprint") != json.loads(json.dumps(fingerprint)):
        raise UsageError(
            f"{directory}: the interrupted run used other data, base model or settings; "
            "repeat its options or start again with --overwrite"
        )
    model.load_state_dict({k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")}, strict=True)
    for name, param in model.named_parameters():
        buf = tensors.get(f"momentum/{name}")
        if buf is not None:
            optimizer.state[param]["momentum_buffer"] = buf.to(device)
    return Session(
        step=int(info["step"]), losses=list(info["losses"]),
        bad={int(k): str(v) for k, v in info.get("bad", {}).items()}, seconds=float(info["seconds"]),
    )


