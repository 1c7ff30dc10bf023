"""Entry point for `python -m bitcli`."""

from bitcli.cli import main

main()
