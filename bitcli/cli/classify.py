"""`bit classify`: top-k classes and softmax probabilities for each image, streamed to stdout.

Each batch is written when done, the bar out of the way (`Bar.paused`). When a table and the
messages share a terminal, the error lines follow the table instead of breaking it up."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from bitcli.cli.common import (
    EXIT_OK,
    EXIT_SOME_FAILED,
    CsvRawOpt,
    ClassifyFormat,
    InputsArg,
    NullOpt,
    Runtime,
    Ui,
    epilog,
    expand,
    load_model,
    require_stdout,
    server_option,
    takes,
)
from bitcli.errors import UsageError
from bitcli.pipeline import DEFAULT_MODEL

EPILOG = epilog(
    "bit classify cat.jpg dog.png",
    "bit classify photos/ --top-k 3",
    "bit classify 'photos/**/*.jpg' --format csv > predictions.csv",
    "find photos -name '*.jpg' | bit classify - --format jsonl",
    "bit classify x.jpg -m ./my-checkpoint --labels labels.txt",
)

ServerOpt = server_option("Send the images to a running `bit serve` (its model; BIT_TOKEN for its token).")


@takes("model", "device", "precision", "batch_size", "threads", "max_pixels", "fast_jpeg")
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
    csv_raw: CsvRawOpt = False,
    runtime: Runtime = Runtime(),
    null: NullOpt = False,
    server: ServerOpt = None,
    ui: Ui = Ui(),
) -> int:
    """Top-k classes and softmax probabilities for each image."""
    from bitcli import output

    require_stdout("the predictions")
    fmt = output.resolve_format(format.value, sys.stdout)
    items = expand(inputs, null, ui)
    if server is not None:  # the warm model of a `bit serve`: no torch, no model code here
        from bitcli.serve.client import Client, token_from_env

        if labels is not None:
            raise UsageError("--labels applies to a local model; the server names the classes (drop --labels or --server)")
        client = Client(server, token=token_from_env())
        served = client.model()
        if runtime.model not in (DEFAULT_MODEL, served.get("model")):  # BIT_SERVER set, -m given: not silently another model
            raise UsageError(f"-m {runtime.model}: the server at {server} runs {served.get('model')}; drop -m (or --server / BIT_SERVER) to use it")
        top_k = min(top_k, max(1, int(served["num_labels"])))
        names = client.labels() if fmt == "table" else None
        groups: Any = client.classify_groups(items, top_k=top_k, batch_size=runtime.batch_size)
    else:
        from bitcli.pipeline import Classifier

        options = runtime.options()
        if labels is not None:  # a file that cannot be read reports before the model loads
            from bitcli.labels import read_labels_file

            read_labels_file(labels)
        classifier = Classifier(load_model(runtime.model, options, ui, runtime.threads), top_k=top_k, labels=labels, options=options)
        top_k, names = classifier.top_k, classifier.labels.names
        groups = classifier.classify_groups(items)
    renderer = output.classify_renderer(
        fmt, sys.stdout, count=len(items), top_k=top_k, paths=[item.path for item in items], labels=names,
        csv_raw=csv_raw,
    )
    on_screen = output.is_terminal(sys.stdout)  # rows go to a terminal: the bar must step aside
    held = fmt == "table" and output.same_terminal(sys.stdout, sys.stderr)
    errors: list[str] = []
    bar = ui.progress(len(items), "classifying")
    try:
        with bar:
            for group in groups:
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
