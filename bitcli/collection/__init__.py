"""An embedding as a collection: open it, search it, find near-duplicates in it.

    from bitcli.collection import open_index, exact_search, find_groups

    index = open_index("photos.npy")                 # memory-mapped; validated against its manifest
    hits = exact_search(index, index.take([0]), k=5, exclude=[0])[0]   # like row 0, but not itself
    groups = find_groups(index, threshold=0.9)       # near-duplicate groups, largest first

"""

from __future__ import annotations

from bitcli.util import lazy_attributes, lazy_table

# imagededup's CNN default for the same kind of feature (docs/collection.md: why, how to tune it);
# here, not in dedup.py, so that `bit --help` shows it without importing numpy.
DEFAULT_THRESHOLD = 0.9

_LAZY = lazy_table({
    "bitcli.collection.dedup": "DuplicateGroup check_threshold find_groups",
    "bitcli.collection.keep": "KEEP_POLICIES paths_to_delete",
    "bitcli.collection.index": "EmbeddingIndex open_index",
    "bitcli.collection.queries": "SearchOutcome search",
    "bitcli.collection.exact": "Match exact_search",
})

__all__ = sorted(_LAZY) + ["DEFAULT_THRESHOLD"]
__getattr__ = lazy_attributes(__name__, _LAZY)
