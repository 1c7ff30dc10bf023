"""The `bit` command (Typer): classify, embed, inspect, download, models.

This layer only parses options, calls the library (`pipeline`, `embedstore`, `inspect`, `hub`)
and hands records to `output`. Data goes to stdout; messages, warnings and progress bars go to
stderr. Errors: the library raises typed `BitError`s; `_guard` below is the one place that turns
them into one line on stderr and an exit code (README and ARCHITECTURE.md list the codes).

Startup cost matters (`bit --help` must stay fast): torch, numpy and huggingface_hub are
imported inside the command bodies, never at module level.
"""

from __future__ import annotations

import contextlib
import os
import sys
import traceback
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Callable, Iterator, Optional

import typer

from bitcli.errors import BitError, ModelError, UsageError
from bitcli.output import is_terminal
from bitcli.pipeline import DEFAULT_BATCH_SIZE, DEFAULT_MAX_PIXELS, DEFAULT_MODEL  # light: no torch, no PIL

EXIT_OK = 0
EXIT_SOME_FAILED = 1
EXIT_USAGE = 2
EXIT_MODEL = 3
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a closed pipe
EXIT_INTERRUPTED = 130

EXIT_CODES_HELP = (
    "Exit codes: 0 all inputs succeeded, 1 some inputs failed (the rest were processed), "
    "2 usage error, 3 the model could not be resolved or loaded, 130 interrupted, 141 stdout closed early."
)

app = typer.Typer(
    name="bit",
    help=(
        "Classify and embed images with Big Transfer (BiT) models.\n\n"
        "[dim]Examples:[/dim]\n\n"
        "  bit classify cat.jpg\n\n"
        "  bit classify photos/ --top-k 3 --format csv > labels.csv\n\n"
        "  bit embed 'photos/**/*.jpg' -o photos.npy --normalize\n\n"
        "  bit inspect google/bit-50 --format json\n\n" + EXIT_CODES_HELP
    ),
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


class ClassifyFormat(str, Enum):
    auto = "auto"
    table = "table"
    jsonl = "jsonl"
    json = "json"
    csv = "csv"


class TableOrJson(str, Enum):
    table = "table"
    json = "json"


class Precision(str, Enum):
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


class Dtype(str, Enum):
    float32 = "float32"
    float16 = "float16"


# -- options shared by the commands ------------------------------------------------------------

ModelOpt = Annotated[
    str,
    typer.Option(
        "--model",
        "-m",
        envvar="BIT_MODEL",
        metavar="MODEL",
        help="Hub id (google/bit-50), id@revision, alias (bit-50) or local checkpoint directory.",
        rich_help_panel="Model and runtime",
    ),
]
DeviceOpt = Annotated[
    str,
    typer.Option(
        "--device",
        metavar="DEVICE",
        help="Where the model runs: auto (cuda when available, else cpu), cpu, cuda, cuda:N (the N-th GPU), mps.",
        rich_help_panel="Model and runtime",
    ),
]
PrecisionOpt = Annotated[
    Precision,
    typer.Option(
        "--precision",
        help=(
            "fp32: within 1e-4 of the reference. bf16: about 2x faster on CPUs with AVX512-BF16 "
            "(and on GPUs), but scores differ in the second decimal. fp16: GPUs only, like bf16."
        ),
        rich_help_panel="Model and runtime",
    ),
]
BatchSizeOpt = Annotated[
    int,
    typer.Option("--batch-size", min=1, help="Images per forward pass.", rich_help_panel="Model and runtime"),
]
ThreadsOpt = Annotated[
    Optional[int],
    typer.Option(
        "--threads",
        min=1,
        help="CPU threads for the model (torch intra-op) and for image decoding; default: all cores.",
        rich_help_panel="Model and runtime",
    ),
]
MaxPixelsOpt = Annotated[
    int,
    typer.Option(
        "--max-pixels",
        min=0,
        metavar="N",
        help=(
            "Skip (as a failed input) any image of more than N pixels (width x height), read from its "
            "header before decoding: a guard against decompression bombs. 0: no limit."
        ),
        rich_help_panel="Images",
    ),
]
FastJpegOpt = Annotated[
    bool,
    typer.Option(
        "--fast-jpeg",
        help=(
            "Decode large JPEGs at a reduced scale (1/2, 1/4 or 1/8, never below the model's input size): "
            "much faster for big photos, but not pixel-exact, so scores differ slightly."
        ),
        rich_help_panel="Images",
    ),
]


@dataclass(frozen=True)
class ImageOptions:
    """How inputs are decoded: the pixel limit (0: none) and the fast JPEG path."""

    max_pixels: int = DEFAULT_MAX_PIXELS
    fast_jpeg: bool = False

    def runner_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `pipeline.Classifier` / `Embedder`."""
        return {"max_pixels": self.max_pixels or None, "fast_jpeg": self.fast_jpeg}


QuietOpt = Annotated[
    bool, typer.Option("--quiet", "-q", help="No progress bar, warnings or summary; errors still print.", rich_help_panel="Messages")
]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show full tracebacks.", rich_help_panel="Messages")]


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"bit {_package_version()}")
        raise typer.Exit(0)


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("bitcli")
    except PackageNotFoundError:
        return "0.1.0"


@app.callback()
def root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version_callback, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Classify and embed images with Big Transfer (BiT) models."""
    _tolerant_streams()


def _tolerant_streams() -> None:
    """Non-UTF-8 file names (surrogates) must not crash output: stdout writes their original
    bytes, stderr escapes them. Streams that cannot be reconfigured are left alone."""
    for stream, errors in ((sys.stdout, "surrogateescape"), (sys.stderr, "backslashreplace")):
        try:
            stream.reconfigure(errors=errors)
        except (AttributeError, ValueError, OSError):
            pass


# -- messages and the error mapping ------------------------------------------------------------


@dataclass
class Ui:
    """Everything the commands print besides data: all of it goes to stderr."""

    quiet: bool = False
    debug: bool = False
    _console: Any = field(default=None, repr=False)

    @property
    def console(self) -> Any:
        if self._console is None:
            from rich.console import Console

            self._console = Console(file=sys.stderr, stderr=True, highlight=False, soft_wrap=True)
        return self._console

    def _line(self, prefix: str, style: str, message: str) -> None:
        from rich.text import Text

        self.console.print(Text.assemble((prefix, style), message))

    def error(self, message: str) -> None:
        """One line, even when a file name in `message` holds a line break (shown escaped)."""
        self._line("error: ", "bold red", message.replace("\n", "\\n").replace("\r", "\\r"))

    def warn(self, message: str) -> None:
        if not self.quiet:
            self._line("warning: ", "yellow", message)

    def info(self, message: str) -> None:
        if not self.quiet:
            from rich.text import Text

            self.console.print(Text(message))

    @property
    def show_progress(self) -> bool:
        return not self.quiet and is_terminal(sys.stderr)

    @contextlib.contextmanager
    def progress(self, total: int | None, what: str) -> Iterator[Callable[[int], None]]:
        """A bar with count, rate (img/s) and ETA on stderr; a no-op when quiet or not a terminal."""
        if not self.show_progress:
            yield lambda n: None
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeRemainingColumn(),
        )
        with Progress(*columns, console=self.console, transient=True) as bar:
            task = bar.add_task(what, total=total, rate="")

            def advance(n: int) -> None:
                bar.advance(task, n)
                speed = bar.tasks[task].speed
                bar.update(task, rate=f"{speed:.1f} img/s" if speed else "")

            yield advance


def _guard(ui: Ui, body: Callable[[], int]) -> None:
    """Run a command body; map its outcome to an exit code and at most one line on stderr."""
    try:
        code = body()
    except typer.Exit:
        raise
    except BitError as exc:
        if ui.debug:
            traceback.print_exc()
        ui.error(str(exc))
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        ui.error("interrupted")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except BrokenPipeError:
        _silence_stdout()
        raise typer.Exit(EXIT_BROKEN_PIPE) from None
    except Exception as exc:  # a bug, not a user error: say so, traceback behind --debug
        if ui.debug:
            traceback.print_exc()
        ui.error(f"unexpected {type(exc).__name__}: {exc} (rerun with --debug for the traceback)")
        raise typer.Exit(EXIT_SOME_FAILED) from None
    raise typer.Exit(code)


def _silence_stdout() -> None:
    """After EPIPE, point stdout at /dev/null so Python's exit-time flush does not fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


def _setup_runtime(threads: int | None) -> None:
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


def _quiet_hub(ui: Ui) -> None:
    """Under --quiet, silence huggingface_hub's own log lines (e.g. "Trying to resume download...").

    Its errors still reach bitcli as exceptions and print as one `error:` line.
    """
    if ui.quiet:
        from huggingface_hub.utils import logging as hf_logging

        hf_logging.set_verbosity_error()


@dataclass(frozen=True)
class ModelChoice:
    """Which model to load, where, and in which precision."""

    model: str
    device: str = "auto"  # checked by pipeline.load (bitcli.devices): a bad value is one usage-error line
    precision: Precision = Precision.fp32


def _load(choice: ModelChoice, ui: Ui) -> Any:
    """Resolve and load the model; every failure becomes a ModelError (exit 3)."""
    from bitcli import pipeline

    _quiet_hub(ui)
    loaded = pipeline.load(
        choice.model, device=choice.device, precision=choice.precision.value, progress=ui.show_progress
    )
    if loaded.notice:
        ui.warn(loaded.notice)
    if choice.precision is Precision.bf16 and loaded.device.type == "cpu":
        from bitcli.engine import bf16_supported

        if not bf16_supported():
            ui.warn("this CPU has no native bfloat16 arithmetic: --precision bf16 will be slower than fp32")
    return loaded


def _expand(inputs: list[str]) -> list[Any]:
    from bitcli.inputs import expand_inputs

    return list(expand_inputs(inputs, stdin=sys.stdin))


# -- classify ----------------------------------------------------------------------------------

CLASSIFY_EPILOG = (
    "[dim]Examples:[/dim]\n\n"
    "  bit classify cat.jpg dog.png\n\n"
    "  bit classify photos/ --top-k 3\n\n"
    "  bit classify 'photos/**/*.jpg' --format csv > predictions.csv\n\n"
    "  find photos -name '*.jpg' | bit classify - --format jsonl\n\n"
    "  bit classify x.jpg -m ./my-checkpoint --labels labels.txt\n\n" + EXIT_CODES_HELP
)


@app.command(epilog=CLASSIFY_EPILOG)
def classify(
    inputs: Annotated[
        list[str],
        typer.Argument(
            metavar="INPUTS",
            help="Image files, directories, quoted globs ('photos/*.jpg'), or - to read paths from stdin.",
            show_default=False,
        ),
    ],
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1, help="How many classes to show per image.")] = 5,
    format: Annotated[
        ClassifyFormat,
        typer.Option("--format", "-f", help="auto: table on a terminal, jsonl otherwise."),
    ] = ClassifyFormat.auto,
    labels: Annotated[
        Optional[Path], typer.Option("--labels", metavar="FILE", help="Class names, one per line, in class order.")
    ] = None,
    model: ModelOpt = DEFAULT_MODEL,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = Precision.fp32,
    batch_size: BatchSizeOpt = DEFAULT_BATCH_SIZE,
    threads: ThreadsOpt = None,
    max_pixels: MaxPixelsOpt = DEFAULT_MAX_PIXELS,
    fast_jpeg: FastJpegOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Top-k classes and softmax probabilities for each image."""
    ui = Ui(quiet=quiet, debug=debug)
    images = ImageOptions(max_pixels, fast_jpeg)
    choice = ModelChoice(model, device, precision)
    _guard(ui, lambda: _classify(ui, inputs, top_k, format.value, labels, choice, batch_size, threads, images))


def _classify(
    ui: Ui,
    inputs: list[str],
    top_k: int,
    fmt: str,
    labels: Path | None,
    choice: ModelChoice,
    batch_size: int,
    threads: int | None,
    images: ImageOptions,
) -> int:
    from bitcli import output
    from bitcli.pipeline import Classifier

    _require_stdout("the predictions")
    fmt = output.resolve_format(fmt, sys.stdout)
    items = _expand(inputs)
    _setup_runtime(threads)
    loaded = _load(choice, ui)
    classifier = Classifier(
        loaded, top_k=top_k, labels=labels, batch_size=batch_size, workers=threads, **images.runner_kwargs()
    )
    renderer = output.classify_renderer(fmt, sys.stdout, count=len(items), top_k=classifier.top_k)
    failed = 0
    with ui.progress(len(items), "classifying") as advance, _stdout_errors():
        for group in classifier.classify_groups(items):
            for result in group:
                if result.error is not None:
                    failed += 1
                    ui.error(f"{result.path}: {result.error}")
                renderer.write(result)
            advance(len(group))
        renderer.close()
    return EXIT_SOME_FAILED if failed else EXIT_OK


# -- embed -------------------------------------------------------------------------------------

EMBED_EPILOG = (
    "[dim]Examples:[/dim]\n\n"
    "  bit embed photos/ -o photos.npy\n\n"
    "  bit embed 'photos/**/*.jpg' -o photos.npy --normalize --dtype float16\n\n"
    "  bit embed photos/ -o photos.npy --resume    [dim](continue an interrupted run)[/dim]\n\n"
    "  bit embed a.jpg b.jpg -o - --manifest rows.txt > vectors.npy\n\n"
    "Writes OUT.npy [N, D], OUT.paths.txt (line i = path of row i) and, when some inputs fail, "
    "OUT.errors.txt (PATH<TAB>reason). Files appear atomically; an interrupted run leaves "
    "OUT.npy.partial/ for --resume.\n\n" + EXIT_CODES_HELP
)


@app.command(epilog=EMBED_EPILOG)
def embed(
    inputs: Annotated[
        list[str],
        typer.Argument(
            metavar="INPUTS",
            help="Image files, directories, quoted globs ('photos/*.jpg'), or - to read paths from stdin.",
            show_default=False,
        ),
    ],
    output_path: Annotated[
        str, typer.Option("--output", "-o", metavar="OUT.npy", help="Output .npy file; - writes the .npy bytes to stdout.")
    ],
    dtype: Annotated[Dtype, typer.Option("--dtype", help="Element type of the saved array.")] = Dtype.float32,
    normalize: Annotated[bool, typer.Option("--normalize", help="L2-normalize each row.")] = False,
    manifest: Annotated[
        Optional[Path],
        typer.Option("--manifest", metavar="FILE", help="Where to list the row paths [default: OUT.paths.txt]."),
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue an interrupted run, skipping the images already done.")
    ] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output (or discard a partial run).")] = False,
    model: ModelOpt = DEFAULT_MODEL,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = Precision.fp32,
    batch_size: BatchSizeOpt = DEFAULT_BATCH_SIZE,
    threads: ThreadsOpt = None,
    max_pixels: MaxPixelsOpt = DEFAULT_MAX_PIXELS,
    fast_jpeg: FastJpegOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Pooled feature vectors (the embedding before the classifier) as one .npy array."""
    ui = Ui(quiet=quiet, debug=debug)
    images = ImageOptions(max_pixels, fast_jpeg)
    options = EmbedOptions(output_path, dtype.value, normalize, manifest, resume, overwrite, batch_size, threads, images)
    _guard(ui, lambda: _embed(ui, inputs, options, ModelChoice(model, device, precision)))


@dataclass(frozen=True)
class EmbedOptions:
    output: str
    dtype: str
    normalize: bool
    manifest: Path | None
    resume: bool
    overwrite: bool
    batch_size: int
    threads: int | None
    images: ImageOptions = ImageOptions()

    @property
    def to_stdout(self) -> bool:
        return self.output == "-"


def _embed_paths(opts: EmbedOptions) -> Any:
    from bitcli.embedstore import EmbedPaths, check_output

    if opts.to_stdout:
        if is_terminal(sys.stdout):
            raise UsageError("-o - would write binary .npy data to the terminal; redirect stdout to a file or pipe")
        paths = EmbedPaths.for_output(None, manifest=opts.manifest)
    else:
        out = Path(opts.output)
        if out.is_dir():
            raise UsageError(f"-o {out}: is a directory; give a file name such as {out / 'embeddings.npy'}")
        paths = EmbedPaths.for_output(out, manifest=opts.manifest)
    check_output(paths, resume=opts.resume, overwrite=opts.overwrite)
    return paths


def _embed(ui: Ui, inputs: list[str], opts: EmbedOptions, choice: ModelChoice) -> int:
    from bitcli import embedstore
    from bitcli.pipeline import Embedder

    paths = _embed_paths(opts)  # refuse a bad output before the model loads
    items = _expand(inputs)
    _setup_runtime(opts.threads)
    loaded = _load(choice, ui)
    embedder = Embedder(
        loaded, normalize=opts.normalize, batch_size=opts.batch_size, workers=opts.threads, **opts.images.runner_kwargs()
    )
    with _output_errors(paths, UsageError):  # cannot even start: the -o path is unusable
        writer = embedstore.EmbedWriter(
            paths,
            dim=embedder.feature_dim,
            dtype=opts.dtype,
            fingerprint={**embedder.fingerprint(), "dtype": opts.dtype},
            inputs=[item.path for item in items],
            resume=opts.resume,
            overwrite=opts.overwrite,
        )
    if writer.already_complete:
        ui.info(f"{paths.out} is already complete; nothing to resume (pass --overwrite to redo it)")
        return EXIT_OK
    try:
        with _output_errors(paths):
            summary = _embed_into(ui, writer, embedder, items, paths)
    except BaseException:
        writer.close()
        if paths.partial is not None and paths.partial.exists():
            ui.info(f"partial results kept in {paths.partial}; rerun with --resume to continue")
        raise
    _embed_summary(ui, summary, paths)
    return EXIT_SOME_FAILED if summary.failed else EXIT_OK


def _embed_into(ui: Ui, writer: Any, embedder: Any, items: list[Any], paths: Any) -> Any:
    """Embed what an earlier run has not done, commit batch by batch, publish; the summary."""
    if writer.rows or writer.failed:
        ui.info(f"resuming: {writer.rows} images and {writer.failed} failures already recorded")
    todo = list(writer.skip_done(items))
    with ui.progress(len(todo), "embedding") as advance:
        for group in embedder.embed_groups(todo):
            ok = [r for r in group if r.ok]
            errors = [(r.path, r.error) for r in group if not r.ok]
            for path, reason in errors:
                ui.error(f"{path}: {reason}")
            writer.commit([r.path for r in ok], _stack([r.vector for r in ok]) if ok else None, errors)
            advance(len(group))
    return writer.finish(sys.stdout.buffer if paths.out is None else None)


@contextlib.contextmanager
def _output_errors(paths: Any, error: type[BitError] = BitError) -> Iterator[None]:
    """A failed write (disk full, permission denied) becomes one line naming the file.

    Exit 2 (UsageError) when the output cannot be created at all, 1 when writing fails later."""
    try:
        yield
    except BrokenPipeError:
        raise
    except OSError as exc:
        resumable = paths.partial is not None and paths.partial.exists()
        hint = "; fix that and rerun with --resume" if resumable else ""
        raise error(f"{_real_name(exc.filename, paths)}: cannot write ({exc.strerror or exc}){hint}") from exc


def _real_name(filename: Any, paths: Any) -> Any:
    """The output a failed file name stands for: temporary files (`.NAME.xxxx`) and the partial
    directory's contents are named after the file they become."""
    outputs = [p for p in (paths.out, paths.manifest, paths.errors) if p is not None]
    if filename is None:
        return outputs[0]
    base = os.path.basename(os.fsdecode(filename))
    for path in outputs:
        if str(filename) == str(path) or base.startswith(f".{path.name}."):
            return path
    partial = paths.partial
    if partial is not None and Path(filename).parent == partial:
        return paths.out
    return filename


@contextlib.contextmanager
def _stdout_errors() -> Iterator[None]:
    """A failed write to stdout (disk full, /dev/full) is one line, exit 1; a closed pipe is 141."""
    try:
        yield
    except BrokenPipeError:
        raise
    except OSError as exc:
        raise BitError(f"cannot write to stdout ({exc.strerror or exc})") from exc


def _stack(vectors: list[Any]) -> Any:
    import numpy as np

    return np.stack(vectors)


def _embed_summary(ui: Ui, summary: Any, paths: Any) -> None:
    where = "stdout" if paths.out is None else str(paths.out)
    text = f"embedded {summary.rows} images as [{summary.rows}, {summary.dim}] {summary.dtype} to {where}"
    if summary.resumed_rows:
        text += f" ({summary.resumed_rows} from the earlier run)"
    ui.info(text)
    if summary.failed:
        listed = f"; listed in {summary.errors_file}" if summary.errors_file else ""
        noun = "input" if summary.failed == 1 else "inputs"
        ui.warn(f"{summary.failed} {noun} failed{listed}")


# -- inspect -----------------------------------------------------------------------------------

INSPECT_EPILOG = (
    "[dim]Examples:[/dim]\n\n"
    "  bit inspect\n\n"
    "  bit inspect google/bit-50@9e9a281aa096247270860f9cda4f68daacca33d0\n\n"
    "  bit inspect ./my-checkpoint --format json | jq .gflops\n\n" + EXIT_CODES_HELP
)


@app.command(epilog=INSPECT_EPILOG)
def inspect(
    model_arg: Annotated[
        Optional[str],
        typer.Argument(metavar="MODEL", help="The model to describe (same forms as --model).", show_default=False),
    ] = None,
    format: Annotated[TableOrJson, typer.Option("--format", "-f", help="Rich tables or one JSON object.")] = TableOrJson.table,
    model: ModelOpt = DEFAULT_MODEL,
    device: DeviceOpt = "cpu",
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """What a model is: files, architecture, size, FLOPs, preprocessing and labels."""
    ui = Ui(quiet=quiet, debug=debug)
    _guard(ui, lambda: _inspect(ui, model_arg or model, device, format.value))


def _inspect(ui: Ui, model: str, device: str, fmt: str) -> int:
    from bitcli import output
    from bitcli.inspect import build_report

    _require_stdout("the report")
    loaded = _load(ModelChoice(model, device), ui)
    report = build_report(loaded.loaded, loaded.resolved, loaded.labels())
    output.render_inspect(report, fmt, sys.stdout)
    return EXIT_OK


# -- download / models -------------------------------------------------------------------------


@app.command(epilog="[dim]Examples:[/dim]\n\n  bit download google/bit-50\n\n  bit download bit-50 google/bit-50@main")
def download(
    models: Annotated[list[str], typer.Argument(metavar="MODEL", help="Models to fetch into the hub cache.")],
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Fetch models into the Hugging Face cache ahead of time; prints each local path."""
    ui = Ui(quiet=quiet, debug=debug)
    _guard(ui, lambda: _download(ui, models))


def _download(ui: Ui, models: list[str]) -> int:
    from bitcli import hub

    _quiet_hub(ui)
    worst = EXIT_OK
    for ref in models:
        try:
            resolved = hub.download_model(ref, progress=ui.show_progress)
        except ModelError as exc:
            ui.error(str(exc))
            worst = EXIT_MODEL
            continue
        if resolved.notice:
            ui.warn(resolved.notice)
        typer.echo(str(resolved.path))
    return worst


@app.command(epilog="[dim]Examples:[/dim]\n\n  bit models\n\n  bit models --format json")
def models(
    format: Annotated[TableOrJson, typer.Option("--format", "-f", help="Rich table or JSON.")] = TableOrJson.table,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Known BiT checkpoints (aliases): input size, classes, top-1, size, and whether each is cached."""
    ui = Ui(quiet=quiet, debug=debug)

    def body() -> int:
        from bitcli import hub, output

        output.render_models(hub.list_known_models(), format.value, sys.stdout)
        return EXIT_OK

    _guard(ui, body)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point (`bit`)."""
    try:
        app(args=argv, prog_name="bit")
        code = EXIT_OK
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (EXIT_OK if exc.code is None else EXIT_SOME_FAILED)
    _exit(code)


def _require_stdout(what: str) -> None:
    """A usage error, before any work, when the command was started with stdout closed (`>&-`)."""
    if sys.stdout is None:
        raise UsageError(f"stdout is closed: there is nowhere to write {what}; redirect it to a file")


def _exit(code: int) -> None:
    """Flush and exit. Once torch is loaded, skip the interpreter's teardown: unloading torch
    takes about a second, longer than classifying an image. Every file bitcli writes is closed
    (or renamed into place) before this point, so nothing is lost by skipping it."""
    if "torch" not in sys.modules:
        sys.exit(code)
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        code = code or EXIT_BROKEN_PIPE
    except (OSError, ValueError, AttributeError):  # AttributeError: no stdout at all (`>&-`)
        pass
    try:
        sys.stderr.flush()
    except (OSError, ValueError, AttributeError):
        pass
    os._exit(code)
