"""The files a training run writes: the trained classifier as a transformers checkpoint folder,
atomically, and a fine-tune's resumable state.

OUTDIR holds config.json (the user's classes), preprocessor_config.json (the base's evaluation
preprocessing; 128 px for a fine-tune on images under 96x96), model.safetensors (raw weights,
`backbone.export_state_dict`) and training_report.json. Everything is written into a locked
staging folder beside OUTDIR (`.OUTDIR.tmp-XXXX`) and renamed into place. An existing OUTDIR is
replaced only with `overwrite` and only when it holds nothing but `bit train`'s files; the next
run removes unlocked leftovers of killed runs.

The fine-tune's state: raw weights and momentum (safetensors) plus step, losses and unreadable
images (JSON), written atomically, the JSON last, with the run's fingerprint, which must match
on resume. A failed write is a `WriteFailed` naming the folder.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from bitcli.errors import UsageError
from bitcli.store.paths import OutputWriteError, writing as store_writing
from bitcli.util import CONFIG_MAX_BYTES, read_capped, write_atomic, write_synced

from .backbone import HEAD_KEYS, BitConfig, PreprocessConfig, export_state_dict, transformers_config, with_classes
from .hyperrule import Resolution

STATE_INFO_MAX_BYTES = 256 << 20  # the step's losses: 8 bytes or so per step

STATE_WEIGHTS = "state.safetensors"
STATE_INFO = "state.json"
_TEMP_PREFIX = ".tmp-"


class WriteFailed(OutputWriteError):
    """Writing a training run's file failed; `filename` is the folder it was for, `strerror` the
    reason. Its own class: the feature cache's failed writes are the store's, handled there."""


@contextlib.contextmanager
def writing(folder: Path) -> Iterator[None]:
    """`store.paths.writing` naming `folder` as a WriteFailed, also for safetensors, whose I/O
    failures are Rust errors: "... (os error 28)"."""
    from safetensors import SafetensorError

    try:
        with store_writing(folder, WriteFailed):
            yield
    except SafetensorError as exc:
        code = re.search(r"(?:os error |code: )(\d+)", str(exc))
        number = int(code.group(1)) if code else errno.EIO
        raise WriteFailed(number, os.strerror(number), str(folder)) from exc


def has_checkpoint(directory: Path) -> bool:
    return (directory / STATE_INFO).is_file()


def discard_empty(directory: Path) -> None:
    """Before a run: remove a killed save's temporaries, and the state folder itself when it holds no checkpoint."""
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
    from safetensors.torch import save_file

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
    with writing(directory):
        directory.mkdir(parents=True, exist_ok=True)
        for name, content in ((STATE_WEIGHTS, lambda fh: save_file(tensors, fh.name)), (STATE_INFO, json.dumps(info).encode())):
            write_atomic(directory / name, content, temporary=directory / f"{_TEMP_PREFIX}{os.getpid()}-{name}")


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


# -- the trained classifier's folder ------------------------------------------------------------

REPORT = "training_report.json"
REPORT_MARKER = "bitcli_training_report"
OWN_FILES = frozenset({"config.json", "preprocessor_config.json", "model.safetensors", REPORT})


def eval_preprocess(base: PreprocessConfig, resolution: Resolution | None) -> PreprocessConfig:
    """The exported model's evaluation preprocessing (see the module docstring)."""
    if resolution is None or not resolution.small_images:
        return base
    crop = resolution.crop
    return replace(
        base, do_resize=True, resize_mode="shortest_edge", shortest_edge=crop, size=None,
        do_center_crop=True, crop_size=(crop, crop), crop_rounding="floor",
    )


def preprocessor_dict(cfg: PreprocessConfig) -> dict[str, Any]:
    """A `preprocessor_config.json` for transformers' BitImageProcessor (and bitcli)."""
    out: dict[str, Any] = {"image_processor_type": "BitImageProcessor", "do_resize": cfg.do_resize}
    if cfg.resize_mode == "shortest_edge":
        out["size"] = {"shortest_edge": int(cfg.shortest_edge or 224)}
    else:
        out["size"] = {"height": int(cfg.size[0]), "width": int(cfg.size[1])}  # type: ignore[index]
    out.update(
        resample=int(cfg.resample),
        do_center_crop=cfg.do_center_crop,
        crop_size={"height": int(cfg.crop_size[0]), "width": int(cfg.crop_size[1])},
        do_rescale=cfg.do_rescale,
        rescale_factor=float(cfg.rescale_factor),
        do_normalize=cfg.do_normalize,
        image_mean=[float(v) for v in cfg.image_mean],
        image_std=[float(v) for v in cfg.image_std],
        do_convert_rgb=cfg.do_convert_rgb,
    )
    return out


def write_checkpoint(
    directory: Path, *, base: BitConfig, classes: list[str], weights: dict[str, torch.Tensor], preprocess: PreprocessConfig
) -> None:
    """Write the base's architecture with a head for `classes`, preprocessing and weights (raw, with
    the head) into `directory`; WriteFailed on failure."""
    from safetensors.torch import save_file

    config = with_classes(base, classes)

    missing = [k for k in HEAD_KEYS if k not in weights]
    if missing:
        raise ValueError(f"weights lack the classifier head ({', '.join(missing)})")
    tensors = export_state_dict(weights, config.ws_eps)
    with writing(directory):
        save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    _write_json(directory / "config.json", transformers_config(config, classes))
    _write_json(directory / "preprocessor_config.json", preprocessor_dict(preprocess))


def write_report(directory: Path, report: dict[str, Any]) -> dict[str, Any]:
    """Write the training report (with the marker `--overwrite` looks for); returns what was written."""
    written = {REPORT_MARKER: 1, **report}
    _write_json(directory / REPORT, written)
    return written


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """`data` into `path`, synced (a full disk fails here, as a WriteFailed)."""
    with writing(path.parent):
        write_synced(path, (json.dumps(data, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))


def check_outdir(outdir: Path, *, overwrite: bool) -> None:
    """Refuse an OUTDIR that exists (without `overwrite`) or that `bit train` did not write."""
    if not os.path.lexists(outdir):
        if not outdir.parent.is_dir():
            raise UsageError(f"{outdir}: the folder {outdir.parent} does not exist")
        return
    if outdir.is_symlink() or not outdir.is_dir():
        raise UsageError(f"{outdir}: exists and is not a folder; choose another -o")
    if not overwrite:
        raise UsageError(f"{outdir}: already exists; pass --overwrite to replace it, or choose another -o")
    if os.listdir(outdir) and not is_training_output(outdir):
        raise UsageError(
            f"{outdir}: exists and was not written by bit train (no {REPORT}); "
            "bitcli will not replace it: remove it yourself or choose another -o"
        )
    foreign = _foreign(outdir)
    if foreign:
        more = f" (and {len(foreign) - 1} more)" if len(foreign) > 1 else ""
        raise UsageError(
            f"{outdir}: holds {foreign[0]}{more}, which bit train did not write; --overwrite replaces only "
            "bit train's own files: move it out or choose another -o"
        )


def is_training_output(directory: Path) -> bool:
    try:
        data = json.loads(read_capped(directory / REPORT, CONFIG_MAX_BYTES).decode("utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get(REPORT_MARKER) == 1


def _foreign(directory: Path) -> list[str]:
    """The names in `directory` that are not bit train's files, sorted."""
    return [name for name in sorted(os.listdir(directory)) if name not in OWN_FILES or not (directory / name).is_file()]


def _remove_own(directory: Path) -> None:
    """Remove `bit train`'s files from `directory`, then the folder if that left it empty."""
    for name in OWN_FILES:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(directory / name)
    with contextlib.suppress(OSError):
        os.rmdir(directory)


def _lock(directory: Path) -> int | None:
    """An exclusive, non-blocking flock on `directory` (its descriptor), or None while another holds it."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def clean_leftovers(outdir: Path) -> list[Path]:
    """Remove unlocked staging folders and an old OUTDIR left aside by killed runs, when they hold only
    `bit train`'s files. Returns what was removed."""
    removed = []
    try:
        entries = list(os.scandir(outdir.parent))
    except OSError:
        return removed
    for entry in entries:
        staging = entry.name.startswith(f".{outdir.name}.tmp-")
        aside = entry.name.startswith(f".{outdir.name}.old-") and os.path.isdir(outdir)
        if not (staging or aside) or not entry.is_dir(follow_symlinks=False):
            continue
        path = Path(entry.path)
        try:
            fd = _lock(path)
        except OSError:
            continue
        if fd is None:  # a live run's staging folder
            continue
        try:
            if not _foreign(path):
                _remove_own(path)
                if not os.path.lexists(path):
                    removed.append(path)
        except OSError:
            pass
        finally:
            os.close(fd)
    return removed


class Staging:
    """A temporary folder next to OUTDIR; `commit()` puts it in OUTDIR's place, leaving without it removes it."""

    def __init__(self, outdir: Path, *, overwrite: bool):
        self.outdir = Path(outdir)
        self.overwrite = overwrite
        check_outdir(self.outdir, overwrite=overwrite)
        clean_leftovers(self.outdir)
        self.path = self.outdir.parent / f".{self.outdir.name}.tmp-{uuid.uuid4().hex[:8]}"
        with writing(self.outdir.parent):  # a full disk can refuse a new folder too
            self.path.mkdir()  # with the umask's mode: a normal folder once renamed into place
        self._fd = _lock(self.path)  # held while this run lives: clean_leftovers leaves it alone
        self.committed = False

    def __enter__(self) -> Staging:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.committed:
            _remove_own(self.path)
        self._release()

    def _release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def commit(self) -> Path:
        check_outdir(self.outdir, overwrite=self.overwrite)  # again: it may have appeared meanwhile
        aside = None
        if os.path.lexists(self.outdir):
            aside = self.outdir.parent / f".{self.outdir.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(self.outdir, aside)
        try:
            os.rename(self.path, self.outdir)
        except OSError:
            if aside is not None:
                os.rename(aside, self.outdir)
            raise
        self.committed = True
        self._release()
        if aside is not None:
            _remove_own(aside)  # it held only bit train's files (check_outdir)
        return self.outdir
