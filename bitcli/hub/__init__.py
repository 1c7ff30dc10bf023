"""The Hugging Face Hub: model references -> local checkpoint directories, and the zoo of known BiT models.

    zoo.py      known checkpoints and their aliases (data only)
    cache.py    the standard hub cache: what is cached, `bit models` (`list_known_models`)
    resolve.py  a reference (path, alias, org/name[@revision]) -> `ResolvedModel`, downloading at most once

No torch: `bit models` and `bit download` run without it.
"""

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
