"""Help screens a person can read: no type clutter, every command's examples built alike.

Typer prints a type beside every parameter (`<bool>` beside flags, `<list[str]>` beside
arguments, `<int range> [x>=1]`, `<auto|cpu|cuda|mps>`) and writes required arguments as
`{INPUTS}...` in the usage line. `BitCommand` and `BitGroup` tidy their parameters once, when the
command is built: flags show nothing, choices show `auto|cpu|cuda|mps`, integers `N`, ranges go
(Click still enforces them, with a clear message), arguments read `INPUTS...`, `[MODEL]`,
`MODEL...`. `epilog` builds the "Examples:" block of every command the same way.
"""

from __future__ import annotations

from typing import Any

from typer.core import TyperArgument, TyperCommand, TyperGroup

from bitcli.cli.common import EXIT_CODES_HELP


def epilog(*examples: str, note: str = "") -> str:
    """'Examples:' and one indented line per example (a dim comment after '  # '), then the exit codes.

    The exit codes close every epilog: besides being useful, an unindented last line keeps Typer
    from dedenting the examples (it removes the indentation common to all lines).
    """
    from rich.markup import escape  # an example's brackets are text (pip install 'bitcli[search]')

    lines = []
    for example in examples:
        command, _, comment = (escape(part) for part in example.partition("  # "))
        lines.append(f"  {command}" + (f"    [dim]({comment})[/dim]" if comment else ""))
    parts = ["[dim]Examples:[/dim]", *lines]
    if note:
        parts.append(note)
    return "\n\n".join([*parts, EXIT_CODES_HELP])


def tidy(param: Any) -> None:
    """Replace Typer's type display of one parameter by what a manual page would show."""
    param._get_number_range_help_str = lambda: None  # type: ignore[attr-defined]
    if isinstance(param, TyperArgument):
        name = param.metavar or (param.name or "").upper()
        usage = f"{name}..." if param.nargs != 1 else name
        usage = usage if param.required else f"[{usage}]"
        param.display_type_rich = lambda ctx: None  # type: ignore[attr-defined]
        param._usage_display_name = lambda: usage  # type: ignore[attr-defined]
        return
    if getattr(param, "is_flag", False) or getattr(param, "count", False):
        param.display_type_rich = lambda ctx: None  # type: ignore[attr-defined]
    elif param.metavar is None:
        shown = _value_name(param)
        param.display_type_rich = lambda ctx: shown  # type: ignore[attr-defined]


def _value_name(param: Any) -> str | None:
    """`auto|cpu|cuda` for choices, `N` for integers, Typer's own display otherwise."""
    desc = param.type_descriptor
    if desc.is_choice and desc.choices:
        return "|".join(str(getattr(choice, "value", choice)) for choice in desc.choices)
    if desc.annotation is int or (desc.is_ranged and desc.ranged_type_name == "int"):
        return "N"
    return None


class BitCommand(TyperCommand):
    """A Typer command whose help shows no type clutter (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        for param in self.params:
            tidy(param)

    def get_help_option(self, ctx: Any) -> Any:
        option = super().get_help_option(ctx)
        if option is not None:
            tidy(option)
        return option


class BitGroup(TyperGroup):
    """The `bit` group itself, tidied the same way."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        for param in self.params:
            tidy(param)

    def get_help_option(self, ctx: Any) -> Any:
        option = super().get_help_option(ctx)
        if option is not None:
            tidy(option)
        return option
