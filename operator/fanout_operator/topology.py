"""The operator's topology loop: verify each FanoutConsumer's AWS topology, always; provision it
when ``spec.topology.manage`` is on; delete what it created when asked.

Loaded by kopf beside ``handlers`` (``cli.kopf_arguments`` names both modules). One daemon per
FanoutConsumer runs a check when it starts, when the spec changes (a new generation) and every
``FANOUT_TOPOLOGY_INTERVAL`` seconds (default 300): with ``manage: true`` it first runs
``fanout_core.provisioning`` (idempotent, so a deleted subscription or a stripped redrive policy
comes back at the next check), then ``fanout_core.inspecting`` and ``findings``; ``assessing``
turns the result into the ``TopologyReady`` condition and ``status.topology``, a Warning Event
per new finding, a Normal Event for what provisioning changed, and the
``fanout_operator_topology_findings`` gauge.

What AWS refuses to show (AccessDenied) is a ``ReadDenied`` finding and the rest is checked; a
provisioning write it refuses is a ``ProvisioningFailed`` finding naming the action, and the
check carries on; only a failure that stops everything (throttling, an outage, no credentials)
leaves the condition Unknown until the next check.

With ``manage: true`` and ``deletionPolicy: Delete``, a deletion handler (and kopf's finalizer,
on those objects only) deletes what ``status.topology.created`` lists — what the operator
created, never what it adopted — before the FanoutConsumer goes.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import kopf

from fanout_core import awsclients, awserrors, findings, inspecting, provisioning, spec, topology
from fanout_operator import assessing, autoscaling, handlers, metrics, reconciling, rendering, status

logger = logging.getLogger(__name__)

ENV_INTERVAL = "FANOUT_TOPOLOGY_INTERVAL"
DEFAULT_INTERVAL_SECONDS = 300.0
GENERATION_POLL_SECONDS = 1.0
DELETE_RETRY_SECONDS = 30.0
_WRITE_FAILED = (awserrors.Kind.DENIED, awserrors.Kind.INVALID, awserrors.Kind.NOT_FOUND)


def interval_from_environment() -> float:
    raw = os.environ.get(ENV_INTERVAL, "").strip()
    try:
        value = float(raw) if raw else DEFAULT_INTERVAL_SECONDS
    except ValueError as error:
        raise kopf.PermanentError(f"{ENV_INTERVAL}={raw!r} is not a number of seconds") from error
    return value if value > 0 else DEFAULT_INTERVAL_SECONDS


def owner_key(owner: rendering.Owner) -> str:
    """How AWS resources name the FanoutConsumer that made them (the ``fanout.dev/owner`` tag)."""
    return f"{owner.namespace}/{owner.name}"


async def _report(consumer: spec.FanoutConsumerSpec, owner: str) -> tuple[findings.Report, Any]:
    """Provision (when asked), then verify: the report and what provisioning did."""
    async with awsclients.open_clients(consumer.queue.region) as clients:
        desired = topology.desired(consumer, owner=owner, place=clients.place)
        provisioned: topology.Provisioned | None = None
        failures: list[findings.Finding] = []
        if desired.manage:
            try:
                provisioned = await provisioning.provision(clients, desired)
            except awsclients.AwsError as error:
                if error.kind not in _WRITE_FAILED:
                    raise
                action = error.action if error.kind is awserrors.Kind.DENIED else None
                failures.append(
                    findings.provisioning_failed(error.resource, str(error), missing_action=action)
                )
            except awsclients.ProvisioningError as error:
                failures.append(
                    findings.provisioning_failed(desired.queue.url, str(error), missing_action=None)
                )
        observed = await inspecting.inspect(clients, desired)
    report = findings.check(consumer, desired, observed)
    return findings.Report((*failures, *report.findings), report.notes), provisioned


async def check(
    runtime: handlers.Runtime, body: kopf.Body, recorder: metrics.ConsumerMetrics | None
) -> assessing.Assessment | None:
    """One topology check of ``body``, written to its status; None for an invalid spec (the
    reconcile handler reports that)."""
    owner = autoscaling.owner_of(body)
    try:
        consumer = spec.parse_spec(body.get("spec"))
    except spec.ConfigError:
        return None
    previous = status.parse(body.get("status"))
    now = time.time()
    try:
        report, provisioned = await _report(consumer, owner_key(owner))
        outcome = assessing.assess(report, provisioned=provisioned, previous=previous.topology, now=now)
    except awsclients.TopologyError as error:
        outcome = assessing.check_failed(str(error), previous.topology)
    generation = body.get("metadata", {}).get("generation")
    conditions = status.set_condition(
        previous.conditions,
        status.ConditionType.TOPOLOGY_READY,
        outcome.state,
        outcome.reason,
        outcome.message,
        now=now,
        generation=generation,
    )
    patch = {
        "status": {
            "topology": outcome.topology.model_dump(mode="json", by_alias=True, exclude_none=True),
            "conditions": [c.model_dump(mode="json", by_alias=True, exclude_none=True) for c in conditions],
        }
    }
    await runtime.client.merge_patch(reconciling.consumer_path(owner, "status"), patch)
    if recorder is not None:
        recorder.topology(outcome.counts)
    for finding in outcome.warnings:
        message = f"{finding.resource}: {finding.message} Fix: {finding.fix}"
        await reconciling.post_event(
            runtime.client, owner, reason=finding.reason, message=message, warning=True
        )
    if outcome.announcement:
        await reconciling.post_event(
            runtime.client, owner, reason=assessing.PROVISIONED, message=outcome.announcement
        )
    return outcome


@kopf.daemon(spec.API_GROUP, spec.API_VERSION, spec.PLURAL, cancellation_backoff=0, cancellation_timeout=10)
async def verify_topology(body: kopf.Body, memo: kopf.Memo, stopped: kopf.DaemonStopped, **_: Any) -> None:
    """The topology loop of one FanoutConsumer, until kopf stops it (deletion, shutdown, a peer)."""
    runtime: handlers.Runtime = memo["runtime"]
    owner = autoscaling.owner_of(body)
    recorder = (
        runtime.metric_families.consumer(owner.namespace, owner.name) if runtime.metric_families else None
    )
    interval = interval_from_environment()
    checked_generation: object = None
    due = 0.0
    try:
        while not stopped.is_set():
            generation = body.get("metadata", {}).get("generation")
            if generation != checked_generation or time.monotonic() >= due:
                try:
                    await check(runtime, body, recorder)
                except Exception:  # a Kubernetes write failed: logged, tried again next round
                    logger.exception("%s/%s: topology check not recorded", owner.namespace, owner.name)
                checked_generation, due = generation, time.monotonic() + interval
            await stopped.wait(GENERATION_POLL_SECONDS)
    finally:
        if recorder is not None:
            recorder.topology({})


def _deletes_what_it_created(**kwargs: Any) -> bool:
    """kopf's filter (it passes the object's ``spec`` by that name)."""
    chosen = (kwargs.get("spec") or {}).get("topology") or {}
    return bool(chosen.get("manage")) and chosen.get("deletionPolicy") == spec.DeletionPolicy.DELETE.value


@kopf.on.delete(spec.API_GROUP, spec.API_VERSION, spec.PLURAL, when=_deletes_what_it_created)
async def delete_topology(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """deletionPolicy Delete: the AWS resources the operator created go with the FanoutConsumer."""
    runtime: handlers.Runtime = memo["runtime"]
    owner = autoscaling.owner_of(body)
    try:
        consumer = spec.parse_spec(body.get("spec"))
    except spec.ConfigError:
        return
    recorded = status.parse(body.get("status")).topology
    created = tuple(
        topology.Resource(topology.Kind(item.kind), item.id)
        for item in (recorded.created if recorded else [])
    )
    try:
        async with awsclients.open_clients(consumer.queue.region) as clients:
            desired = topology.desired(consumer, owner=owner_key(owner), place=clients.place)
            done = await provisioning.delete_created(clients, desired, created)
    except awsclients.AwsError as error:
        if error.retryable:
            raise kopf.TemporaryError(
                f"cannot delete the topology yet: {error}", delay=DELETE_RETRY_SECONDS
            ) from error
        message = f"left in AWS: {error}"
        await reconciling.post_event(
            runtime.client, owner, reason="TopologyNotDeleted", message=message, warning=True
        )
        raise kopf.PermanentError(message) from error
    if done:
        await reconciling.post_event(runtime.client, owner, reason="TopologyDeleted", message="; ".join(done))
