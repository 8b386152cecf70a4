"""The kopf handlers: thin wiring from kopf's events to ``reconciling`` and ``autoscaling``.

Loaded by ``fanout-operator`` (``cli``) as ``kopf run -m fanout_operator.handlers``. Nothing here
decides anything; it builds the shared runtime once (Kubernetes client, SQS reader, HTTP
session for the workers' metrics), hands each FanoutConsumer to the reconciler when it is
created, changed or found at start-up, and runs one scaling daemon per FanoutConsumer.

Operator-wide settings come from the environment (``cli`` sets them from flags):
``FANOUT_WORKER_IMAGE`` (default worker image), ``FANOUT_WORKER_SERVICE_ACCOUNT`` (default
worker service account, e.g. the chart's IRSA one), ``FANOUT_SCRAPE_WORKERS`` (``false`` turns
off reading the workers' /metrics, e.g. when the operator cannot reach pod IPs),
``FANOUT_METRICS_PORT`` / ``FANOUT_METRICS_ADDRESS`` (where the operator's own ``/metrics``
listens; ``0`` disables it. Unset, the port is 0 too: ``fanout-operator`` always sets it, default
8082, and an operator run in-process by a test must not grab a fixed port).

kopf keeps its own bookkeeping in annotations (``fanout.dev/...``), not in the status, so the
status stays exactly the schema ``crd`` publishes.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import Any

import aiohttp
import kopf

from fanout_core import spec
from fanout_operator import (
    autoscaling,
    kube,
    metrics,
    queues,
    reconciling,
    redrives,
    rendering,
    status,
    workers_state,
)

logger = logging.getLogger(__name__)

ENV_WORKER_IMAGE = "FANOUT_WORKER_IMAGE"
ENV_WORKER_SERVICE_ACCOUNT = "FANOUT_WORKER_SERVICE_ACCOUNT"
ENV_SCRAPE_WORKERS = "FANOUT_SCRAPE_WORKERS"
ENV_METRICS_PORT = "FANOUT_METRICS_PORT"
ENV_METRICS_ADDRESS = "FANOUT_METRICS_ADDRESS"
DEFAULT_METRICS_ADDRESS = "0.0.0.0"
DEFAULT_WORKER_IMAGE = "ghcr.io/fanout-consumer/fanout-consumer:latest"
FINALIZER = f"{spec.API_GROUP}/operator"
RETRY_DELAY_SECONDS = 10.0

CREDENTIALS = kube.Credentials()


@dataclasses.dataclass
class Runtime:
    """What every handler shares; built at start-up, closed at clean-up."""

    client: kube.KubeClient
    depth_reader: queues.SqsDepthReader
    http: aiohttp.ClientSession
    settings: autoscaling.Settings
    metric_families: metrics.OperatorMetrics | None = None
    metrics_server: metrics.MetricsServer | None = None


def settings_from_environment() -> autoscaling.Settings:
    defaults = rendering.Defaults(
        image=os.environ.get(ENV_WORKER_IMAGE) or DEFAULT_WORKER_IMAGE,
        service_account_name=os.environ.get(ENV_WORKER_SERVICE_ACCOUNT) or None,
    )
    scrape = os.environ.get(ENV_SCRAPE_WORKERS, "true").strip().lower() not in ("0", "false", "no", "off")
    return autoscaling.Settings(defaults=defaults, scrape_workers=scrape)


@dataclasses.dataclass(frozen=True)
class MetricsEndpoint:
    host: str
    port: int


def metrics_endpoint_from_environment() -> MetricsEndpoint | None:
    """Where to serve /metrics, or ``None`` when disabled (port 0 or unset)."""
    raw = os.environ.get(ENV_METRICS_PORT, "").strip() or "0"
    try:
        port = int(raw)
    except ValueError as error:
        raise kopf.PermanentError(f"{ENV_METRICS_PORT}={raw!r} is not a port number") from error
    if port == 0:
        return None
    if not 0 < port < 65536:
        raise kopf.PermanentError(f"{ENV_METRICS_PORT}={port} is not a port number")
    host = os.environ.get(ENV_METRICS_ADDRESS, "").strip() or DEFAULT_METRICS_ADDRESS
    return MetricsEndpoint(host=host, port=port)


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """kopf's own in-cluster / kubeconfig login, remembered for our client too."""
    info = kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)
    if info is not None:
        CREDENTIALS.info = info
    return info


@kopf.on.startup()
async def start(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=spec.API_GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=spec.API_GROUP, key="last-handled-configuration"
    )
    # Our own Events say what happened; kopf adds only its warnings and errors.
    settings.posting.level = logging.WARNING
    families, server = await _serve_metrics(metrics_endpoint_from_environment())
    memo["runtime"] = Runtime(
        client=kube.KubeClient(CREDENTIALS),
        depth_reader=queues.SqsDepthReader(),
        http=aiohttp.ClientSession(),
        settings=settings_from_environment(),
        metric_families=families,
        metrics_server=server,
    )


async def _serve_metrics(
    endpoint: MetricsEndpoint | None,
) -> tuple[metrics.OperatorMetrics | None, metrics.MetricsServer | None]:
    if endpoint is None:
        return None, None
    families = metrics.OperatorMetrics()
    server = metrics.MetricsServer(families, host=endpoint.host, port=endpoint.port)
    try:
        await server.start()
    except OSError as error:
        # Permanent: kopf would retry a start-up error forever, and an operator without its
        # metrics would look healthy while its alerts went blind.
        raise kopf.PermanentError(
            f"cannot serve metrics on {endpoint.host}:{endpoint.port}: {error}"
        ) from error
    logger.info("metrics on http://%s:%d/metrics", endpoint.host, server.port)
    return families, server


@kopf.on.cleanup()
async def stop(memo: kopf.Memo, **_: Any) -> None:
    runtime: Runtime | None = memo.get("runtime")
    if runtime is not None:
        if runtime.metrics_server is not None:
            await runtime.metrics_server.stop()
        await runtime.client.close()
        await runtime.depth_reader.close()
        await runtime.http.close()


async def _mark_invalid(
    runtime: Runtime, body: kopf.Body, owner: rendering.Owner, message: str, now: float
) -> None:
    previous = status.parse(body.get("status"))
    generation = body.get("metadata", {}).get("generation")
    conditions = status.set_condition(
        previous.conditions,
        status.ConditionType.DEGRADED,
        True,
        "InvalidSpec",
        message,
        now=now,
        generation=generation,
    )
    conditions = status.set_condition(
        conditions, status.ConditionType.READY, False, "InvalidSpec", message, now=now, generation=generation
    )
    new = previous.model_copy(update={"conditions": conditions, "observed_generation": generation})
    await runtime.client.merge_patch(reconciling.consumer_path(owner, "status"), {"status": status.dump(new)})
    await reconciling.post_event(runtime.client, owner, reason="InvalidSpec", message=message, warning=True)


@kopf.on.resume(spec.API_GROUP, spec.API_VERSION, spec.PLURAL)
@kopf.on.create(spec.API_GROUP, spec.API_VERSION, spec.PLURAL)
@kopf.on.update(spec.API_GROUP, spec.API_VERSION, spec.PLURAL)
async def reconcile(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Children in line with the spec; an invalid spec is marked in the status, not retried."""
    runtime: Runtime = memo["runtime"]
    owner = autoscaling.owner_of(body)
    now = time.time()
    try:
        consumer = spec.parse_spec(body.get("spec"))
    except spec.ConfigError as error:
        message = f"invalid spec: {error}".replace("\n", "; ")
        try:
            await _mark_invalid(runtime, body, owner, message, now)
        except kube.KubeError as write_error:
            raise kopf.TemporaryError(
                f"{message} (status not written: {write_error})", delay=RETRY_DELAY_SECONDS
            ) from write_error
        raise kopf.PermanentError(message) from error
    previous = status.parse(body.get("status"))
    try:
        applied = await reconciling.reconcile(
            runtime.client,
            owner,
            consumer,
            runtime.settings.defaults,
            autoscaling.initial_replicas(consumer, previous),
        )
        generation = body.get("metadata", {}).get("generation")
        conditions = status.set_condition(
            previous.conditions,
            status.ConditionType.DEGRADED,
            False,
            "Reconciled",
            "",
            now=now,
            generation=generation,
        )
        new = previous.model_copy(
            update={
                "observed_generation": generation,
                "queue": consumer.queue.name,
                "selector": rendering.selector_string(owner),
                "replicas": applied.deployment_replicas,
                "conditions": conditions,
            }
        )
        await runtime.client.merge_patch(
            reconciling.consumer_path(owner, "status"), {"status": status.dump(new)}
        )
    except kube.KubeError as error:
        raise kopf.TemporaryError(f"cannot reconcile: {error}", delay=RETRY_DELAY_SECONDS) from error
    if applied.created:
        logger.info("%s/%s: created %s", owner.namespace, owner.name, ", ".join(applied.created))


@kopf.daemon(spec.API_GROUP, spec.API_VERSION, spec.PLURAL, cancellation_backoff=0, cancellation_timeout=10)
async def autoscale(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """The scaling loop of one FanoutConsumer, until kopf cancels it (deletion, shutdown)."""
    runtime: Runtime = memo["runtime"]
    observer = workers_state.FleetObserver(runtime.http) if runtime.settings.scrape_workers else None
    owner = autoscaling.owner_of(body)
    recorder = (
        runtime.metric_families.consumer(owner.namespace, owner.name) if runtime.metric_families else None
    )
    autoscaler = autoscaling.Autoscaler(
        client=runtime.client,
        depth_reader=runtime.depth_reader,
        observer=observer,
        settings=runtime.settings,
        recorder=recorder,
    )
    try:
        # `body` is kopf's live view: each round reads the spec as it is now.
        await autoscaling.run(lambda: autoscaler.poll(body))
    finally:
        # The daemon ends when the resource is deleted, the operator stops or a peer takes
        # over: in each case this process no longer speaks for the consumer.
        if recorder is not None:
            recorder.forget()


@kopf.daemon(spec.API_GROUP, spec.API_VERSION, spec.PLURAL, cancellation_backoff=0, cancellation_timeout=30)
async def declarative_redrives(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Redrive requests of one FanoutConsumer (annotation fanout.dev/redrive-request): ``redrives``."""
    runtime: Runtime = memo["runtime"]
    owner = autoscaling.owner_of(body)
    recorder = (
        runtime.metric_families.consumer(owner.namespace, owner.name) if runtime.metric_families else None
    )
    await redrives.Watcher(runtime.client, owner, recorder=recorder).watch(body)
