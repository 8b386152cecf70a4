"""The kopf handlers: thin wiring from kopf's events to the modules that do the work.

Loaded by ``fanout-operator`` (``cli``), which runs kopf with this module's handlers registered
and the operator's ``settings.OperatorSettings`` in ``memo.settings``. Nothing here decides
anything. At start-up it builds the shared :class:`Runtime` once (Kubernetes client, SQS reader,
HTTP session for the workers' metrics, the operator's /metrics) and settles peering
(``peering.prepare``) before kopf starts watching. Then, per FanoutConsumer:

- create / update / resume: ``guardrails.admit`` the spec, then ``reconciling.reconcile``; the
  outcome goes to the consumer's ``reporting.StatusWriter`` (one per consumer, in kopf's
  per-object memo, shared with the daemons below);
- a scaling daemon (``autoscaling``), a drift-resync daemon (``resyncing``), a topology daemon
  (``topology``: verify the AWS topology, provision it with ``spec.topology.manage``) and a
  daemon for declarative redrive requests (``redrives``), each a ``looping.run`` until kopf
  stops it (deletion, shutdown, a peer taking over);
- on deletion, only for ``manage: true`` with ``deletionPolicy: Delete`` (kopf's finalizer is
  added to those objects only): ``topology.delete`` removes the AWS resources it created.

kopf keeps its own bookkeeping in annotations (``fanout.dev/...``), not in the status, so the
status stays exactly the schema ``crd`` publishes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
from typing import Any

import aiohttp
import kopf

from fanout_core import spec
from fanout_operator import (
    autoscaling,
    conditions,
    guardrails,
    kube,
    looping,
    metrics,
    peering,
    queues,
    reconciling,
    redrives,
    rendering,
    reporting,
    resyncing,
    settings,
    status,
    topology,
    workers_state,
)

logger = logging.getLogger(__name__)

FINALIZER = f"{spec.API_GROUP}/operator"
MEMO_SETTINGS = "settings"
MEMO_RUNTIME = "runtime"
MEMO_WRITER = "status_writer"
MEMO_SPOKE_BEFORE = "scaled_before"


@dataclasses.dataclass
class Runtime:
    """What every handler shares; built at start-up, closed at clean-up."""

    settings: settings.OperatorSettings
    credentials: kube.Credentials
    client: kube.KubeClient
    depth_reader: queues.SqsDepthReader
    http: aiohttp.ClientSession
    metric_families: metrics.OperatorMetrics | None = None
    metrics_server: metrics.MetricsServer | None = None


def _settings(memo: kopf.Memo) -> settings.OperatorSettings:
    configured = memo.get(MEMO_SETTINGS)
    if isinstance(configured, settings.OperatorSettings):
        return configured
    logger.warning("no operator settings in kopf's memo (not started by fanout-operator?): using defaults")
    return settings.OperatorSettings()


def _runtime(memo: kopf.Memo) -> Runtime:
    runtime: Runtime = memo[MEMO_RUNTIME]
    return runtime


def _writer(memo: kopf.Memo, runtime: Runtime, owner: rendering.Owner) -> reporting.StatusWriter:
    """The consumer's status writer (kopf's memo here is the per-object one)."""
    writer = memo.get(MEMO_WRITER)
    if not isinstance(writer, reporting.StatusWriter):
        writer = reporting.StatusWriter(runtime.client, owner, instance=runtime.settings.identity)
        memo[MEMO_WRITER] = writer
    return writer


def _login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


@kopf.on.login()
def login(memo: kopf.Memo, **kwargs: Any) -> kopf.ConnectionInfo | None:
    """kopf's own in-cluster / kubeconfig login, handed to our client too when kopf renews it."""
    info = _login(**kwargs)
    runtime = memo.get(MEMO_RUNTIME)
    if info is not None and isinstance(runtime, Runtime):
        runtime.credentials.info = info
    return info


def _configure_kopf(kopf_settings: kopf.OperatorSettings, plan: peering.Plan) -> None:
    kopf_settings.persistence.finalizer = FINALIZER
    kopf_settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=spec.API_GROUP)
    kopf_settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=spec.API_GROUP, key="last-handled-configuration"
    )
    # Our own Events say what happened; kopf adds only its warnings and errors.
    kopf_settings.posting.level = logging.WARNING
    kopf_settings.peering.standalone = plan.standalone
    kopf_settings.peering.mandatory = not plan.standalone
    kopf_settings.peering.name = plan.name
    kopf_settings.peering.priority = plan.priority
    kopf_settings.peering.lifetime = plan.lifetime_seconds


@kopf.on.startup()
async def start(memo: kopf.Memo, logger: logging.Logger | logging.LoggerAdapter[Any], **kwargs: Any) -> None:
    kopf_settings: kopf.OperatorSettings = kwargs["settings"]
    config = _settings(memo)
    # kopf logs in after start-up; peering must be settled before, so log in here as kopf will.
    credentials = kube.Credentials(_login(settings=kopf_settings, logger=logger))
    client = kube.KubeClient(credentials, user_agent=f"{kube.USER_AGENT} ({config.identity})")
    try:
        plan = await peering.prepare(client, config.peering, config.namespaces)
    except peering.PeeringUnavailable as error:
        await client.close()
        raise kopf.TemporaryError(str(error), delay=config.retry_seconds) from error
    except kube.KubeError as error:
        await client.close()
        raise kopf.TemporaryError(f"cannot check peering: {error}", delay=config.retry_seconds) from error
    if plan.warning:
        logger.warning(plan.warning)
    _configure_kopf(kopf_settings, plan)
    families, server = await _serve_metrics(config.metrics)
    memo[MEMO_RUNTIME] = Runtime(
        settings=config,
        credentials=credentials,
        client=client,
        depth_reader=queues.SqsDepthReader(),
        http=aiohttp.ClientSession(),
        metric_families=families,
        metrics_server=server,
    )


async def _serve_metrics(
    endpoint: settings.MetricsEndpoint | None,
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
    runtime = memo.get(MEMO_RUNTIME)
    if isinstance(runtime, Runtime):
        if runtime.metrics_server is not None:
            await runtime.metrics_server.stop()
        await runtime.client.close()
        await runtime.depth_reader.close()
        await runtime.http.close()


# The per-consumer daemons: cancelled at once when kopf stops them, escalated after 10 s.
_daemon = functools.partial(
    kopf.daemon,
    spec.API_GROUP,
    spec.API_VERSION,
    spec.PLURAL,
    cancellation_backoff=0,
    cancellation_timeout=10,
)


@kopf.on.resume(spec.API_GROUP, spec.API_VERSION, spec.PLURAL)
@kopf.on.create(spec.API_GROUP, spec.API_VERSION, spec.PLURAL)
@kopf.on.update(spec.API_GROUP, spec.API_VERSION, spec.PLURAL)
async def reconcile(body: kopf.Body, memo: kopf.Memo, reason: str, **_: Any) -> None:
    """Children in line with an admitted spec; a rejected one is marked in the status, not retried."""
    runtime = _runtime(memo)
    config = runtime.settings
    owner = rendering.owner_of(body)
    writer = _writer(memo, runtime, owner)
    generation = status.generation_of(body)
    try:
        consumer = guardrails.admit(body.get("spec"), owner.namespace, config.guardrails, config.workers)
    except guardrails.Rejected as error:
        try:
            await writer.report(
                conditions.Rejected(str(error)), current=body.get("status"), generation=generation
            )
        except kube.KubeError as write_error:
            raise kopf.TemporaryError(
                f"{error} (status not written: {write_error})", delay=config.retry_seconds
            ) from write_error
        raise kopf.PermanentError(str(error)) from error
    try:
        applied = await reconciling.reconcile(
            runtime.client,
            owner,
            consumer,
            config.workers,
            status.parse(body.get("status")).replicas,
        )
        outcome = conditions.Reconciled(
            queue=consumer.queue.name,
            selector=rendering.selector_string(owner),
            replicas=applied.deployment_replicas,
            # After a restart, what changed while nobody watched is drift; on create / update
            # the changes are the spec's.
            repaired=applied.repaired if reason == kopf.Reason.RESUME else (),
        )
        await writer.report(outcome, current=body.get("status"), generation=generation)
    except kube.KubeError as error:
        raise kopf.TemporaryError(f"cannot reconcile: {error}", delay=config.retry_seconds) from error
    if applied.created or applied.repaired:
        logger.info("%s/%s: %s", owner.namespace, owner.name, applied.summary())


@_daemon(id="autoscale")
async def autoscale(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """The scaling loop of one FanoutConsumer, until kopf cancels it (deletion, shutdown, peer)."""
    runtime = _runtime(memo)
    config = runtime.settings
    owner = rendering.owner_of(body)
    writer = _writer(memo, runtime, owner)
    if memo.get(MEMO_SPOKE_BEFORE):
        # This process paused (a peer took over) and speaks for the consumer again: the peer
        # may have written the status meanwhile, so build on the object's status, not our copy.
        writer.forget()
    memo[MEMO_SPOKE_BEFORE] = True
    observer = workers_state.FleetObserver(runtime.http) if config.scrape_workers else None
    families = runtime.metric_families
    recorder = families.consumer(owner.namespace, owner.name) if families is not None else None
    autoscaler = autoscaling.Autoscaler(
        client=runtime.client,
        depth_reader=runtime.depth_reader,
        observer=observer,
        settings=config,
        writer=writer,
        recorder=recorder,
    )
    try:
        # `body` is kopf's live view: each round reads the spec as it is now.
        await looping.run(lambda: autoscaler.poll(body), what="scaling round")
    finally:
        # This process no longer speaks for the consumer: no stale series behind.
        if recorder is not None:
            recorder.forget()


@_daemon(id="resync")
async def resync(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Drift repair of one FanoutConsumer's children (``resyncing``), until kopf cancels it."""
    runtime = _runtime(memo)
    owner = rendering.owner_of(body)
    repair = resyncing.Resync(
        client=runtime.client, writer=_writer(memo, runtime, owner), settings=runtime.settings
    )
    # create / update / resume has just reconciled; the first resync is one interval later.
    await asyncio.sleep(runtime.settings.resync_seconds)
    await looping.run(lambda: repair.once(body), what="drift resync")


@_daemon(id="topology")
async def verify_topology(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """The AWS topology of one FanoutConsumer, checked (and provisioned) until kopf cancels it."""
    runtime = _runtime(memo)
    owner = rendering.owner_of(body)
    families = runtime.metric_families
    recorder = families.consumer(owner.namespace, owner.name) if families is not None else None
    check = topology.TopologyCheck(
        writer=_writer(memo, runtime, owner), settings=runtime.settings, recorder=recorder
    )
    try:
        await looping.run(lambda: check.once(body), what="topology check")
    finally:
        if recorder is not None:
            recorder.topology({})


def _deletes_what_it_created(spec: kopf.Spec, **_: Any) -> bool:
    return topology.deletes_what_it_created(spec)


@kopf.on.delete(spec.API_GROUP, spec.API_VERSION, spec.PLURAL, when=_deletes_what_it_created)
async def delete_topology(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """deletionPolicy Delete: the AWS resources the operator created go with the FanoutConsumer."""
    runtime = _runtime(memo)
    writer = _writer(memo, runtime, rendering.owner_of(body))
    try:
        await topology.delete(body, writer=writer)
    except topology.DeletionFailed as error:
        if error.retryable:
            raise kopf.TemporaryError(str(error), delay=runtime.settings.retry_seconds) from error
        raise kopf.PermanentError(str(error)) from error
    except kube.KubeError as error:
        raise kopf.TemporaryError(
            f"cannot record the deletion: {error}", delay=runtime.settings.retry_seconds
        ) from error


@_daemon(id="redrives", cancellation_timeout=30)
async def declarative_redrives(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Redrive requests of one FanoutConsumer (annotation fanout.dev/redrive-request): ``redrives``."""
    runtime = _runtime(memo)
    owner = rendering.owner_of(body)
    families = runtime.metric_families
    watcher = redrives.Watcher(
        runtime.client,
        owner,
        instance=runtime.settings.identity,
        recorder=families.consumer(owner.namespace, owner.name) if families is not None else None,
    )
    try:
        await looping.run(lambda: watcher.step(body), what="redrive watch")
    finally:
        await watcher.aclose()
