"""`bit info OUT.npy`: what a collection holds (model and commit, rows, settings, identity policy)."""

from __future__ import annotations

import sys

import typer
from typing import Annotated

from bitcli.cli.common import EXIT_OK, DebugOpt, QuietOpt, TableOrJson, epilog, require_stdout
from bitcli.cli.search import IndexArg, ManifestOpt
from bitcli.util import npy_name

EPILOG = epilog(
    "bit info photos.npy",
    "bit info photos.npy --format json | jq .model.reference",
    note="Reads the header, the manifest and the .npy header; no row, no model, no torch.",
)


def info(
    index: IndexArg,
    format: Annotated[TableOrJson, typer.Option("--format", "-f", help="A table for people, or one JSON object.")] = TableOrJson.table,
    manifest: ManifestOpt = None,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> int:
    """What an embedding holds: model and commit, rows, dimension, dtype, settings, identity policy."""
    from bitcli.collection import open_index
    from bitcli.output.collection import render_info

    require_stdout("the report")
    collection = open_index(npy_name(index), manifest=manifest, allow_empty=True)
    try:
        report = collection.describe()
    finally:
        collection.close()
    render_info(report, format.value, sys.stdout)
    return EXIT_OK
