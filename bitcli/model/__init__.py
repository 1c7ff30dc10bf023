"""The BiT network: `BitConfig` (`config.py`, no torch) and `BiT` (`architecture.py`, loaded on
first use: this package face imports no torch)."""

from __future__ import annotations

from bitcli.util import lazy_attributes, lazy_table

_LAZY = lazy_table({
    "bitcli.model.architecture": "BiT BitOutput StdConv2d standardize_conv_weight count_macs meta_model",
    "bitcli.model.config": "BitConfig",
})

__all__ = sorted(_LAZY)

__getattr__ = lazy_attributes(__name__, _LAZY)
