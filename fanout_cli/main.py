"""The ``fanout`` command line: ``validate`` and ``dlq`` built in, ``demo`` where the lab is.

``main`` discovers the commands this installation has (``commands.discover``), lists only
those in ``--help``, and dispatches. A command this installation lacks (``fanout demo`` in the
container image) gets one line saying so and where to get it, exit 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence

from fanout_cli import commands, dlq, validate

EXIT_USAGE = 2

BUILT_IN: Mapping[str, commands.Command] = {"dlq": dlq.COMMAND, "validate": validate.COMMAND}


def main(argv: Sequence[str] | None = None) -> int:
    """``fanout``; the exit code."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    found = commands.discover(BUILT_IN)
    if arguments and arguments[0] in found.unusable:
        print(f"fanout {arguments[0]}: {found.unusable[arguments[0]]}", file=sys.stderr)
        return EXIT_USAGE
    parser = argparse.ArgumentParser(prog="fanout", description="fanout-consumer tools")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name, command in sorted(found.commands.items()):
        command.configure(subparsers.add_parser(name, help=command.help))
    args, rest = parser.parse_known_args(arguments)
    return found.commands[args.command].run(args, rest)
