"""`bit eval`: accuracy, top-5, per-class precision/recall and the confusion matrix of any classifier on labelled data."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from bitcli.cli.common import (
    EXIT_OK,
    EXIT_SOME_FAILED,
    Runtime,
    TableOrJson,
    Ui,
    check_settings,
    epilog,
    load_model,
    require_stdout,
    takes,
)

EPILOG = epilog(
    "bit eval photos-test/ -m my-model",
    "bit eval labels.csv -m my-model --format json | jq .accuracy",
    "bit eval photos-test/ -m my-model --errors mistakes.csv  # every wrong answer, for review",
    "bit eval imagenet-val/ -m google/bit-50  # folders named n01440764 ... or after the labels",
    note=(
        "DATA: a folder with one sub-folder per class, or a CSV/JSONL file of path,label. Class names are "
        "matched to the model's labels (exactly, by WordNet id, or ignoring case, _ and -, or one synonym)."
    ),
)


@takes("model", "device", "precision", "batch_size", "threads")
def eval_command(
    data: Annotated[str, typer.Argument(metavar="DATA", help="Class folders, or a .csv/.jsonl of path,label.", show_default=False)],
    format: Annotated[TableOrJson, typer.Option("--format", "-f", help="Tables or one JSON object.")] = TableOrJson.table,
    errors: Annotated[
        Optional[Path],
        typer.Option(
            "--errors", metavar="FILE",
            help="Write every misclassified image (path, true, predicted, score; most confident first) to FILE: "
            "CSV if it ends in .csv, JSON lines if .jsonl. Replaces only a file bit eval wrote.",
        ),
    ] = None,
    runtime: Runtime = Runtime(),
    ui: Ui = Ui(),
) -> int:
    """Accuracy, top-5, per-class precision/recall/support and the confusion matrix on labelled data."""
    from bitcli.output import render_document
    from bitcli.output.evaluation import check_errors_target, evaluation_tables, write_mistakes
    from bitcli.transfer.data import load_dataset
    from bitcli.transfer.evaluate import evaluate

    require_stdout("the evaluation")
    check_settings(runtime.device, runtime.model)
    if errors is not None:
        check_errors_target(errors)  # before the run, not after it
    dataset = load_dataset(data)  # data errors before the model loads
    loaded = load_model(runtime.model, runtime.options(), ui, runtime.threads)
    with ui.progress(len(dataset), "evaluating") as bar:
        result = evaluate(dataset, loaded, progress=lambda done, total: bar.advance(done - bar.done),
                          batch_size=runtime.batch_size, workers=runtime.threads)
    ui.summary(bar, len(result.failed))
    for path, reason in result.failed:
        ui.error(f"{path}: {reason}")
    record = result.as_dict()
    render_document(record, format.value, sys.stdout, lambda: evaluation_tables(record), spaced=True)
    if errors is not None:
        write_mistakes(errors, result.mistakes)
        ui.info(f"wrote {len(result.mistakes):,} misclassified images to {errors}")
    elif result.mistakes and format is TableOrJson.table:
        ui.info(f"{len(result.mistakes):,} misclassified images: --errors FILE.csv (or .jsonl) lists them")
    return EXIT_SOME_FAILED if result.failed else EXIT_OK
