"""``fanout-operator``: run the operator (kopf with ``fanout_operator.handlers``).

Our flags are translated into kopf's own command line by :func:`kopf_arguments` (pure, so the
tests run the operator through ``kopf.testing.KopfRunner`` with exactly what the console
script would run), and the operator-wide worker settings are passed to the handlers through
the environment variables ``handlers`` documents.

Defaults: all namespaces, mandatory peering under ``fanout-operator`` with a per-process
priority (older wins; see ``peering``), liveness on ``http://0.0.0.0:8081/healthz``, the
operator's Prometheus metrics on ``http://0.0.0.0:8082/metrics`` (``--metrics-port 0`` disables).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from fanout_operator import handlers, peering, topology

DEFAULT_LIVENESS = "http://0.0.0.0:8081/healthz"
DEFAULT_METRICS_PORT = 8082  # next to kopf's liveness port


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fanout-operator", description="Run the FanoutConsumer operator.")
    scope = p.add_mutually_exclusive_group()
    scope.add_argument(
        "-n", "--namespace", action="append", default=[], help="Watch this namespace (repeatable)."
    )
    scope.add_argument(
        "-A", "--all-namespaces", action="store_true", help="Watch every namespace (the default)."
    )
    peers = p.add_mutually_exclusive_group()
    peers.add_argument(
        "--peering",
        default=peering.DEFAULT_PEERING_NAME,
        help="kopf peering object shared by operator replicas.",
    )
    peers.add_argument("--standalone", action="store_true", help="No peering (a single operator replica).")
    p.add_argument(
        "--priority", type=int, default=None, help="Peering priority (default: older process wins)."
    )
    p.add_argument("--liveness", default=DEFAULT_LIVENESS, help="Liveness endpoint URL ('' disables).")
    p.add_argument(
        "--worker-image", default=None, help=f"Default worker image (env {handlers.ENV_WORKER_IMAGE})."
    )
    p.add_argument(
        "--worker-service-account",
        default=None,
        help=f"Default worker service account (env {handlers.ENV_WORKER_SERVICE_ACCOUNT}).",
    )
    p.add_argument(
        "--no-scrape-workers",
        action="store_true",
        help="Do not read the workers' /metrics (throttle, throughput).",
    )
    p.add_argument(
        "--metrics-port",
        type=_port,
        default=DEFAULT_METRICS_PORT,
        help=f"Port of the operator's /metrics (default {DEFAULT_METRICS_PORT}; 0 disables).",
    )
    p.add_argument(
        "--metrics-address",
        default=None,
        help=f"Address /metrics listens on (default {handlers.DEFAULT_METRICS_ADDRESS}).",
    )
    p.add_argument("-v", "--verbose", action="store_true")
    p.add_argument("--debug", action="store_true")
    return p


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value < 65536:
        raise argparse.ArgumentTypeError(f"{value} is not a port number (0 disables)")
    return value


def kopf_arguments(argv: Sequence[str] | None = None, *, priority: int | None = None) -> list[str]:
    """kopf's command line for our flags: ``["run", "-m", "fanout_operator.handlers", ...]``."""
    options = parser().parse_args(argv)
    arguments = ["run", "-m", handlers.__name__, "-m", topology.__name__]
    if options.namespace:
        for namespace in options.namespace:
            arguments += ["--namespace", namespace]
    else:
        arguments.append("--all-namespaces")
    if options.standalone:
        arguments.append("--standalone")
    else:
        chosen = options.priority if options.priority is not None else priority
        arguments += ["--peering", options.peering, "--priority", str(chosen or peering.default_priority())]
    if options.liveness:
        arguments += ["--liveness", options.liveness]
    if options.verbose:
        arguments.append("--verbose")
    if options.debug:
        arguments.append("--debug")
    return arguments


def environment(argv: Sequence[str] | None = None) -> dict[str, str]:
    """The environment the handlers read, from our flags.

    Unset flags leave the env alone, except the metrics port, which is always set: the
    handlers' own default is "off", so an operator run in-process (tests) grabs no fixed port.
    """
    options = parser().parse_args(argv)
    env: dict[str, str] = {handlers.ENV_METRICS_PORT: str(options.metrics_port)}
    if options.metrics_address:
        env[handlers.ENV_METRICS_ADDRESS] = options.metrics_address
    if options.worker_image:
        env[handlers.ENV_WORKER_IMAGE] = options.worker_image
    if options.worker_service_account:
        env[handlers.ENV_WORKER_SERVICE_ACCOUNT] = options.worker_service_account
    if options.no_scrape_workers:
        env[handlers.ENV_SCRAPE_WORKERS] = "false"
    return env


def main(argv: Sequence[str] | None = None) -> None:
    import kopf.cli  # kopf's click CLI; imported late so `--help` of ours stays fast

    arguments = list(sys.argv[1:] if argv is None else argv)
    os.environ.update(environment(arguments))
    kopf.cli.main(args=kopf_arguments(arguments), prog_name="fanout-operator")
