"""The worker's command line: ``fanout-worker --config FILE``.

``fanout-worker`` is an external contract (docs/contracts.md): FILE is a FanoutConsumer
manifest (YAML or JSON), AWS settings come only from the standard AWS environment, the
probes and ``/metrics`` are served on ``--http-port`` (default 8080, 0 disables), and
SIGTERM drains and exits 0. A manifest that cannot be used exits 2 with one line per
problem, each naming the field. The user-facing ``fanout`` tool lives apart, in ``fanout_cli``.

The worker runs on uvloop's event loop (libuv; the asyncio API unchanged): it takes a tenth
less CPU per event than asyncio's own loop. Tests that run a :class:`running.Worker` in
process use whatever loop pytest gives them; the ones that start ``fanout-worker`` run it here.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Sequence

import uvloop

from fanout_core import spec as spec_model
from workers import running, telemetry

EXIT_CONFIG = 2


def _worker_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fanout-worker",
        description="Consume one SQS queue and deliver its events to one downstream API.",
    )
    parser.add_argument("--config", required=True, help="FanoutConsumer manifest (YAML or JSON)")
    parser.add_argument(
        "--http-port", type=int, default=8080, help="port of /healthz, /readyz, /metrics (0 disables)"
    )
    parser.add_argument("--http-host", default="0.0.0.0", help="address the probes listen on")
    parser.add_argument("--log-level", default=None, help="DEBUG | INFO | WARNING | ERROR")
    return parser


def load_or_exit(path: str, prog: str) -> spec_model.FanoutConsumer:
    try:
        return spec_model.load_manifest(path)
    except spec_model.ConfigError as error:
        print("\n".join(spec_model.config_error_lines(prog, path, error)), file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None


async def _serve(worker: running.Worker) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await worker.run(stop)


def main(argv: Sequence[str] | None = None) -> int:
    """``fanout-worker``."""
    args = _worker_parser().parse_args(argv)
    consumer = load_or_exit(args.config, "fanout-worker")
    telemetry.configure_logging(args.log_level or consumer.spec.workload.log_level)
    tracing = telemetry.configure_tracing("fanout-worker")
    worker = running.Worker(
        consumer, http_host=args.http_host, http_port=args.http_port if args.http_port > 0 else None
    )
    try:
        # uvloop: the same asyncio API on libuv, a tenth less CPU per event (bench/overhead.py).
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(_serve(worker))
    except spec_model.ConfigError as error:
        print("\n".join(spec_model.config_error_lines("fanout-worker", args.config, error)), file=sys.stderr)
        return EXIT_CONFIG
    finally:
        tracing.shutdown()
    return 0
