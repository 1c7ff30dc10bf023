"""The embed store: streaming, resumable, atomic `.npy` embedding matrices and their manifests.

    paths.py    EmbedPaths (every file a run writes), check_output, write_errors
    files.py    .npy headers, fsync, atomic text files
    journal.py  the journal of committed batches, read back for --resume
    writer.py   EmbedWriter (commit, finish) and write_groups (the batch/commit loop)

Layout while a run is in progress, next to the output `OUT.npy`:

    OUT.npy.partial/
        state.json      what produced the rows (model, dtype, options, a sha256 of the ordered
                        input paths); checked by --resume
        data.npy        a `.npy` header sized for any row count, then the rows appended so far
        journal.jsonl   one line per committed batch: the paths whose rows were appended
                        (in row order) and the inputs that failed

Each batch is committed in two steps: the rows are appended to `data.npy` and flushed to disk,
then one journal line is appended and flushed. The journal is the truth: on resume, rows beyond
what the journal accounts for (a kill between the two steps) are truncated away, and a torn last
journal line is ignored. Memory never holds more than one batch of rows.

`finish()` rewrites the header with the final row count (numpy pads the header so its length
does not depend on the count: it is byte-identical to `numpy.save`), writes the manifest and
the error list under temporary names, renames them into place, renames `data.npy` to `OUT.npy`
and removes the partial directory. An interrupted run leaves the partial directory and never a
truncated `OUT.npy`; because commits happen at batch boundaries and the caller batches the
remaining inputs the same way, a resumed run produces the same bytes as an uninterrupted one.

`-o -` (stdout) keeps the rows in an anonymous temporary file and streams the finished array to
the given binary stream; it cannot be resumed.
"""

from __future__ import annotations

from bitcli.store.files import npy_header
from bitcli.store.paths import EmbedPaths, check_output, escape_error_path, unescape_error_path, write_errors
from bitcli.store.writer import EmbedSummary, EmbedWriter, write_groups

__all__ = [
    "EmbedPaths", "EmbedSummary", "EmbedWriter", "check_output", "escape_error_path", "npy_header",
    "unescape_error_path", "write_errors", "write_groups",
]
