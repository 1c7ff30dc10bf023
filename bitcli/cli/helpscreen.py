"""Help screens: every command's "Examples:" block built alike (`epilog`).

The layout is Typer's and rich's own. Options name their values through Typer's public `metavar`
(`N`, `FILE`, `MODEL`; an empty one for flags, so no `<bool>` is shown); what Typer prints beside
the rest (`<list[str]>` beside arguments, `[x>=1]` after a range) is left as Typer prints it.
"""

from __future__ import annotations

from bitcli.cli.common import EXIT_CODES_HELP


def epilog(*examples: str, note: str = "") -> str:
    """'Examples:' and one indented line per example (a dim comment after '  # '), then the exit codes.

    The exit codes close every epilog: besides being useful, an unindented last line keeps Typer
    from dedenting the examples (it removes the indentation common to all lines).
    """
    lines = []
    for example in examples:
        command, _, comment = (text(part) for part in example.partition("  # "))
        lines.append(f"  {command}" + (f"    [dim]({comment})[/dim]" if comment else ""))
    parts = ["[dim]Examples:[/dim]", *lines]
    if note:
        parts.append(note)
    return "\n\n".join([*parts, EXIT_CODES_HELP])


def text(part: str) -> str:
    """`part` as rich shows it literally: its brackets are text (pip install 'bitcli[search]').
    rich is imported only for a part that needs escaping: a command's start need not load it."""
    if "[" not in part and not part.endswith("\\"):
        return part
    from rich.markup import escape

    return escape(part)
