"""The front door's command line: ``fanout-ingest --config FILE``.

``fanout-ingest`` is an external contract (docs/contracts.md): FILE is a FanoutIngest
manifest (YAML or JSON; the chart's ConfigMap holds one), AWS settings come only from the
standard AWS environment, webhooks, probes and ``/metrics`` are served on ``--http-port``
(default 8080), and SIGTERM drains and exits 0. A manifest that cannot be used — a field
invalid, no secret readable, no region — exits 2 with one line per problem naming the field;
a port it cannot listen on exits 1 with one line.

The gateway runs on uvloop's event loop (libuv; the asyncio API unchanged), as the worker does:
at 600 requests/s a quarter of its CPU was asyncio's own loop and socket code (py-spy).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import signal
import sys
from collections.abc import Sequence

import uvloop

from fanout_core import jsonlogs
from fanout_core import spec as spec_model
from fanout_ingest import config, serving

EXIT_CONFIG = 2
PROG = "fanout-ingest"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Take Genesys Cloud webhooks and publish their events to an SNS topic."
    )
    parser.add_argument("--config", required=True, help="FanoutIngest manifest (YAML or JSON)")
    parser.add_argument(
        "--http-port", type=int, default=8080, help="port of the webhooks, /healthz, /readyz, /metrics"
    )
    parser.add_argument("--http-host", default="0.0.0.0", help="address to listen on")
    parser.add_argument(
        "--drain-seconds",
        type=float,
        default=5.0,
        help="after SIGTERM, answer 503 this long while load balancers drop the pod (default 5)",
    )
    parser.add_argument("--log-level", default=None, help="DEBUG | INFO | WARNING | ERROR")
    return parser


def _config_error(path: str, error: spec_model.ConfigError) -> int:
    print("\n".join(spec_model.config_error_lines(PROG, path, error)), file=sys.stderr)
    return EXIT_CONFIG


async def _serve(gateway: serving.Gateway) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    running = asyncio.create_task(gateway.run(stop))
    started = asyncio.create_task(gateway.wait_started())
    await asyncio.wait({running, started}, return_when=asyncio.FIRST_COMPLETED)
    if started.done():
        _freeze_startup_objects()
    else:
        started.cancel()
    await running


def _freeze_startup_objects() -> None:
    """What start-up made (botocore's service models, aiohttp's app: ~100,000 objects that live
    as long as the process) is moved out of the garbage collector's sight. A full collection
    then scans only what was made since; without it one came every few seconds at 600
    requests/s and stopped the event loop for ~150 ms (gc callbacks, on this 2-core machine):
    the gateway's p99."""
    gc.collect()
    gc.freeze()


def main(argv: Sequence[str] | None = None) -> int:
    """``fanout-ingest``."""
    args = _parser().parse_args(argv)
    try:
        ingest = config.load(args.config)
        jsonlogs.configure_logging(args.log_level or ingest.spec.log_level)
        gateway = serving.Gateway(
            ingest, http_host=args.http_host, http_port=args.http_port, drain_seconds=args.drain_seconds
        )
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(_serve(gateway))
    except spec_model.ConfigError as error:
        return _config_error(args.config, error)
    except OSError as error:  # the port is taken, the address does not exist
        print(
            f"{PROG}: cannot listen on {args.http_host}:{args.http_port}: {error.strerror or error}",
            file=sys.stderr,
        )
        return 1
    return 0
