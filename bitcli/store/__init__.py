"""The embed store: streaming, resumable, atomic `.npy` embedding matrices and their manifests.

    paths.py    EmbedPaths (every file a run writes), check_output (what is refused, before any
                work), write_errors (a failed write as one line naming the output)
    files.py    .npy headers, fsync, staged files, the partial directory's names and its lock
    journal.py  the journal of committed batches; the record of a finished run
    metadata.py the metadata sidecar (OUT.meta.json, OUT.files.jsonl): what made the rows, each
                row's file identity; read by `bit search`, `bit dedup` and `--update`
    publish.py  publishing the set (StagedSet: the array, manifest, error list, sidecar and run
                record staged, the commit record, the renames) and completing an interrupted
                one; the one way any finished output appears
    update.py   `--update`: the plan (kept, changed, new, moved, removed) and its result groups
    writer.py   EmbedWriter (commit, finish) and write_groups (the batch/commit loop)
    assembly.py Assembly: the partial directory held while `bit combine` or `--engine ray`
                assembles an output from shards, published through StagedSet

Layout while a run is in progress, next to the output `OUT.npy`:

    OUT.npy.partial/
        state.json      what produced the rows (model, dtype, options, a sha256 of the ordered
                        input paths); checked by --resume
        data.npy        a `.npy` header sized for any row count, then the rows appended so far
        journal.jsonl   one line per committed batch: the paths whose rows were appended
                        (in row order), their files' identities, and the inputs that failed
        lock            held (flock) by the run writing the output
        publish.json    only while publishing: which staged file becomes which output

Each batch is committed in two steps: the rows are appended to `data.npy` and flushed to disk,
then one journal line is appended and flushed. The journal is the truth: on resume, rows beyond
what the journal accounts for (a kill between the two steps) are truncated away, and a torn last
journal line is ignored. Memory never holds more than one batch of rows.

`finish()` rewrites the header with the final row count (numpy pads the header so its length
does not depend on the count: it is byte-identical to `numpy.save`) and publishes the array, the
manifest, the error list, the metadata sidecar and the run record `.OUT.npy.run.json` as one
set (`publish.StagedSet`): after any kill the files on disk are the old set, the new set, or a committed publication that the
next `bit embed` on that output completes. Because commits happen at batch boundaries and the
caller batches the remaining inputs the same way, a resumed run produces the same bytes as an
uninterrupted one.

An output assembled from shards (`bit combine`, `--engine ray`) goes through the same partial
directory, lock, staged files (the sidecar included, without file identities), run record and
commit record (`assembly.py`); its `state.json` says `"assembly"` and its journal stays empty,
since the shards hold the work.

`-o -` (stdout) keeps the rows in an anonymous temporary file and streams the finished array to
the given binary stream, every byte checked; the manifest appears only once the array was
written in full. It cannot be resumed.
"""

from __future__ import annotations

from bitcli.store.assembly import Assembly
from bitcli.store.files import npy_header
from bitcli.store.paths import EmbedPaths, check_output, escape_error_path, unescape_error_path, write_errors
from bitcli.store.publish import recover
from bitcli.store.writer import EmbedSummary, EmbedWriter, write_groups

__all__ = [
    "Assembly", "EmbedPaths", "EmbedSummary", "EmbedWriter", "check_output", "escape_error_path", "npy_header",
    "recover", "unescape_error_path", "write_errors", "write_groups",
]
