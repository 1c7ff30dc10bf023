"""What every command shares: option types, `epilog`, the stderr console (`Ui`), exit codes, model loading.

torch, numpy and huggingface_hub are imported inside the functions that need them (`bit --help` stays fast).
"""

from __future__ import annotations

import inspect
import sys
import typing
from dataclasses import dataclass, field
from enum import Enum
from typing import Annotated, Any, Callable, Optional

import typer

from bitcli.cli.screen import Bar, summary_text
from bitcli.errors import UsageError
from bitcli.output import is_terminal
from bitcli.output.escapes import shown
from bitcli.pipeline import DEFAULT_BATCH_SIZE, DEFAULT_MODEL, RunOptions  # light: no torch, no PIL
from bitcli.util import DEFAULT_MAX_PIXELS

EXIT_OK = 0
EXIT_SOME_FAILED = 1
EXIT_MODEL = 3
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a closed pipe
EXIT_INTERRUPTED = 130

EXIT_CODES_HELP = (
    "Exit codes: 0 all inputs succeeded, 1 some inputs failed (the rest were processed), "
    "2 usage error, 3 the model could not be resolved or loaded, 130 interrupted, 141 stdout closed early."
)


def epilog(*examples: str, note: str = "") -> str:
    """'Examples:', one indented line per example (a dim comment after '  # '), then the exit codes
    (an unindented last line keeps Typer from dedenting the examples)."""
    lines = []
    for example in examples:
        command, _, comment = (text(part) for part in example.partition("  # "))
        lines.append(f"  {command}" + (f"    [dim]({comment})[/dim]" if comment else ""))
    parts = ["[dim]Examples:[/dim]", *lines]
    if note:
        parts.append(note)
    return "\n\n".join([*parts, EXIT_CODES_HELP])


def text(part: str) -> str:
    """`part` as rich shows it literally (pip install 'bitcli[search]'); rich imported only when needed."""
    if "[" not in part and not part.endswith("\\"):
        return part
    from rich.markup import escape

    return escape(part)


class Device:
    """--device defaults: a plain string, checked by `engine.plan.parse_device` (one usage-error line)."""

    auto, cpu = "auto", "cpu"


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

def option(kind: Any, *names: str, panel: str | None = None, **settings: Any) -> Any:
    """An option type, `Annotated[kind, typer.Option(*names, ...)]`, listed in the help panel `panel`."""
    return Annotated[kind, typer.Option(*names, rich_help_panel=panel, **settings)]


RUNTIME, IMAGES, MESSAGES = "Model and runtime", "Images", "Messages"  # help panels
ModelOpt = option(
    str, "--model", "-m", envvar="BIT_MODEL", metavar="MODEL", panel=RUNTIME,
    help="Hub id (google/bit-50), id@revision, alias from `bit models` (bit-50), a local checkpoint "
    "directory, or an original .npz file.",
)
DeviceOpt = option(
    str, "--device", metavar="DEVICE", panel=RUNTIME,
    help="Where the model runs: auto (cuda when available, else cpu), cpu, cuda, cuda:N (the N-th GPU), mps.",
)
PrecisionOpt = option(
    Precision, "--precision", panel=RUNTIME,
    help="fp32: within 1e-4 of the reference. bf16: about 2x faster on CPUs with AVX512-BF16 "
    "(and on GPUs), but scores differ in the second decimal. fp16: GPUs only, like bf16.",
)
BatchSizeOpt = option(int, "--batch-size", min=1, metavar="N", help="Images per forward pass.", panel=RUNTIME)
ThreadsOpt = option(
    Optional[int], "--threads", min=1, metavar="N", panel=RUNTIME,
    help="CPU threads for the model (torch intra-op) and for image decoding; default: all cores.",
)
MaxPixelsOpt = option(
    int, "--max-pixels", min=0, metavar="N", panel=IMAGES,
    help="Skip (as a failed input) any image of more than N pixels (width x height), read from its "
    "header before decoding, or whose resize for the model would hold more: a guard against "
    "decompression bombs and extreme aspect ratios. 0: no limit.",
)
FastJpegOpt = option(
    bool, "--fast-jpeg", metavar="", panel=IMAGES,
    help="Decode large JPEGs at a reduced scale (1/2, 1/4 or 1/8, never below the model's input size): "
    "much faster for big photos, but not pixel-exact, so scores differ slightly.",
)
QuietOpt = option(bool, "--quiet", "-q", metavar="", help="No progress bar, warnings or summary; errors still print.", panel=MESSAGES)
DebugOpt = option(bool, "--debug", metavar="", help="Show full tracebacks.", panel=MESSAGES)


@dataclass(frozen=True)
class Runtime:
    """The model-and-runtime options a command takes (`takes`), as one value."""

    model: str = DEFAULT_MODEL
    device: str = Device.auto
    precision: Precision = Precision.fp32
    batch_size: int = DEFAULT_BATCH_SIZE
    threads: Optional[int] = None
    max_pixels: int = DEFAULT_MAX_PIXELS
    fast_jpeg: bool = False

    def options(self) -> RunOptions:
        return run_options(self.device, self.precision, self.batch_size, self.threads, self.max_pixels, self.fast_jpeg)


SHARED_OPTIONS = {"model": ModelOpt, "device": DeviceOpt, "precision": PrecisionOpt, "batch_size": BatchSizeOpt,
                  "threads": ThreadsOpt, "max_pixels": MaxPixelsOpt, "fast_jpeg": FastJpegOpt}


def takes(*names: str) -> Callable[[Callable[..., int]], Callable[..., int]]:
    """Shared options declared once: a command's `runtime: Runtime` parameter stands for the options
    `names`, its `ui: Ui` for --quiet and --debug. Typer (and `quickparse`) read the expanded
    signature; the function gets one Runtime and one Ui."""

    def decorate(function: Callable[..., int]) -> Callable[..., int]:
        defaults, hints = Runtime(), typing.get_type_hints(function, include_extras=True)
        named = inspect.Parameter.KEYWORD_ONLY  # Typer passes every value by name
        params: list[inspect.Parameter] = []
        for param in inspect.signature(function).parameters.values():
            if param.name == "runtime":
                params += [inspect.Parameter(name, named, annotation=kind, default=getattr(defaults, name))
                           for name, kind in SHARED_OPTIONS.items() if name in names]
            elif param.name == "ui":
                params += [inspect.Parameter("quiet", named, annotation=QuietOpt, default=False),
                           inspect.Parameter("debug", named, annotation=DebugOpt, default=False)]
            else:
                params.append(param.replace(kind=named, annotation=hints[param.name]))

        def command(**values: Any) -> int:
            if names:
                values["runtime"] = Runtime(**{name: values.pop(name) for name in names})
            values["ui"] = Ui(quiet=values.pop("quiet"), debug=values.pop("debug"))
            return function(**values)

        command.__name__, command.__qualname__, command.__doc__ = function.__name__, function.__qualname__, function.__doc__
        command.__module__ = function.__module__
        command.__signature__ = inspect.Signature(params, return_annotation=int)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in params} | {"return": int}
        return command

    return decorate


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

        self.console.print(Text.assemble((prefix, style), shown(message)))

    def error(self, message: str) -> None:
        """One line: control characters in `message` are shown escaped (`output.escapes.shown`)."""
        self._line("error: ", "bold red", message)

    def warn(self, message: str) -> None:
        if not self.quiet:
            self._line("warning: ", "yellow", message)

    def info(self, message: str) -> None:
        if not self.quiet:
            from rich.text import Text

            self.console.print(Text(shown(message)))

    @property
    def show_progress(self) -> bool:
        """Whether a person watches (bars, summary): stderr is an interactive terminal, not --quiet."""
        return not self.quiet and is_terminal(sys.stderr) and self.console.is_interactive

    def progress(self, total: int, what: str) -> Bar:
        show = self.show_progress
        return Bar(self.console if show else None, total, what, show=show)

    def summary(self, bar: Bar, failed: int) -> None:
        """`6 images, 1 failed, 2.3 s, 2.6 img/s`, for a person watching."""
        if self.show_progress:
            from rich.text import Text

            self.console.print(Text(summary_text(bar.done, failed, bar.elapsed, bar.total)))


def quiet_hub(ui: Ui) -> None:
    """Under --quiet, silence huggingface_hub's own log lines (its errors still reach bitcli)."""
    if ui.quiet:
        from huggingface_hub.utils import logging as hf_logging

        hf_logging.set_verbosity_error()


InputsArg = Annotated[
    list[str],
    typer.Argument(
        metavar="INPUTS",
        help="Image files, directories, quoted globs ('photos/*.jpg'), or - to read paths from stdin.",
        show_default=False,
    ),
]


def run_options(
    device: str,
    precision: Precision,
    batch_size: int = DEFAULT_BATCH_SIZE,
    threads: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    fast_jpeg: bool = False,
) -> RunOptions:
    """The library's options from the shared options (--max-pixels 0: no limit), checked before torch."""
    check_settings(device)
    return RunOptions(
        device=device,
        precision=precision.value,
        batch_size=batch_size,
        workers=threads,
        fast_jpeg=fast_jpeg,
        max_pixels=max_pixels or None,
    )


def check_settings(device: str, model: str | None = None) -> None:
    """Before torch is imported: --device's form, BIT_HUB_TIMEOUT, the model reference's form."""
    from bitcli.engine.plan import parse_device

    parse_device(device)
    from bitcli.hub.deadline import hub_timeout

    hub_timeout()
    if model is not None:
        from bitcli.hub import check_reference

        check_reference(model)


def before_loading(ui: Ui, threads: int | None) -> None:
    """Before a model loads: --threads, the hub quiet under --quiet, `process.before_the_model`."""
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    quiet_hub(ui)
    from bitcli.cli.process import before_the_model

    before_the_model()


def load_model(model: str, options: RunOptions, ui: Ui, threads: int | None = None) -> Any:
    """Resolve and load the model after `before_loading`; every failure is a ModelError (exit 3)."""
    from bitcli import pipeline

    check_settings(options.device, model)
    before_loading(ui, threads)
    loaded = pipeline.load(model, device=options.device, precision=options.precision, progress=ui.show_progress)
    for notice in loaded.notices:
        ui.warn(notice)
    if loaded.precision == "bf16" and loaded.device.type == "cpu":
        from bitcli.engine.native import bf16_supported

        if not bf16_supported():
            ui.warn("this CPU has no native bfloat16 arithmetic: --precision bf16 will be slower than fp32")
    return loaded


CsvRawOpt = option(
    bool, "--csv-raw", metavar="",
    help="csv: write names exactly, even those that start like a spreadsheet formula "
    "(= + - @); by default such a cell gets a leading '.",
)
NullOpt = option(
    bool, "--null", "-0", metavar="", panel=IMAGES,
    help="Paths on stdin (-) are separated by NUL bytes, as `find -print0` and `xargs -0` use.",
)


def server_option(help: str) -> Any:
    """--server URL (or BIT_SERVER): a running `bit serve` answers instead of a local model."""
    return option(Optional[str], "--server", envvar="BIT_SERVER", metavar="URL", help=help)


def expand(inputs: list[str], null: bool = False, ui: Ui | None = None) -> list[Any]:
    """The inputs, expanded (directories, globs, `-`); an empty list is allowed, with a warning."""
    from bitcli.inputs import expand_inputs

    items = list(expand_inputs(inputs, stdin=sys.stdin, null=null))
    if not items and ui is not None:
        ui.warn("no inputs (stdin held no paths): nothing to do")
    return items


def require_stdout(what: str) -> None:
    """A usage error, before any work, when the command was started with stdout closed (`>&-`)."""
    if sys.stdout is None:
        raise UsageError(f"stdout is closed: there is nowhere to write {what}; redirect it to a file")


def report_summary(ui: Ui, summary: Any, paths: Any, done: bool = False) -> None:
    """`bit embed`'s and `bit combine`'s last lines: what was written (unless `done`), what failed."""
    where = "stdout" if paths.out is None else str(paths.out)
    noun = "image" if summary.rows == 1 else "images"
    text = f"embedded {summary.rows} {noun} as [{summary.rows}, {summary.dim}] {summary.dtype} to {where}"
    if summary.resumed_rows:
        text += f" ({summary.resumed_rows} from the earlier run)"
    if not done:
        ui.info(text)
    if summary.failed:
        listed = f"; listed in {summary.errors_file}" if summary.errors_file else ""
        noun = "input" if summary.failed == 1 else "inputs"
        ui.warn(f"{summary.failed} {noun} failed{listed}")
