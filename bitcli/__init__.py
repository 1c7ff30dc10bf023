"""bitcli: classify and embed images with Big Transfer (BiT) models.

The public API lives in `bitcli.pipeline` and is re-exported here lazily, so `import bitcli`
(and `bit --help`) does not import torch.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "load": "bitcli.pipeline",
    "classify": "bitcli.pipeline",
    "embed": "bitcli.pipeline",
    "Classifier": "bitcli.pipeline",
    "Embedder": "bitcli.pipeline",
    "Embeddings": "bitcli.pipeline",
    "Model": "bitcli.pipeline",
    "resolve_device": "bitcli.pipeline",
    "ClassifyResult": "bitcli.results",
    "EmbedResult": "bitcli.results",
    "Prediction": "bitcli.results",
    "EmbedWriter": "bitcli.embedstore",
    "BitError": "bitcli.errors",
    "InputError": "bitcli.errors",
    "ModelError": "bitcli.errors",
    "UsageError": "bitcli.errors",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str) -> Any:
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'bitcli' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value  # cache: later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
