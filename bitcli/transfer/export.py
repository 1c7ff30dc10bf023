"""Write a trained classifier as a transformers checkpoint folder, atomically.

OUTDIR holds `config.json` (the base's architecture, `id2label`/`label2id` of the user's
classes), `preprocessor_config.json` (evaluation preprocessing), `model.safetensors` (raw
weights that transformers and bitcli standardize themselves; see `backbone.export_state_dict`)
and `training_report.json`. So `bit classify -m OUTDIR` prints the user's class names and
`transformers.BitForImageClassification.from_pretrained(OUTDIR)` computes the same logits.

Evaluation preprocessing is the base model's. The exception is a fine-tune on small images
(under 96x96 px), trained at 128 px: there the exported preprocessing resizes the shortest edge
to 128 and center-crops 128 (the base's interpolation and normalization), since the release
evaluates at the training crop and the network has never seen these images at the base's size.
A timm base's torchvision-style crop rounding (which transformers cannot express) becomes
transformers' own (a one-pixel offset at most, for some image sizes).

Atomic: everything is written into a hidden temporary folder next to OUTDIR and renamed into
place at the end, so OUTDIR is either absent or complete. An existing OUTDIR is replaced only
with `overwrite`, and only when it is empty or a folder `bit train` wrote (it has a training
report); the old folder is renamed aside first and removed only after the new one is in place.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from bitcli.errors import UsageError

from .backbone import HEAD_KEYS, BitConfig, PreprocessConfig, export_state_dict, transformers_config
from .hyperrule import Resolution

REPORT = "training_report.json"
REPORT_MARKER = "bitcli_training_report"


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
    directory: Path,
    *,
    config: BitConfig,
    classes: list[str],
    weights: dict[str, torch.Tensor],
    preprocess: PreprocessConfig,
) -> None:
    """Write config, preprocessing and weights (raw, with the head) into an existing `directory`."""
    from safetensors.torch import save_file

    missing = [k for k in HEAD_KEYS if k not in weights]
    if missing:
        raise ValueError(f"weights lack the classifier head ({', '.join(missing)})")
    tensors = export_state_dict(weights, config.ws_eps)
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    _write_json(directory / "config.json", transformers_config(config, classes))
    _write_json(directory / "preprocessor_config.json", preprocessor_dict(preprocess))


def write_report(directory: Path, report: dict[str, Any]) -> dict[str, Any]:
    """Write the training report (with the marker `--overwrite` looks for); returns what was written."""
    written = {REPORT_MARKER: 1, **report}
    _write_json(directory / REPORT, written)
    return written


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


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
    if any(outdir.iterdir()) and not is_training_output(outdir):
        raise UsageError(
            f"{outdir}: exists and was not written by bit train (no {REPORT}); "
            "bitcli will not replace it: remove it yourself or choose another -o"
        )


def is_training_output(directory: Path) -> bool:
    try:
        data = json.loads((directory / REPORT).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get(REPORT_MARKER) == 1


class Staging:
    """A temporary folder next to OUTDIR; `commit()` puts it in OUTDIR's place.

    Use as a context manager: leaving without `commit()` (an error, Ctrl-C) removes it.
    """

    def __init__(self, outdir: Path, *, overwrite: bool):
        self.outdir = Path(outdir)
        self.overwrite = overwrite
        check_outdir(self.outdir, overwrite=overwrite)
        self.path = Path(tempfile.mkdtemp(dir=self.outdir.parent, prefix=f".{self.outdir.name}.tmp-"))
        self.committed = False

    def __enter__(self) -> Staging:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.committed:
            shutil.rmtree(self.path, ignore_errors=True)

    def commit(self) -> Path:
        check_outdir(self.outdir, overwrite=self.overwrite)  # again: it may have appeared meanwhile
        os.chmod(self.path, 0o777 & ~_umask())  # mkdtemp makes it 0700; a normal folder instead
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
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)
        return self.outdir


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
