"""The ``fanout demo`` command: its options, one run of :mod:`session` shown by :mod:`display`,
and the exit code (0 only when every invariant held).

``fanout_cli`` finds :data:`COMMAND` through the ``fanout.commands`` entry point the lab
registers, adds the options with :meth:`Demo.configure` and calls :meth:`Demo.run`.
"""

from __future__ import annotations

import argparse
import asyncio
import pathlib
import sys
import tempfile
from collections.abc import Sequence
from typing import Any

from fanout_cli import commands
from fanout_lab.demo import display, session

EXIT_BROKEN = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def options_from(args: argparse.Namespace) -> session.Options:
    defaults = session.Options()

    def given(name: str, default: Any) -> Any:
        value = getattr(args, name, None)
        return default if value is None else value

    log_path = given("log_file", None)
    return session.Options(
        conversations=given("conversations", defaults.conversations),
        seconds=given("seconds", defaults.seconds),
        seed=given("seed", defaults.seed),
        drain_timeout=given("drain_timeout", defaults.drain_timeout),
        backlog=given("backlog", defaults.backlog),
        log_path=pathlib.Path(log_path)
        if log_path
        else pathlib.Path(tempfile.gettempdir()) / "fanout-demo-workers.log",
    )


def main(args: argparse.Namespace, rest: Sequence[str]) -> int:
    """Run the demo with ``args`` (``--conversations``, ``--seconds``, ...); the exit code."""
    if rest:
        print(f"fanout demo: unrecognised arguments: {' '.join(rest)}", file=sys.stderr)
        return EXIT_USAGE
    options = options_from(args)
    if options.conversations < 1 or options.seconds <= 0 or options.backlog < 0:
        print("fanout demo: --conversations must be >= 1, --seconds > 0 and --backlog >= 0", file=sys.stderr)
        return EXIT_USAGE
    live = sys.stdout.isatty() and not getattr(args, "plain", False)
    print(
        f"fanout demo: {options.conversations} conversations over a {options.seconds:g}-second day "
        f"after a backlog of {options.backlog} conversations; "
        "moto SQS/SNS/DynamoDB, simulated CRM, Splunk HEC and webhook on loopback",
        flush=True,
    )
    try:
        with display.Progress(live=live, stream=sys.stdout) as progress:
            outcome = asyncio.run(session.run(options, progress.update))
    except KeyboardInterrupt:
        print("fanout demo: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    display.report(outcome, stream=sys.stdout, color=live)
    return 0 if outcome.ok else EXIT_BROKEN


class Demo:
    """``fanout demo``."""

    help = "run the whole pipeline on an embedded default"

    def configure(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--conversations", type=int, default=None, help="how many conversations")
        parser.add_argument("--seconds", type=float, default=None, help="how long the compressed day lasts")
        parser.add_argument("--seed", type=int, default=None, help="traffic seed (same seed, same day)")
        parser.add_argument(
            "--backlog",
            type=int,
            default=None,
            help="conversations queued before the day while the CRM and SIEM workers are down (0: none)",
        )
        parser.add_argument(
            "--drain-timeout", type=float, default=None, help="seconds to wait after publishing"
        )
        parser.add_argument("--log-file", default=None, help="where the workers' JSON log lines go")
        parser.add_argument("--plain", action="store_true", help="plain progress lines even on a terminal")

    def run(self, args: argparse.Namespace, rest: Sequence[str]) -> int:
        return main(args, rest)


COMMAND: commands.Command = Demo()
