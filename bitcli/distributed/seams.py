"""The seam between the distributed engine and the rest of bitcli: every name it borrows, here.

The embed store (`bitcli.store`) owns the output paths, the manifest and error-list formats and
the `.npy` header; the shards reuse all of them, so that combining shards gives a local run's
files. Nothing here imports torch: the model side (`bitcli.load`, `Embedder`) is imported where
a worker starts.
"""

from __future__ import annotations

from bitcli.errors import BitError, InputError, UsageError
from bitcli.inputs import InputItem, expand_inputs
from bitcli.pipeline import RunOptions  # light: no torch
from bitcli.store.files import fsync_dir, npy_header, read_lines, write_atomic
from bitcli.store.journal import finished_inputs, inputs_digest
from bitcli.store.metadata import write_metadata
from bitcli.store.paths import EmbedPaths, check_output, escape_error_path, manifest_problem, unescape_error_path
from bitcli.store.staging import metadata_for
from bitcli.store.writer import EmbedSummary
from bitcli.util import first_line, name_some

__all__ = [
    "BitError",
    "EmbedPaths",
    "EmbedSummary",
    "InputError",
    "InputItem",
    "RunOptions",
    "UsageError",
    "check_output",
    "escape_error_path",
    "expand_inputs",
    "finished_inputs",
    "first_line",
    "fsync_dir",
    "inputs_digest",
    "manifest_problem",
    "metadata_for",
    "name_some",
    "npy_header",
    "read_lines",
    "unescape_error_path",
    "write_atomic",
    "write_metadata",
]
