"""The command layer: `app.py` (the Typer app, exit codes), `common.py` (shared options, the stderr
console), one file per command. `main` is the `bit` console script."""

from __future__ import annotations

from bitcli.cli.app import app, main

__all__ = ["app", "main"]
