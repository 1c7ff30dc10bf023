"""The seam between the distributed engine and the rest of bitcli: every name it borrows, here.

Issue 10 moves these modules (`embedstore` -> `bitcli/store/`, `cli.py` -> `bitcli/cli/`) and
issue 14 adds a metadata sidecar beside `OUT.npy`; when they land only this file changes.
Nothing here imports torch: the model side (`bitcli.load`, `Embedder`) is imported where a
worker starts.
"""

from __future__ import annotations

from bitcli.embedstore import (  # the embed store: output paths, line formats, .npy header
    EmbedPaths,
    EmbedSummary,
    check_output,
    escape_error_path,
    inputs_digest,
    manifest_problem,
    npy_header,
    unescape_error_path,
)
from bitcli.embedstore import _fsync_dir as fsync_dir  # noqa: F401  (private there; public in bitcli/store)
from bitcli.embedstore import _write_atomic as write_lines_atomic  # noqa: F401
from bitcli.errors import BitError, InputError, UsageError
from bitcli.inputs import InputItem, expand_inputs
from bitcli.pipeline import DEFAULT_BATCH_SIZE, DEFAULT_MAX_PIXELS  # light: no torch

__all__ = [
    "BitError",
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_MAX_PIXELS",
    "EmbedPaths",
    "EmbedSummary",
    "InputError",
    "InputItem",
    "UsageError",
    "check_output",
    "escape_error_path",
    "expand_inputs",
    "fsync_dir",
    "inputs_digest",
    "manifest_problem",
    "npy_header",
    "unescape_error_path",
    "write_lines_atomic",
]
