"""Transfer BiT to your own classes: data sets, the BiT-HyperRule, linear probe, fine-tuning, export, evaluation.

    from bitcli.transfer import train, TrainOptions
    train("photos/", "my-model", base="google/bit-50", options=TrainOptions(method="finetune", val_split=0.2))

Exports are lazy: importing the package does not import torch."""

from __future__ import annotations

from bitcli.util import lazy_attributes, lazy_table

_LAZY = lazy_table({
    "bitcli.transfer.run": "train TrainOptions TrainResult Callbacks prepare_data",
    "bitcli.transfer.finetune": "FinetuneOptions Plan Progress",
    "bitcli.transfer.data": "load_dataset Dataset DataError",
    "bitcli.transfer.evaluate": "Evaluation",
})

__all__ = sorted(_LAZY)

__getattr__ = lazy_attributes(__name__, _LAZY)
