"""The Hugging Face Hub: model references -> local checkpoint directories, and the zoo of known BiT models.

    zoo.py      known checkpoints and their aliases (data only)
    cache.py    the standard hub cache: what is cached, `bit models` (`list_known_models`)
    resolve.py  a reference (path, alias, org/name[@revision]) -> `ResolvedModel`, downloading at most once

No torch: `bit models` and `bit download` run without it.
"""

from __future__ import annotations

from bitcli.hub import zoo
from bitcli.hub.cache import HubRef, HubSettings, ResolvedModel, hub_cache_dir, list_known_models
from bitcli.hub.resolve import check_reference, parse_hub_ref, resolve_model

__all__ = [
    "HubRef", "HubSettings", "ResolvedModel", "check_reference", "hub_cache_dir", "list_known_models", "parse_hub_ref",
    "resolve_model", "zoo",
]
