"""`bit inspect`, `bit download` and `bit models`: what a model is, fetching it, and the zoo.

`bit models` and `bit download` never import torch.
"""

from __future__ import annotations

import sys
from typing import Annotated, Optional

import typer

from bitcli.cli.common import (
    EXIT_CODES_HELP,
    EXIT_MODEL,
    EXIT_OK,
    DebugOpt,
    Device,
    DeviceOpt,
    ModelOpt,
    Precision,
    QuietOpt,
    TableOrJson,
    Ui,
    quiet_hub,
    load_model,
    require_stdout,
    run_options,
)
from bitcli.errors import ModelError
from bitcli.pipeline import DEFAULT_MODEL

INSPECT_EPILOG = (
    "[dim]Examples:[/dim]\n\n"
    "  bit inspect\n\n"
    "  bit inspect google/bit-50@9e9a281aa096247270860f9cda4f68daacca33d0\n\n"
    "  bit inspect ./my-checkpoint --format json | jq .gflops\n\n" + EXIT_CODES_HELP
)
DOWNLOAD_EPILOG = "[dim]Examples:[/dim]\n\n  bit download google/bit-50\n\n  bit download bit-50 google/bit-50@main"
MODELS_EPILOG = "[dim]Examples:[/dim]\n\n  bit models\n\n  bit models --format json"


def inspect(
    model_arg: Annotated[
        Optional[str],
        typer.Argument(metavar="MODEL", help="The model to describe (same forms as --model).", show_default=False),
    ] = None,
    format: Annotated[TableOrJson, typer.Option("--format", "-f", help="Rich tables or one JSON object.")] = TableOrJson.table,
    model: ModelOpt = DEFAULT_MODEL,
    device: DeviceOpt = Device.cpu,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> int:
    """What a model is: files, architecture, size, FLOPs, preprocessing and labels."""
    from bitcli import output
    from bitcli.inspection import build_report

    ui = Ui(quiet=quiet, debug=debug)
    require_stdout("the report")
    loaded = load_model(model_arg or model, run_options(device, Precision.fp32), ui)
    output.render_inspect(build_report(loaded, loaded.labels()), format.value, sys.stdout)
    return EXIT_OK


def download(
    models: Annotated[list[str], typer.Argument(metavar="MODEL", help="Models to fetch into the hub cache.")],
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> int:
    """Fetch models into the Hugging Face cache ahead of time; prints each local path."""
    from bitcli import hub

    ui = Ui(quiet=quiet, debug=debug)
    quiet_hub(ui)
    worst = EXIT_OK
    for ref in models:
        try:  # a cached model is not fetched again
            resolved = hub.resolve_model(ref, progress=ui.show_progress)
        except ModelError as exc:
            ui.error(str(exc))
            worst = EXIT_MODEL
            continue
        if resolved.notice:
            ui.warn(resolved.notice)
        typer.echo(str(resolved.path))
    return worst


def models(
    format: Annotated[TableOrJson, typer.Option("--format", "-f", help="Rich table or JSON.")] = TableOrJson.table,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> int:
    """Known BiT checkpoints (aliases): input size, classes, top-1, size, and whether each is cached."""
    from bitcli import hub, output

    output.render_models(hub.list_known_models(), format.value, sys.stdout)
    return EXIT_OK
