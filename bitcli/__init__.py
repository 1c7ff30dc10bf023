"""bitcli: classify and embed images with Big Transfer (BiT) models.

The public API (`bitcli.pipeline`), re-exported lazily: `import bitcli` does not import torch."""

from __future__ import annotations

from bitcli.util import lazy_attributes, lazy_table

__version__ = "0.1.0"

_LAZY = lazy_table({
    "bitcli.pipeline": "load classify embed Classifier Embedder Embeddings RunOptions",
    "bitcli.checkpoint.loading": "LoadedModel Model",  # Model = LoadedModel, the name `load` returned before
    "bitcli.engine.plan": "resolve_device",
    "bitcli.results": "ClassifyResult EmbedResult Prediction",
    "bitcli.store": "EmbedWriter",
    "bitcli.errors": "BitError InputError ModelError UsageError",
})

__all__ = sorted(_LAZY) + ["__version__"]

__getattr__ = lazy_attributes(__name__, _LAZY)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
