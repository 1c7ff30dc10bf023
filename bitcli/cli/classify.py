"""`bit classify`: top-k classes and softmax probabilities for each image, streamed to stdout."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from bitcli.cli.common import (
    EXIT_CODES_HELP,
    EXIT_OK,
    EXIT_SOME_FAILED,
    BatchSizeOpt,
    ClassifyFormat,
    DebugOpt,
    Device,
    DeviceOpt,
    FastJpegOpt,
    InputsArg,
    MaxPixelsOpt,
    ModelOpt,
    NullOpt,
    Precision,
    PrecisionOpt,
    QuietOpt,
    ThreadsOpt,
    Ui,
    expand,
    load_model,
    require_stdout,
    run_options,
)
from bitcli.pipeline import DEFAULT_BATCH_SIZE, DEFAULT_MODEL
from bitcli.util import DEFAULT_MAX_PIXELS

EPILOG = (
    "[dim]Examples:[/dim]\n\n"
    "  bit classify cat.jpg dog.png\n\n"
    "  bit classify photos/ --top-k 3\n\n"
    "  bit classify 'photos/**/*.jpg' --format csv > predictions.csv\n\n"
    "  find photos -name '*.jpg' | bit classify - --format jsonl\n\n"
    "  bit classify x.jpg -m ./my-checkpoint --labels labels.txt\n\n" + EXIT_CODES_HELP
)


def classify(
    inputs: InputsArg,
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1, help="How many classes to show per image.")] = 5,
    format: Annotated[
        ClassifyFormat,
        typer.Option("--format", "-f", help="auto: table on a terminal, jsonl otherwise."),
    ] = ClassifyFormat.auto,
    labels: Annotated[
        Optional[Path], typer.Option("--labels", metavar="FILE", help="Class names, one per line, in class order.")
    ] = None,
    model: ModelOpt = DEFAULT_MODEL,
    device: DeviceOpt = Device.auto,
    precision: PrecisionOpt = Precision.fp32,
    batch_size: BatchSizeOpt = DEFAULT_BATCH_SIZE,
    threads: ThreadsOpt = None,
    max_pixels: MaxPixelsOpt = DEFAULT_MAX_PIXELS,
    fast_jpeg: FastJpegOpt = False,
    null: NullOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> int:
    """Top-k classes and softmax probabilities for each image."""
    from bitcli import output
    from bitcli.pipeline import Classifier

    ui = Ui(quiet=quiet, debug=debug)
    options = run_options(device, precision, batch_size, threads, max_pixels, fast_jpeg)
    require_stdout("the predictions")
    fmt = output.resolve_format(format.value, sys.stdout)
    items = expand(inputs, null, ui)
    classifier = Classifier(load_model(model, options, ui, threads), top_k=top_k, labels=labels, options=options)
    renderer = output.classify_renderer(fmt, sys.stdout, count=len(items), top_k=classifier.top_k)
    failed = 0
    with ui.progress(len(items), "classifying") as advance:
        for group in classifier.classify_groups(items):
            for result in group:
                if result.error is not None:
                    failed += 1
                    ui.error(f"{result.path}: {result.error}")
                renderer.write(result)
            advance(len(group))
        renderer.close()
    return EXIT_SOME_FAILED if failed else EXIT_OK
