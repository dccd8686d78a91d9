"""The ``coalora`` command line: :data:`~coalora.cli.table.COMMANDS` is the table of subcommands, each
a thin call into the package; one module per group of commands."""

from coalora.cli.table import COMMANDS, build_parser, main

__all__ = ["COMMANDS", "build_parser", "main"]
