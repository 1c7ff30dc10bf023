"""Transfer BiT to your own classes: data sets, the BiT-HyperRule, linear probe, fine-tuning, export, evaluation.

    from bitcli.transfer import train, TrainOptions
    from bitcli.transfer.evaluate import evaluate

    train("photos/", "my-model", base="google/bit-50", options=TrainOptions(method="finetune", val_split=0.2))
    print(evaluate("photos-test/", "my-model").accuracy)

Modules: `data` (ImageFolder / CSV / JSONL, splits, few-shot subsets), `hyperrule` (pure
functions of the rule), `features` (cached embeddings), `linear` (logistic-regression probe),
`sampler` + `finetune` (training), `backbone` (raw weights; the only link to the model
internals), `export` (atomic transformers checkpoint), `evaluate`, and `run` (`train`).
Exports are lazy so that importing the package does not import torch.
"""

from __future__ import annotations

from bitcli.util import lazy_attributes

_LAZY = {
    "train": "bitcli.transfer.run",
    "TrainOptions": "bitcli.transfer.run",
    "TrainResult": "bitcli.transfer.run",
    "Callbacks": "bitcli.transfer.run",
    "prepare_data": "bitcli.transfer.run",
    "FinetuneOptions": "bitcli.transfer.finetune",
    "Plan": "bitcli.transfer.finetune",
    "Progress": "bitcli.transfer.finetune",
    "load_dataset": "bitcli.transfer.data",
    "Dataset": "bitcli.transfer.data",
    "DataError": "bitcli.transfer.data",
    "Evaluation": "bitcli.transfer.evaluate",
}

__all__ = sorted(_LAZY)

__getattr__ = lazy_attributes(__name__, _LAZY)
