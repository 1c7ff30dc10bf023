"""The Hugging Face Hub: model references -> local checkpoint directories (`resolve.py`), the zoo
of known BiT models (`zoo.py`) and the standard cache (`cache.py`). No torch."""

from __future__ import annotations

from bitcli.hub import zoo
from bitcli.util import lazy_attributes, lazy_table

# imported on first use: huggingface_hub loads only when a command reaches the hub, not for the
# checks made before (BIT_HUB_TIMEOUT: hub/deadline.py)
_LAZY = lazy_table({
    "bitcli.hub.cache": "HubRef HubSettings ResolvedModel hub_cache_dir list_known_models",
    "bitcli.hub.resolve": "check_reference parse_hub_ref resolve_model",
})

__all__ = sorted(_LAZY) + ["zoo"]
__getattr__ = lazy_attributes(__name__, _LAZY)
