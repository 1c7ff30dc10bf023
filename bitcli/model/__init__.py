"""The BiT network: `BitConfig` (what to build, `config.py`) and `BiT` (the nn.Module, `architecture.py`).

`bitcli.model.config` imports no torch; importing this package (or `architecture`) does.
"""

from __future__ import annotations

from bitcli.model.architecture import BiT, BitOutput, StdConv2d, standardize_conv_weight
from bitcli.model.config import BitConfig

__all__ = ["BiT", "BitConfig", "BitOutput", "StdConv2d", "standardize_conv_weight"]
