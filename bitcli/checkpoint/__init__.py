"""Checkpoints: files on disk -> a ready BiT model (`load_model` -> `LoadedModel`).

    files.py         file names, format detection, `RawCheckpoint`, `CheckpointInfo`, weight
                     readers (torch-free leaf)
    transformers.py  transformers layout (the canonical key names)      } each: directory or file
    timm.py          timm layout and preprocessing (`pretrained_cfg`)   } -> RawCheckpoint
    npz.py           the original big_transfer `.npz` release           }
    loading.py       dispatch, strict build, engine preparation: `load_model`, `LoadedModel`
    describe.py      a checkpoint described from config and safetensors header, no weights
                     (`bit inspect`): `describe_checkpoint`

Imports run one way: the readers import `files`, `loading` imports the readers. A new format is
one reader module plus one branch in `loading.read_checkpoint`.

This package face imports nothing heavy: `bitcli.checkpoint.files` is read by `bit models`
(through `bitcli.hub`) without torch; `load_model` and friends load `loading.py` on first use.
"""

from __future__ import annotations

from bitcli.util import lazy_attributes, lazy_table

_LAZY = lazy_table({
    "bitcli.checkpoint.loading": "load_model LoadedModel build_model read_checkpoint",
    "bitcli.checkpoint.files": "RawCheckpoint CheckpointInfo",
    "bitcli.checkpoint.describe": "describe_checkpoint",
})

__all__ = sorted(_LAZY)

__getattr__ = lazy_attributes(__name__, _LAZY)
