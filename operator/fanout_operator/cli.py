"""``fanout-operator``: run the operator (kopf with ``fanout_operator.handlers``).

:func:`parse` turns the command line, and the few environment variables the chart sets, into one
``settings.OperatorSettings``; :func:`run` starts kopf with it in ``memo.settings``, where every
handler reads it. Flags win over the environment, which wins over the defaults.

Defaults: all namespaces; peering through ``fanout-operator``, created when missing, else
standalone with one warning line (see ``peering``); a per-process priority (older wins);
liveness on ``http://0.0.0.0:8081/healthz``; the operator's Prometheus metrics on
``http://0.0.0.0:8082/metrics`` (``--metrics-port 0`` disables).

Environment: ``FANOUT_WORKER_IMAGE`` / ``FANOUT_WORKER_SERVICE_ACCOUNT`` (the workers' default
image and ServiceAccount), ``FANOUT_SCRAPE_WORKERS`` (``false`` = ``--no-scrape-workers``),
``FANOUT_METRICS_PORT`` / ``FANOUT_METRICS_ADDRESS``, and ``POD_ID`` (this replica's identity
among its peers; the chart sets it to the pod name).
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import threading
from collections.abc import Mapping, Sequence

from fanout_operator import guardrails, rendering, settings

DEFAULT_WORKER_IMAGE = "ghcr.io/fanout-consumer/fanout-consumer:latest"
ENV_WORKER_IMAGE = "FANOUT_WORKER_IMAGE"
ENV_WORKER_SERVICE_ACCOUNT = "FANOUT_WORKER_SERVICE_ACCOUNT"
ENV_SCRAPE_WORKERS = "FANOUT_SCRAPE_WORKERS"
ENV_METRICS_PORT = "FANOUT_METRICS_PORT"
ENV_METRICS_ADDRESS = "FANOUT_METRICS_ADDRESS"
ENV_IDENTITY = "POD_ID"
_FALSE = ("0", "false", "no", "off")


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (0 disables)") from error
    if not 0 <= value < 65536:
        raise argparse.ArgumentTypeError(f"{value} is not a port number (0 disables)")
    return value


def _positive(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} must be > 0")
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fanout-operator", description="Run the FanoutConsumer operator.")
    _scope_and_peering_flags(p)
    _endpoint_flags(p)
    _worker_flags(p)
    _guardrail_flags(p)
    p.add_argument("-v", "--verbose", action="store_true")
    p.add_argument("--debug", action="store_true")
    return p


def _scope_and_peering_flags(p: argparse.ArgumentParser) -> None:
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
        default=None,
        help="Peer with other replicas through this kopf peering object; it must exist or be "
        f"creatable (default: '{settings.DEFAULT_PEERING_NAME}', created when missing, else "
        "standalone with a warning).",
    )
    peers.add_argument("--standalone", action="store_true", help="No peering (a single operator replica).")
    p.add_argument(
        "--priority", type=int, default=None, help="Peering priority (default: older process wins)."
    )
    p.add_argument(
        "--peering-lifetime",
        type=int,
        default=settings.DEFAULT_PEERING_LIFETIME_SECONDS,
        help="Seconds a replica that stopped sending keep-alives counts as alive; a standby replica "
        "takes over within this time after the active one dies (at once when it exits cleanly). "
        "Default %(default)s.",
    )


def _endpoint_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--liveness", default=settings.DEFAULT_LIVENESS, help="Liveness endpoint URL ('' disables)."
    )
    p.add_argument(
        "--metrics-port",
        type=_port,
        default=None,
        help=f"Port of the operator's /metrics (default {settings.DEFAULT_METRICS_PORT}; 0 disables).",
    )
    p.add_argument(
        "--metrics-address",
        default=None,
        help=f"Address /metrics listens on (default {settings.DEFAULT_METRICS_ADDRESS}).",
    )


def _worker_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--worker-image", default=None, help=f"Default worker image (env {ENV_WORKER_IMAGE}).")
    p.add_argument(
        "--worker-service-account",
        default=None,
        help=f"Default worker service account (env {ENV_WORKER_SERVICE_ACCOUNT}).",
    )
    p.add_argument(
        "--aws-identity",
        choices=[identity.value for identity in rendering.AwsIdentity],
        default=rendering.AwsIdentity.IRSA.value,
        help="How a consumer's spec.workload.iamRoleArn reaches its pods: 'irsa' annotates the "
        "ServiceAccount <name>-worker; 'pod-identity' leaves the binding to an EKS Pod Identity "
        "association the cluster admin creates for it. Default %(default)s.",
    )
    p.add_argument(
        "--no-scrape-workers",
        action="store_true",
        help="Do not read the workers' /metrics (throttle, throughput).",
    )
    p.add_argument(
        "--resync-seconds",
        type=_positive,
        default=settings.DEFAULT_RESYNC_SECONDS,
        help="How often every consumer's children are compared with its spec and repaired. "
        "Default %(default)s.",
    )
    p.add_argument(
        "--topology-seconds",
        type=_positive,
        default=settings.DEFAULT_TOPOLOGY_SECONDS,
        help="How often every consumer's AWS topology is checked (and provisioned, with "
        "spec.topology.manage); a spec change checks at once. Default %(default)s.",
    )


def _guardrail_flags(p: argparse.ArgumentParser) -> None:
    rails = p.add_argument_group("guardrails (what a FanoutConsumer may ask for)")
    rails.add_argument(
        "--allowed-image-repository",
        action="append",
        default=[],
        metavar="PATTERN",
        help="Repository (fnmatch pattern, no tag) spec.workload.image may come from; repeatable. "
        "Default: only the default worker image's repository.",
    )
    rails.add_argument(
        "--allow-service-account-name",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="May a consumer set spec.workload.serviceAccountName? Default yes.",
    )
    rails.add_argument(
        "--allow-iam-role-arn",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="May a consumer set spec.workload.iamRoleArn? Default yes.",
    )
    rails.add_argument(
        "--identity-namespace",
        action="append",
        default=[],
        metavar="NAMESPACE",
        help="Only consumers in these namespaces may set serviceAccountName / iamRoleArn; repeatable. "
        "Default: every namespace.",
    )


def _peering(options: argparse.Namespace) -> settings.Peering:
    if options.standalone:
        mode = settings.PeeringMode.STANDALONE
    elif options.peering is not None:
        mode = settings.PeeringMode.REQUIRED
    else:
        mode = settings.PeeringMode.AUTO
    return settings.Peering(
        mode=mode,
        name=options.peering or settings.DEFAULT_PEERING_NAME,
        priority=options.priority,
        lifetime_seconds=options.peering_lifetime,
    )


def _metrics(options: argparse.Namespace, environ: Mapping[str, str]) -> settings.MetricsEndpoint | None:
    port = options.metrics_port
    if port is None:
        raw = environ.get(ENV_METRICS_PORT, "").strip()
        try:
            port = _port(raw) if raw else settings.DEFAULT_METRICS_PORT
        except argparse.ArgumentTypeError as error:
            parser().error(f"{ENV_METRICS_PORT}: {error}")
    if port == 0:
        return None
    host = options.metrics_address or environ.get(ENV_METRICS_ADDRESS, "").strip()
    return settings.MetricsEndpoint(host=host or settings.DEFAULT_METRICS_ADDRESS, port=port)


def parse(argv: Sequence[str], environ: Mapping[str, str]) -> settings.OperatorSettings:
    """The settings for this command line and environment; a bad flag exits 2 with one line."""
    options = parser().parse_args(list(argv))
    workers = rendering.Defaults(
        image=options.worker_image or environ.get(ENV_WORKER_IMAGE) or DEFAULT_WORKER_IMAGE,
        service_account_name=options.worker_service_account
        or environ.get(ENV_WORKER_SERVICE_ACCOUNT)
        or None,
        aws_identity=rendering.AwsIdentity(options.aws_identity),
    )
    scrape = (
        not options.no_scrape_workers
        and environ.get(ENV_SCRAPE_WORKERS, "true").strip().lower() not in _FALSE
    )
    return settings.OperatorSettings(
        namespaces=tuple(options.namespace),
        peering=_peering(options),
        identity=environ.get(ENV_IDENTITY) or f"{socket.gethostname()}-{os.getpid()}",
        liveness=options.liveness or None,
        metrics=_metrics(options, environ),
        workers=workers,
        guardrails=guardrails.Guardrails(
            image_repositories=tuple(options.allowed_image_repository),
            allow_service_account_name=options.allow_service_account_name,
            allow_iam_role_arn=options.allow_iam_role_arn,
            identity_namespaces=tuple(options.identity_namespace),
        ),
        scrape_workers=scrape,
        resync_seconds=options.resync_seconds,
        topology_seconds=options.topology_seconds,
        verbose=options.verbose,
        debug=options.debug,
    )


def run(
    config: settings.OperatorSettings,
    *,
    stop_flag: threading.Event | None = None,
    ready_flag: threading.Event | None = None,
) -> None:
    """Run kopf with the handlers and ``config`` until stopped (SIGINT/SIGTERM, or ``stop_flag``)."""
    import kopf  # imported late so `--help` stays fast

    from fanout_operator import handlers  # registers the handlers with kopf

    kopf.configure(debug=config.debug, verbose=config.verbose)
    kopf.run(
        clusterwide=config.clusterwide,
        namespaces=config.namespaces,
        liveness_endpoint=config.liveness,
        identity=config.identity,  # type: ignore[arg-type]  # kopf's Identity is a NewType of str
        memo=kopf.Memo({handlers.MEMO_SETTINGS: config}),
        stop_flag=stop_flag,
        ready_flag=ready_flag,
    )


def main(argv: Sequence[str] | None = None) -> None:
    run(parse(sys.argv[1:] if argv is None else argv, os.environ))
