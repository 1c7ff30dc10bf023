"""The `bit` command (Typer): the app, its commands (each file imported only when it runs or a
help screen lists it) and the one mapping from errors to exit codes (`guarded`, `run`)."""

from __future__ import annotations

import functools
import os
import sys
import traceback
import warnings
from collections.abc import Iterator, Mapping
from typing import Annotated, Any, Callable

import typer
import typer.core
import typer.main

from bitcli.cli import process
from bitcli.cli.common import (
    EXIT_BROKEN_PIPE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_SOME_FAILED,
    Ui,
    epilog,
)
from bitcli.errors import BitError

# The commands as `bit --help` lists them: function NAME of bitcli/cli/NAME.py unless FILES and
# FUNCTIONS say otherwise; examples: the file's NAME_EPILOG, else its EPILOG.
COMMANDS = ("classify", "embed", "combine", "search", "dedup", "info", "inspect", "download", "models", "train", "eval", "serve")
FILES = {"info": "search", "inspect": "info", "download": "info", "models": "info"}
FUNCTIONS = {"eval": "eval_command"}


def command_module(name: str) -> Any:
    return __import__(f"bitcli.cli.{FILES.get(name, name)}", fromlist=["EPILOG"])  # (-X importtime lists it)


def command_function(name: str) -> Callable[..., int]:
    return getattr(command_module(name), FUNCTIONS.get(name, name))


class LazyCommands(Mapping):
    """The app's commands by name, each built (its file imported) when first looked up."""

    def __init__(self) -> None:
        self.built: dict[str, Any] = {}

    def __getitem__(self, name: str) -> Any:
        if name not in COMMANDS:
            raise KeyError(name)
        if name not in self.built:
            module = command_module(name)
            examples = getattr(module, f"{name.upper()}_EPILOG", None) or module.EPILOG  # info.py holds three
            one = typer.Typer(rich_markup_mode="rich", pretty_exceptions_enable=False, add_completion=False)
            one.command(name=name, epilog=examples)(guarded(command_function(name)))
            self.built[name] = typer.main.get_command(one)
        return self.built[name]

    def __iter__(self) -> Iterator[str]:
        return iter(COMMANDS)

    def __len__(self) -> int:
        return len(COMMANDS)


class LazyGroup(typer.core.TyperGroup):
    """Typer's group, with `LazyCommands` for its commands."""

    def __init__(self, **attrs: Any) -> None:
        super().__init__(**attrs)
        self.commands = LazyCommands()


app = typer.Typer(
    name="bit",
    cls=LazyGroup,
    help="Classify and embed images with Big Transfer (BiT) models.\n\n"
    + epilog(
        "bit classify cat.jpg",
        "bit classify photos/ --top-k 3 --format csv > labels.csv",
        "bit embed 'photos/**/*.jpg' -o photos.npy --normalize",
        "bit search photos.npy new.jpg --top-k 5",
        "bit dedup photos.npy --html duplicates.html",
        "bit inspect google/bit-50 --format json",
        "bit train photos/ -o my-model --val-split 0.2",
    ),
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version_callback(value: bool) -> None:
    if value:
        from bitcli import __version__

        typer.echo(f"bit {__version__}")
        raise typer.Exit(0)


@app.callback()
def root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version_callback, is_eager=True, metavar="", help="Print the version and exit.")
    ] = False,
) -> None:
    """Classify and embed images with Big Transfer (BiT) models."""
    process.checked_stdout()
    process.before_the_hub()


def guarded(command: Callable[..., int]) -> Callable[..., None]:
    """`command` with its outcome mapped to an exit code and at most one line on stderr (tracebacks under --debug)."""

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> None:
        ui = Ui(quiet=kwargs.get("quiet", False), debug=kwargs.get("debug", False))
        try:
            with warnings.catch_warnings():
                if not ui.debug:  # a library's warning is not a bitcli message: --debug shows them
                    warnings.simplefilter("ignore")
                code = command(*args, **kwargs)
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

    return run


def _silence_stdout() -> None:
    """After EPIPE, point stdout at /dev/null so Python's exit-time flush does not fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point (`bit`)."""
    process.settle_openmp()
    _exit(run(argv))


def run(argv: list[str] | None = None) -> int:
    """Run `bit` with `argv` and return its exit code; Click's own errors are one `error:` line and exit 2."""
    code = run_parsed_here(sys.argv[1:] if argv is None else list(argv))
    if code is not None:
        return code
    code = run_typer(argv)
    if "PacifyFlushWrapper" in type(sys.stdout).__name__:  # how Click answers EPIPE (a help screen or
        return EXIT_BROKEN_PIPE  # --version into `head`): stdout wrapped to stay quiet, exit 1
    return code


def run_typer(argv: list[str] | None) -> int:
    """`bit ARGV` parsed and run by Typer, Click's errors as one line."""
    try:
        code = app(args=argv, prog_name="bit", standalone_mode=False)
    except typer.TyperException as exc:  # Click's errors, as Typer exports them
        if type(exc).__name__ != "NoArgsIsHelpError":  # `bit` alone: the help screen said it all
            Ui().error(click_message(exc))
        return exc.exit_code
    except typer.Abort:  # end of input at a prompt
        return EXIT_SOME_FAILED
    except SystemExit as exc:
        if isinstance(exc.__context__, BrokenPipeError):  # rich's answer to EPIPE (a help screen into `head`)
            return EXIT_BROKEN_PIPE
        return exc.code if isinstance(exc.code, int) else (EXIT_OK if exc.code is None else EXIT_SOME_FAILED)
    return code if isinstance(code, int) else EXIT_OK


def run_parsed_here(args: list[str]) -> int | None:
    """Run a command line `quickparse` converts as Typer would (without pydantic); None for any other."""
    from bitcli.cli import quickparse

    if not args or args[0] not in COMMANDS:
        return None
    try:
        group = typer.main.get_command(app)
        parent = typer.Context(group, info_name="bit", **group.context_settings)
        command = group.get_command(parent, args[0])
        ctx = quickparse.parsed(command, args[1:], parent, command_function(args[0]))
        if ctx is None:
            return None
        root()  # the app's callback, which Typer runs before any command
        command.invoke(ctx)
    except typer.Exit as exc:
        return exc.exit_code
    except EOFError:  # end of input at a prompt, outside `guarded`: answered as Click answers it
        typer.echo(err=True)
        return EXIT_SOME_FAILED
    except KeyboardInterrupt:  # Ctrl-C before the command's own guard: answered as inside it
        Ui().error("interrupted")
        return EXIT_INTERRUPTED
    return EXIT_OK


def click_message(exc: typer.TyperException) -> str:
    """Click's message about a command line, as one line that says where the help is."""
    message = " ".join(exc.format_message().split())
    context = getattr(exc, "ctx", None)
    if context is None:
        return message
    return f"{message.rstrip('.')} (see '{context.command_path} --help')"


def _exit(code: int) -> None:
    """Flush and exit; once torch is loaded, skip the interpreter's teardown (every file is closed
    or renamed into place by now)."""
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
