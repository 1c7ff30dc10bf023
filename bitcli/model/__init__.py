"""The BiT network: `BitConfig` (what to build, `config.py`), `BiT` (the nn.Module,
`architecture.py`) and its tensors and arithmetic worked out without torch (`shapes.py`).

`bitcli.model.config` and `bitcli.model.shapes` import no torch, and neither does this package
face: `BiT` and friends load `architecture.py` (and torch) on first use, so `bit inspect` can
describe a checkpoint from its config without importing torch.
"""

from __future__ import annotations

from bitcli.util import lazy_attributes

_LAZY = {
    "BiT": "bitcli.model.architecture",
    "BitOutput": "bitcli.model.architecture",
    "StdConv2d": "bitcli.model.architecture",
    "standardize_conv_weight": "bitcli.model.architecture",
    "BitConfig": "bitcli.model.config",
}

__all__ = sorted(_LAZY)

__getattr__ = lazy_attributes(__name__, _LAZY)
