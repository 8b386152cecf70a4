"""``fanout demo``: the whole fan-out pipeline on this machine, and a verdict on it.

``workers.cli.fanout_main`` parses the command line and calls :func:`main`. The demo
needs no AWS account and no cluster: an embedded AWS endpoint (the moto server, a child
process), simulated CRM, Splunk HEC and webhook downstreams, and the real worker runtime
consuming three queues fed by one SNS topic with a compressed contact-center day. It
prints live progress, then a report, and exits 0 only when every invariant held.

    session    one run: resources, simulators, workers, publishing, draining, judging
    traffic    the day's publications (pure, seeded)
    consumers  the three consumers and their FanoutConsumer manifests
    referee    the invariants and the report's figures (pure)
    display    live progress (rich) and the report table
"""

from __future__ import annotations

import argparse
import asyncio
import pathlib
import sys
import tempfile
from typing import Any

from workers.demo import display, session

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
        log_path=pathlib.Path(log_path)
        if log_path
        else pathlib.Path(tempfile.gettempdir()) / "fanout-demo-workers.log",
    )


def main(args: argparse.Namespace, rest: list[str]) -> int:
    """Run the demo with ``args`` (``--conversations``, ``--seconds``, ...); the exit code."""
    if rest:
        print(f"fanout demo: unrecognised arguments: {' '.join(rest)}", file=sys.stderr)
        return EXIT_USAGE
    options = options_from(args)
    if options.conversations < 1 or options.seconds <= 0:
        print("fanout demo: --conversations must be >= 1 and --seconds > 0", file=sys.stderr)
        return EXIT_USAGE
    live = sys.stdout.isatty() and not getattr(args, "plain", False)
    print(
        f"fanout demo: {options.conversations} conversations over a {options.seconds:g}-second day; "
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
