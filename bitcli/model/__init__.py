"""The BiT network: `BitConfig` (what to build, `config.py`), `BiT` (the nn.Module,
`architecture.py`) and its tensors and arithmetic worked out without torch (`shapes.py`).

`bitcli.model.config` and `bitcli.model.shapes` import no torch, and neither does this package
face: `BiT` and friends load `architecture.py` (and torch) on first use, so `bit inspect` can
describe a checkpoint from its config without importing torch.
"""

from __future__ import annotations

from bitcli.util import lazy_attributes, lazy_table

_LAZY = lazy_table({
    "bitcli.model.architecture": "BiT BitOutput StdConv2d standardize_conv_weight",
    "bitcli.model.config": "BitConfig",
})

__all__ = sorted(_LAZY)

__getattr__ = lazy_attributes(__name__, _LAZY)
