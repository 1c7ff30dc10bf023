"""An embedding as a collection: open it, search it, find near-duplicates in it.

    from bitcli.collection import open_index, exact_search, find_groups

    index = open_index("photos.npy")                 # memory-mapped; validated against its manifest
    hits = exact_search(index, index.take([0]), k=5, exclude=[0])[0]   # like row 0, but not itself
    groups = find_groups(index, threshold=0.9)       # near-duplicate groups, largest first

Modules: `index` (open and validate, stream blocks), `search` (exact cosine top-k, streamed),
`dedup` (threshold pairs per block + union-find, `--keep` choices), `html` (self-contained
pages), `ann` (optional faiss index beside the array). The metadata sidecar that `bit embed`
writes lives in `bitcli.store.metadata`. Library code never prints.
"""

from __future__ import annotations

from bitcli.collection.dedup import DEFAULT_THRESHOLD, KEEP_POLICIES, DuplicateGroup, check_threshold, find_groups, paths_to_delete
from bitcli.collection.index import EmbeddingIndex, open_index
from bitcli.collection.search import Match, SearchOutcome, exact_search, search

__all__ = [
    "DEFAULT_THRESHOLD",
    "KEEP_POLICIES",
    "DuplicateGroup",
    "EmbeddingIndex",
    "Match",
    "SearchOutcome",
    "check_threshold",
    "exact_search",
    "find_groups",
    "open_index",
    "paths_to_delete",
    "search",
]
