"""The operator's topology check of one FanoutConsumer: verify its AWS topology, always; provision
it when ``spec.topology.manage`` is on; delete what was created when asked.

``handlers`` runs :meth:`TopologyCheck.once` in a daemon per FanoutConsumer (``looping.run``):
a check when the daemon starts, when the spec changes (a new generation; looked at every
second, which costs nothing) and every ``settings.topology_seconds`` (``--topology-seconds``,
default 300). With ``manage: true`` a check first runs ``fanout_core.provisioning``
(idempotent, so a deleted subscription or a stripped redrive policy comes back at the next
check), then ``fanout_core.inspecting`` and ``findings``; the result goes to the consumer's
``reporting.StatusWriter`` as a ``conditions.TopologyChecked`` outcome (the ``TopologyReady``
condition, ``status.topology``, a Warning Event per new finding) and to the
``fanout_operator_topology_findings`` gauge.

What AWS refuses to show (AccessDenied) is a ``ReadDenied`` finding and the rest is checked; a
provisioning write it refuses is a ``ProvisioningFailed`` finding naming the action, and the
check carries on; only a failure that stops everything (throttling, an outage, no credentials)
is ``conditions.TopologyUnchecked`` until the next check. A spec the guardrails reject is not
checked: nothing is built for it.

:func:`delete` runs when a FanoutConsumer with ``manage: true`` and ``deletionPolicy: Delete``
is deleted: it deletes what ``status.topology.created`` lists — what the operator created,
never what it adopted — before kopf lets the object go.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from fanout_core import awsclients, awserrors, findings, inspecting, provisioning, spec, topology
from fanout_operator import conditions, guardrails, kube, metrics, rendering, reporting, settings, status

logger = logging.getLogger(__name__)

GENERATION_POLL_SECONDS = 1.0
_WRITE_FAILED = (awserrors.Kind.DENIED, awserrors.Kind.INVALID, awserrors.Kind.NOT_FOUND)


def owner_key(owner: rendering.Owner) -> str:
    """How AWS resources name the FanoutConsumer that made them (the ``fanout.dev/owner`` tag)."""
    return f"{owner.namespace}/{owner.name}"


def deletes_what_it_created(consumer_spec: Mapping[str, Any] | None) -> bool:
    """Whether deleting this FanoutConsumer must delete AWS resources (kopf's filter)."""
    chosen = (consumer_spec or {}).get("topology") or {}
    return bool(chosen.get("manage")) and chosen.get("deletionPolicy") == spec.DeletionPolicy.DELETE.value


def _record(finding: findings.Finding) -> status.TopologyFinding:
    return status.TopologyFinding(
        reason=str(finding.reason),
        severity=finding.severity.value,
        resource=finding.resource,
        message=finding.message,
        fix=finding.fix,
    )


async def _provision(
    clients: awsclients.Clients, desired: topology.Desired
) -> tuple[topology.Provisioned | None, list[findings.Finding]]:
    """Provisioning's result, or the finding that says which write was refused."""
    try:
        return await provisioning.provision(clients, desired), []
    except awsclients.AwsError as error:
        if error.kind not in _WRITE_FAILED:
            raise
        action = error.action if error.kind is awserrors.Kind.DENIED else None
        return None, [findings.provisioning_failed(error.resource, str(error), missing_action=action)]
    except awsclients.ProvisioningError as error:
        return None, [findings.provisioning_failed(desired.queue.url, str(error), missing_action=None)]


async def check_outcome(consumer: spec.FanoutConsumerSpec, owner: str) -> conditions.TopologyChecked:
    """Provision (when asked), then verify; raises ``awsclients.TopologyError`` when AWS cannot
    be asked at all."""
    async with awsclients.open_clients(consumer.queue.region) as clients:
        desired = topology.desired(consumer, owner=owner, place=clients.place)
        provisioned, failures = await _provision(clients, desired) if desired.manage else (None, [])
        observed = await inspecting.inspect(clients, desired)
    report = findings.check(consumer, desired, observed)
    return conditions.TopologyChecked(
        findings=tuple(_record(finding) for finding in (*failures, *report.findings)),
        created=tuple(
            status.TopologyResource(kind=resource.kind.value, id=resource.id)
            for resource in (provisioned.created if provisioned else ())
        ),
        changes=provisioned.changes if provisioned else (),
    )


class TopologyCheck:
    """``await check.once(body)`` → seconds until it wants to be asked again."""

    def __init__(
        self,
        *,
        writer: reporting.StatusWriter,
        settings: settings.OperatorSettings,
        recorder: metrics.ConsumerMetrics | None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._writer = writer
        self._settings = settings
        self._recorder = recorder
        self._clock = clock
        self._checked: tuple[int | None, float] | None = None  # (generation, when)

    async def once(self, body: Mapping[str, Any]) -> float:
        generation = status.generation_of(body)
        interval = self._settings.topology_seconds
        if self._checked is not None:
            checked_generation, when = self._checked
            due = when + interval - self._clock()
            if checked_generation == generation and due > 0:
                return min(GENERATION_POLL_SECONDS, due)
        owner = rendering.owner_of(body)
        try:
            consumer = guardrails.admit(
                body.get("spec"), owner.namespace, self._settings.guardrails, self._settings.workers
            )
        except guardrails.Rejected:
            self._checked = (generation, self._clock())  # the reconcile handler reports it
            return GENERATION_POLL_SECONDS
        outcome: conditions.Outcome
        try:
            outcome = await check_outcome(consumer, owner_key(owner))
        except awsclients.TopologyError as error:
            outcome = conditions.TopologyUnchecked(str(error))
        try:
            written = await self._writer.report(outcome, current=body.get("status"), generation=generation)
        except kube.KubeError as error:
            logger.warning("%s: topology check not recorded: %s", owner_key(owner), error)
            return self._settings.retry_seconds
        if self._recorder is not None and written.topology is not None:
            counts: dict[tuple[str, str], int] = {}
            for finding in written.topology.findings:
                key = (finding.reason, str(finding.severity))
                counts[key] = counts.get(key, 0) + 1
            self._recorder.topology(counts)
        checked_at = self._clock()
        if isinstance(outcome, conditions.TopologyUnchecked):  # try again sooner than usual
            checked_at -= max(interval - self._settings.retry_seconds, 0.0)
        self._checked = (generation, checked_at)
        return min(GENERATION_POLL_SECONDS, interval)


class DeletionFailed(Exception):
    """Deleting the created resources failed; ``retryable`` says whether to try again."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


async def delete(body: Mapping[str, Any], *, writer: reporting.StatusWriter) -> None:
    """deletionPolicy Delete: what ``status.topology.created`` lists goes with the FanoutConsumer."""
    owner = rendering.owner_of(body)
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
        raise DeletionFailed(f"AWS resources left: {error}", retryable=error.retryable) from error
    await writer.report(
        conditions.TopologyDeleted(tuple(done)),
        current=body.get("status"),
        generation=status.generation_of(body),
    )
