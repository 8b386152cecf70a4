"""What a ``fanout`` subcommand is, and where the ones not built in come from.

``fanout_cli.main`` asks :func:`discover` for every command this installation has. Built-in
commands are listed in ``main``; other distributions add theirs through the entry-point group
:data:`GROUP` (the lab registers ``demo``), so production code never imports them and an
installation without them (the container image) simply does not offer them. A command that is
known to exist elsewhere but is missing here is named in :data:`ELSEWHERE`, with the one line
that tells the user where to get it; a plug-in that is installed but cannot be imported is
reported the same way, in one line, never with a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
from collections.abc import Mapping, Sequence
from typing import Protocol, runtime_checkable

GROUP = "fanout.commands"

# Commands other distributions provide, and what to tell a user who runs one without them.
ELSEWHERE: Mapping[str, str] = {
    "demo": (
        "not part of this installation; the demo ships with the source repository's lab "
        "(in a checkout: `make demo`, or `pip install ./lab`)"
    ),
}


@runtime_checkable
class Command(Protocol):
    """One ``fanout`` subcommand. A plug-in's entry point names an object of this shape."""

    help: str

    def configure(self, parser: argparse.ArgumentParser) -> None:
        """Add the command's arguments to its subparser."""

    def run(self, args: argparse.Namespace, rest: Sequence[str]) -> int:
        """Do the command; ``rest`` holds the arguments the parser did not know. The exit code."""


@dataclasses.dataclass(frozen=True)
class Discovered:
    """What this installation offers: usable commands by name, and why others are unusable."""

    commands: Mapping[str, Command]
    unusable: Mapping[str, str]


def discover(built_in: Mapping[str, Command]) -> Discovered:
    """The built-in commands plus every plug-in that loads; a built-in name cannot be taken."""
    found: dict[str, Command] = dict(built_in)
    unusable: dict[str, str] = {}
    for entry in importlib.metadata.entry_points(group=GROUP):
        if entry.name in built_in:
            continue
        try:
            command = entry.load()
        except Exception as error:
            unusable[entry.name] = f"cannot be loaded ({type(error).__name__}: {error})"
            continue
        if not isinstance(command, Command):
            unusable[entry.name] = f"{entry.value} is not a fanout command"
            continue
        found[entry.name] = command
    for name, reason in ELSEWHERE.items():
        if name not in found:
            unusable.setdefault(name, reason)
    return Discovered(commands=found, unusable=unusable)
