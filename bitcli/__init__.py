"""bitcli: classify and embed images with Big Transfer (BiT) models.

The public API lives in `bitcli.pipeline` and is re-exported here lazily, so `import bitcli`
(and `bit --help`) does not import torch.
"""

from __future__ import annotations

from bitcli.util import lazy_attributes

__version__ = "0.1.0"

_LAZY = {
    "load": "bitcli.pipeline",
    "classify": "bitcli.pipeline",
    "embed": "bitcli.pipeline",
    "Classifier": "bitcli.pipeline",
    "Embedder": "bitcli.pipeline",
    "Embeddings": "bitcli.pipeline",
    "RunOptions": "bitcli.pipeline",
    "Model": "bitcli.checkpoint.loading",  # = LoadedModel, the name `load` returned before
    "LoadedModel": "bitcli.checkpoint.loading",
    "resolve_device": "bitcli.devices",
    "ClassifyResult": "bitcli.results",
    "EmbedResult": "bitcli.results",
    "Prediction": "bitcli.results",
    "EmbedWriter": "bitcli.store",
    "BitError": "bitcli.errors",
    "InputError": "bitcli.errors",
    "ModelError": "bitcli.errors",
    "UsageError": "bitcli.errors",
}

__all__ = sorted(_LAZY) + ["__version__"]

__getattr__ = lazy_attributes(__name__, _LAZY)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
