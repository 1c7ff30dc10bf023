"""Checkpoints: files on disk -> a ready BiT model (`load_model` -> `LoadedModel`).

`files.py` (names, format detection, `RawCheckpoint`, weight readers; a torch-free leaf), one
reader per format -> RawCheckpoint (`timm.py`, `npz.py`; transformers' own layout in `loading.py`),
`loading.py` (dispatch, strict build, engine), `describe.py` (config and safetensors header, no
weights). A new format is one reader plus one branch in `loading.read_checkpoint`. This face imports
nothing heavy: `loading.py` loads on first use."""

from __future__ import annotations

from bitcli.util import lazy_attributes, lazy_table

_LAZY = lazy_table({
    "bitcli.checkpoint.loading": "load_model LoadedModel build_model read_checkpoint",
    "bitcli.checkpoint.files": "RawCheckpoint CheckpointInfo",
    "bitcli.checkpoint.describe": "describe_checkpoint",
})

__all__ = sorted(_LAZY)

__getattr__ = lazy_attributes(__name__, _LAZY)
