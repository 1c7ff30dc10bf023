"""`bit classify`: top-k classes and softmax probabilities for each image, streamed to stdout.

Each batch's results are written as soon as the batch is done (tables too), with the progress
bar out of the way (`Bar.paused`). When the table and the messages share a terminal, the table's
rows already show each failure (cut to the width), so the full error lines follow the table
instead of breaking it up; otherwise each is printed as it happens.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from bitcli.cli.common import (
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
from bitcli.cli.helpscreen import epilog
from bitcli.pipeline import DEFAULT_BATCH_SIZE, DEFAULT_MODEL
from bitcli.util import DEFAULT_MAX_PIXELS

EPILOG = epilog(
    "bit classify cat.jpg dog.png",
    "bit classify photos/ --top-k 3",
    "bit classify 'photos/**/*.jpg' --format csv > predictions.csv",
    "find photos -name '*.jpg' | bit classify - --format jsonl",
    "bit classify x.jpg -m ./my-checkpoint --labels labels.txt",
)


def classify(
    inputs: InputsArg,
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1, metavar="N", help="How many classes to show per image.")] = 5,
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
    renderer = output.classify_renderer(
        fmt, sys.stdout, count=len(items), top_k=classifier.top_k,
        paths=[item.path for item in items], labels=classifier.labels.names,
    )
    on_screen = output.is_terminal(sys.stdout)  # rows go to a terminal: the bar must step aside
    held = fmt == "table" and output.same_terminal(sys.stdout, sys.stderr)
    errors: list[str] = []
    bar = ui.progress(len(items), "classifying")
    try:
        with bar:
            for group in classifier.classify_groups(items):
                failures = [f"{r.path}: {r.error}" for r in group if r.error is not None]
                errors += failures
                with bar.paused(done=len(group), screen=on_screen or bool(failures)):
                    for result in group:
                        renderer.write(result)
                    renderer.flush()
                    if not held:
                        for line in failures:
                            ui.error(line)
            with bar.paused(screen=on_screen):
                renderer.close()
    except KeyboardInterrupt:
        close_run(ui, bar, errors, held)
        raise
    close_run(ui, bar, errors, held)
    return EXIT_SOME_FAILED if errors else EXIT_OK


def close_run(ui: Ui, bar: Any, errors: list[str], held: bool) -> None:
    """After the bar is gone: the error lines the table held back, then the summary."""
    if held:
        for line in errors:
            ui.error(line)
    ui.summary(bar, len(errors))
