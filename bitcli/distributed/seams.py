"""The seam between the distributed engine and the rest of bitcli: every name it borrows, here.

The embed store (`bitcli.store`) owns the output paths, the manifest and error-list formats, the
`.npy` header and the publication of a finished output (`Assembly`: the partial folder, its lock,
the run record, one set published through the commit record); the shards reuse all of them, so
that combining shards gives a local run's files, published the local run's way. Nothing here
imports torch: the model side (`bitcli.load`, `Embedder`) is imported where a worker starts.
"""

from __future__ import annotations

from bitcli.errors import BitError, InputError, UsageError
from bitcli.inputs import InputItem, expand_inputs
from bitcli.pipeline import RunOptions  # light: no torch
from bitcli.store.assembly import Assembly
from bitcli.store.files import npy_header, read_lines
from bitcli.store.journal import files_problem, inputs_digest, read_run_record, run_state
from bitcli.store.metadata import FileIdentity, identify_all, metadata_for
from bitcli.store.paths import EmbedPaths, check_output, escape_error_path, manifest_problem, unescape_error_path, writing
from bitcli.store.publish import recover
from bitcli.store.settings import describe_difference as settings_difference
from bitcli.store.writer import EmbedSummary
from bitcli.util import encode_lines, first_line, fsync_dir, name_some, write_atomic

__all__ = [
    "Assembly",
    "BitError",
    "EmbedPaths",
    "EmbedSummary",
    "InputError",
    "InputItem",
    "RunOptions",
    "UsageError",
    "check_output",
    "encode_lines",
    "escape_error_path",
    "FileIdentity",
    "expand_inputs",
    "identify_all",
    "files_problem",
    "first_line",
    "fsync_dir",
    "inputs_digest",
    "manifest_problem",
    "metadata_for",
    "name_some",
    "npy_header",
    "read_lines",
    "read_run_record",
    "recover",
    "run_state",
    "settings_difference",
    "unescape_error_path",
    "write_atomic",
    "writing",
]
