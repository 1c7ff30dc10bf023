"""The embed store: streaming, resumable, atomic `.npy` embedding collections (docs/collection.md;
ARCHITECTURE.md says which module owns what).

A run in progress lives in `OUT.npy.partial/` (`files.py`: its state, rows, journal and lock);
`finish()` publishes the set through one commit record (`publish.py`), so after any kill the
files are the old set, the new one, or a publication the next run completes.
"""

from __future__ import annotations

from bitcli.store.collection import Collection
from bitcli.store.files import npy_header
from bitcli.store.paths import EmbedPaths, check_output, escape_error_path, unescape_error_path, write_errors
from bitcli.store.publish import recover
from bitcli.store.writer import EmbedSummary, EmbedWriter

__all__ = [
    "Collection", "EmbedPaths", "EmbedSummary", "EmbedWriter", "check_output", "escape_error_path", "npy_header",
    "recover", "unescape_error_path", "write_errors",
]
