"""A command line's values converted here, where that gives exactly what Typer gives: Typer
converts through pydantic, whose import costs more of each `bit` start than the rest. Click's
parser splits the line; text, numbers, flags, paths, choices and lists are converted here, and
anything else (None) is left to Typer, messages and exit codes included."""

from __future__ import annotations

import enum
import os
import re
import types
import typing
from pathlib import Path
from typing import Any, Callable

WHOLE = re.compile(r"[0-9]+")  # no sign, space or underscore: where int() and pydantic agree
DECIMAL = re.compile(r"-?[0-9]+(\.[0-9]+)?")
PATH_CHECKS = ("exists", "resolve_path", "allow_dash", "path_type", "writable")  # Typer's; all off here


class Unsure(Exception):
    """A value Typer must convert (or refuse, with its own message)."""


def parsed(command: Any, args: list[str], parent: Any, function: Callable[..., Any]) -> Any | None:
    """A context for `command` with its parameters converted, ready for `command.invoke`, or None
    where Typer must parse `args` itself; `function`'s annotations name each value's kind."""
    import typer

    ctx = typer.Context(command, info_name=command.name, parent=parent)
    try:
        hints = typing.get_type_hints(function, include_extras=True)
        opts, rest, _ = command.make_parser(ctx).parse_args(args=list(args))
        if rest:
            return None
        for param in command.get_params(ctx):
            value, source = param.consume_value(ctx, opts)
            ctx.set_parameter_source(param.name, source)  # `bit embed --update` asks what was given
            if not param.expose_value:  # --help: only when not asked for
                if value:
                    return None
                continue
            if param.callback is not None or param.name not in hints:
                return None
            ctx.params[param.name] = convert(value, hints[param.name], multi=param.multiple or param.nargs == -1)
            if param.required and param.value_is_missing(ctx.params[param.name]):
                return None
    except (Unsure, NameError, typer.TyperException):  # Click's usage errors are TyperExceptions
        return None
    return ctx


def convert(value: Any, hint: Any, *, multi: bool = False) -> Any:
    """`value` (from the command line, the environment or the default) as Typer converts it for `hint`, else Unsure."""
    kind, info = _parts(hint)
    if value is None:
        return () if multi else None
    if typing.get_origin(kind) is list:
        if not isinstance(value, (list, tuple)):
            raise Unsure
        return [convert(item, typing.get_args(kind)[0]) for item in value]
    if info is not None and (info.parser is not None or info.clamp):
        raise Unsure
    if kind is Path and isinstance(value, (str, Path)) and str(value) and _plain_path(info):
        if os.path.exists(value) and not os.access(value, os.R_OK):
            raise Unsure  # Typer's "is not readable"
        return Path(value)
    if not isinstance(value, str):  # a default (or a flag's True): Typer gives it back as declared
        if isinstance(kind, type) and isinstance(value, kind) and isinstance(value, bool) == (kind is bool):
            return value
        raise Unsure
    if kind is str:
        return value
    if kind is int and WHOLE.fullmatch(value):
        try:
            return _within(int(value), info)
        except ValueError:  # past Python's 4300 digits: Typer's message
            raise Unsure from None
    if kind is float and DECIMAL.fullmatch(value):
        return _within(float(value), info)
    if isinstance(kind, type) and issubclass(kind, enum.Enum) and (info is None or info.case_sensitive):
        for member in kind:
            if str(member.value) == value:
                return member
        raise Unsure
    raise Unsure


def _parts(hint: Any) -> tuple[Any, Any]:
    """(the type, Typer's parameter info) of an annotation, Optional[...] removed."""
    from typer.models import ParameterInfo

    info = None
    if typing.get_origin(hint) is typing.Annotated:
        hint, *extras = typing.get_args(hint)
        info = next((extra for extra in extras if isinstance(extra, ParameterInfo)), None)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        rest = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        if len(rest) != 1:
            raise Unsure
        hint = rest[0]
    return hint, info


def _within(number: int | float, info: Any) -> int | float:
    if info is not None and ((info.min is not None and number < info.min) or (info.max is not None and number > info.max)):
        raise Unsure
    return number


def _plain_path(info: Any) -> bool:
    """A path parameter with none of Typer's checks but `readable` (checked by the caller)."""
    if info is None:
        return True
    return not any(getattr(info, name) for name in PATH_CHECKS) and info.file_okay and info.dir_okay
