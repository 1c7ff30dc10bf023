"""`bit inspect`, `bit download` and `bit models`: what a model is, fetching it, and the zoo.
No torch, except `bit inspect` of a pickle or `.npz` checkpoint (no header to describe it from).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from bitcli.cli.common import EXIT_MODEL, EXIT_OK, Device, DeviceOpt, Runtime, TableOrJson, Ui, epilog, option, quiet_hub, require_stdout, takes
from bitcli.errors import ModelError, UsageError
from bitcli.pipeline import DEFAULT_MODEL

INSPECT_EPILOG = epilog(
    "bit inspect",
    "bit inspect google/bit-50@9e9a281aa096247270860f9cda4f68daacca33d0",
    "bit inspect ./my-checkpoint --format json | jq .gflops",
)
DOWNLOAD_EPILOG = epilog("bit download google/bit-50", "bit download bit-50 google/bit-50@main", "bit download bit-50 --local-dir bit-50/  # then -m bit-50/ on a machine without a network")
MODELS_EPILOG = epilog("bit models", "bit models --format json")


@takes("model")
def inspect(
    model_arg: Annotated[
        Optional[str],
        typer.Argument(metavar="MODEL", help="The model to describe (same forms as --model).", show_default=False),
    ] = None,
    format: option(TableOrJson, "--format", "-f", help="Rich tables or one JSON object.") = TableOrJson.table,
    runtime: Runtime = Runtime(),
    device: DeviceOpt = Device.cpu,
    ui: Ui = Ui(),
) -> int:
    """What a model is: files, architecture, size, FLOPs, preprocessing and labels."""
    from bitcli import hub, output

    model = runtime.model
    require_stdout("the report")
    quiet_hub(ui)
    resolved = hub.resolve_model(model_arg or model, progress=ui.show_progress)
    if resolved.notice:
        ui.warn(resolved.notice)
    described = describe(resolved, device)
    notice = described.preprocess.missing_notice(model_arg or model)
    if notice:
        ui.warn(notice)
    from bitcli.checkpoint.describe import build_report  # torch: after the model is found

    report = build_report(described, described.labels())
    output.render_document(report, format.value, sys.stdout, lambda: output.inspect_tables(report))
    return EXIT_OK


def describe(resolved: Any, device: str) -> Any:
    """The checkpoint from its files (config, safetensors header), else loaded (pickle, .npz)."""
    from bitcli.checkpoint.describe import describe_checkpoint

    described = describe_checkpoint(Path(resolved.path), resolved)
    if described is None:
        from bitcli.pipeline import load

        described = load(str(resolved.path), device=device)
        described.resolved = resolved  # the report names the reference given, not the directory
    return described


@takes()
def download(
    models: Annotated[list[str], typer.Argument(metavar="MODEL", help="Models to fetch into the hub cache.")],
    local_dir: option(
        Optional[Path], "--local-dir", metavar="DIR", help="Also copy the model's files into DIR (one MODEL), for -m DIR elsewhere."
    ) = None,
    ui: Ui = Ui(),
) -> int:
    """Fetch models into the Hugging Face cache ahead of time; prints each local path."""
    from bitcli import hub

    if local_dir is not None and len(models) != 1:
        raise UsageError(f"--local-dir takes one MODEL ({len(models)} given): run bit download once per model")
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
        if local_dir is not None:
            from bitcli.hub.cache import copy_to_local_dir

            typer.echo(str(copy_to_local_dir(resolved, local_dir)))
        else:
            typer.echo(str(resolved.path))
    return worst


@takes()
def models(
    format: option(TableOrJson, "--format", "-f", help="Rich table or JSON.") = TableOrJson.table,
    ui: Ui = Ui(),
) -> int:
    """Known BiT checkpoints (aliases): input size, classes, top-1, size, and whether each is cached."""
    from bitcli import hub, output

    require_stdout("the models")
    default = os.environ.get("BIT_MODEL") or DEFAULT_MODEL
    rows = [{**row, "default": is_default(row, default)} for row in hub.list_known_models()]
    output.render_document(rows, format.value, sys.stdout, lambda: [output.models_table(rows, default)])
    return EXIT_OK


def is_default(row: dict[str, Any], default: str) -> bool:
    """Whether the zoo row is the model commands use without --model (`$BIT_MODEL`, else google/bit-50)."""
    if default.lower() == str(row["alias"]).lower():
        return True
    repo, _, revision = default.partition("@")
    return repo.lower() == str(row["repo_id"]).lower() and revision in ("", row.get("revision") or "main")
