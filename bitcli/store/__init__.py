"""The embed store: streaming, resumable, atomic `.npy` embedding collections (docs/collection.md).

    settings.py EmbedSettings: the one record of what made the rows, compared by every check
    paths.py    EmbedPaths (every file a run writes), check_output (what is refused, before any
                work), write_errors (a failed write as one line naming the output)
    files.py    the partial run on disk: .npy headers, staged names, the partial directory's
                files and lock, the journal of committed batches, each row's FileIdentity, the
                finished run's record
    metadata.py the sidecar (OUT.meta.json, OUT.files.jsonl): settings, each row's file identity
    publish.py  StagedSet: the set (array, manifest, error list, sidecar, row norms, run record) published
                through one commit record, `recover` completing an interrupted one
    writer.py   EmbedWriter: batches committed (rows, then a journal line), then the set published
    update.py   `--update`: the plan (kept, changed, new, moved, removed) and its result groups
    collection.py  Collection: the one object every producer embeds through (a local run, `--resume`,
                `--update`, a shard job, a Ray worker): `plan` says what is left, `Run.write` does it;
                `copy_parts`: finished collections (shards) committed as a run's own (`bit combine`, Ray)

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
