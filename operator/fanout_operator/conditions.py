"""What the status says after something happened to a FanoutConsumer, and which Events go with it. Pure.

Every status change goes through :func:`apply`: it takes the status as last written and one
*outcome*, and returns the new status and the Events to post. ``reporting.StatusWriter`` is the
only caller (it does the writing); everything else describes what happened as an outcome:

======================  ===========================================================================
outcome                 who reports it
======================  ===========================================================================
:class:`Rejected`       ``handlers``: the spec is invalid or outside the guardrails
:class:`Reconciled`     ``handlers`` (create / update / resume) and ``resyncing`` (drift repaired)
:class:`Blind`          ``autoscaling``: the queue or the cluster could not be read; replicas held
:class:`Polled`         ``autoscaling``: one scaling round went through
:class:`TopologyChecked`  ``topology``: the AWS topology was checked (and provisioned, if asked)
:class:`TopologyUnchecked`  ``topology``: AWS could not be asked (throttled, down, no credentials)
:class:`TopologyDeleted`  ``topology``: deletionPolicy Delete removed what the operator created
======================  ===========================================================================

The conditions (``kubectl describe`` shows them; ``Ready`` is a printer column):

- ``Ready``: True while the queue is read and the children are in line with the spec; False
  with the reason that stops it (``InvalidSpec``, ``QueueNotFound``, ``KubernetesError``, ...).
- ``Scaling``: True when the last round changed the fleet size; its reason is what shaped the
  decision (``scaling.Limit``), its message the decision's reason.
- ``Degraded``: True with the cause while something is wrong; False otherwise.
- ``TopologyReady``: True (``Verified``) when the last check of the AWS topology found nothing;
  False with the most severe finding's reason (every finding with its fix in the message and in
  ``status.topology.findings``); Unknown when only unreadable parts remain (``ReadDenied``) or
  AWS could not be asked (``TopologyCheckFailed``, the last findings kept).

Events: a Warning when a degradation starts or changes cause (not at every failed round), a
Normal ``ScaledUp`` / ``ScaledDown`` when the fleet is resized, a Normal ``DriftRepaired`` when a
resync put back children someone deleted or edited; a Warning per topology finding the previous
check did not have (its reason, the resource, the fix), a Normal ``TopologyProvisioned`` saying
what provisioning changed, a Normal ``TopologyDeleted``.

A new condition is a new outcome here and one more branch of :func:`apply`; nothing else
writes conditions.
"""

from __future__ import annotations

import dataclasses

from fanout_operator import status

INVALID_SPEC = "InvalidSpec"
DRIFT_REPAIRED = "DriftRepaired"


@dataclasses.dataclass(frozen=True)
class Rejected:
    message: str


@dataclasses.dataclass(frozen=True)
class Reconciled:
    queue: str
    selector: str
    replicas: int
    # Children put back by a resync (deleted or edited by hand); empty after a spec change.
    repaired: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Blind:
    reason: str
    message: str
    memory: status.ScalerMemory


@dataclasses.dataclass(frozen=True)
class Polled:
    queue: str
    selector: str
    previous_replicas: int
    replicas: int
    desired_replicas: int
    ready_replicas: int
    backlog: status.Backlog
    limit: str
    reason: str
    memory: status.ScalerMemory


@dataclasses.dataclass(frozen=True)
class TopologyChecked:
    findings: tuple[status.TopologyFinding, ...]
    # What provisioning created (or found carrying this consumer's owner tag) and what it changed.
    created: tuple[status.TopologyResource, ...] = ()
    changes: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class TopologyUnchecked:
    message: str


@dataclasses.dataclass(frozen=True)
class TopologyDeleted:
    deleted: tuple[str, ...]


Outcome = Rejected | Reconciled | Blind | Polled | TopologyChecked | TopologyUnchecked | TopologyDeleted

TOPOLOGY_VERIFIED = "Verified"
TOPOLOGY_CHECK_FAILED = "TopologyCheckFailed"
TOPOLOGY_PROVISIONED = "TopologyProvisioned"
TOPOLOGY_DELETED = "TopologyDeleted"
_SEVERITIES = ("error", "warning", "unknown")
_TOPOLOGY_MESSAGE_LIMIT = 8_000


@dataclasses.dataclass(frozen=True)
class Note:
    """An Event to post about the FanoutConsumer."""

    reason: str
    message: str
    warning: bool = False


@dataclasses.dataclass(frozen=True)
class Report:
    status: status.FanoutConsumerStatus
    events: tuple[Note, ...]


class _Conditions:
    """Condition edits at one moment, for one generation."""

    def __init__(self, current: list[status.Condition], now: float, generation: int | None) -> None:
        self.items = current
        self._now = now
        self._generation = generation

    def set(self, kind: status.ConditionType, state: bool | None, reason: str, message: str = "") -> None:
        self.items = status.set_condition(
            self.items, kind, state, reason, message, now=self._now, generation=self._generation
        )


def _degradation_starts(previous: status.FanoutConsumerStatus, reason: str, message: str | None) -> bool:
    """Whether Degraded turns True with this cause now (message compared when given)."""
    degraded = status.condition(previous, status.ConditionType.DEGRADED)
    if degraded is None or degraded.status != "True" or degraded.reason != reason:
        return True
    return message is not None and degraded.message != message


def _rejected(
    previous: status.FanoutConsumerStatus, outcome: Rejected, now: float, generation: int | None
) -> Report:
    conditions = _Conditions(previous.conditions, now, generation)
    conditions.set(status.ConditionType.DEGRADED, True, INVALID_SPEC, outcome.message)
    conditions.set(status.ConditionType.READY, False, INVALID_SPEC, outcome.message)
    new = previous.model_copy(update={"conditions": conditions.items, "observed_generation": generation})
    starts = _degradation_starts(previous, INVALID_SPEC, outcome.message)
    events = (Note(INVALID_SPEC, outcome.message, warning=True),) if starts else ()
    return Report(new, events)


def _reconciled(
    previous: status.FanoutConsumerStatus, outcome: Reconciled, now: float, generation: int | None
) -> Report:
    conditions = _Conditions(previous.conditions, now, generation)
    degraded = status.condition(previous, status.ConditionType.DEGRADED)
    # A queue that cannot be read stays Degraded: only the scaling loop can tell it is back.
    if degraded is None or degraded.reason == INVALID_SPEC:
        conditions.set(status.ConditionType.DEGRADED, False, "Reconciled")
    ready = status.condition(previous, status.ConditionType.READY)
    if ready is not None and ready.reason == INVALID_SPEC:
        conditions.set(
            status.ConditionType.READY, False, "Reconciled", "children created; waiting for a queue reading"
        )
    new = previous.model_copy(
        update={
            "observed_generation": generation,
            "queue": outcome.queue,
            "selector": outcome.selector,
            "replicas": outcome.replicas,
            "conditions": conditions.items,
        }
    )
    events: tuple[Note, ...] = ()
    if outcome.repaired:
        message = f"put back {', '.join(outcome.repaired)} (deleted or edited outside the spec)"
        events = (Note(DRIFT_REPAIRED, message),)
    return Report(new, events)


def _blind(
    previous: status.FanoutConsumerStatus, outcome: Blind, now: float, generation: int | None
) -> Report:
    conditions = _Conditions(previous.conditions, now, generation)
    conditions.set(status.ConditionType.DEGRADED, True, outcome.reason, outcome.message)
    conditions.set(status.ConditionType.READY, False, outcome.reason, outcome.message)
    new = previous.model_copy(
        update={
            "conditions": conditions.items,
            "last_poll_time": status.rfc3339(now),
            "scaler": outcome.memory,
        }
    )
    starts = _degradation_starts(previous, outcome.reason, None)
    events = (Note(outcome.reason, outcome.message, warning=True),) if starts else ()
    return Report(new, events)


def _polled(
    previous: status.FanoutConsumerStatus, outcome: Polled, now: float, generation: int | None
) -> Report:
    changed = outcome.replicas != outcome.previous_replicas
    conditions = _Conditions(previous.conditions, now, generation)
    conditions.set(status.ConditionType.READY, True, "Polling", "queue readable, children reconciled")
    conditions.set(status.ConditionType.SCALING, changed, outcome.limit, outcome.reason)
    conditions.set(status.ConditionType.DEGRADED, False, "Healthy")
    new = previous.model_copy(
        update={
            "queue": outcome.queue,
            "replicas": outcome.replicas,
            "desired_replicas": outcome.desired_replicas,
            "ready_replicas": outcome.ready_replicas,
            "selector": outcome.selector,
            "backlog": outcome.backlog,
            "last_poll_time": status.rfc3339(now),
            "last_scale_time": status.rfc3339(now) if changed else previous.last_scale_time,
            "reason": outcome.reason,
            "conditions": conditions.items,
            "scaler": outcome.memory,
        }
    )
    events: tuple[Note, ...] = ()
    if changed:
        direction = "ScaledUp" if outcome.replicas > outcome.previous_replicas else "ScaledDown"
        events = (Note(direction, outcome.reason),)
    return Report(new, events)


def _topology_checked(
    previous: status.FanoutConsumerStatus, outcome: TopologyChecked, now: float, generation: int | None
) -> Report:
    before = previous.topology
    seen = {(f.reason, f.resource) for f in before.findings} if before else set()
    created = list(before.created) if before else []
    created += [resource for resource in outcome.created if resource not in created]
    topology = status.TopologyStatus(
        checked_at=status.rfc3339(now), findings=list(outcome.findings), created=created
    )
    worst = next((s for s in _SEVERITIES if any(f.severity == s for f in outcome.findings)), None)
    conditions = _Conditions(previous.conditions, now, generation)
    if worst is None:
        conditions.set(
            status.ConditionType.TOPOLOGY_READY,
            True,
            TOPOLOGY_VERIFIED,
            "queue, dead-letter queue, policies, subscription and table checked: no problem",
        )
    else:
        first = next(f for f in outcome.findings if f.severity == worst)
        message = "\n".join(f"{f.reason}: {f.message} Fix: {f.fix}" for f in outcome.findings)
        state = None if worst == "unknown" else False
        conditions.set(
            status.ConditionType.TOPOLOGY_READY, state, first.reason, message[:_TOPOLOGY_MESSAGE_LIMIT]
        )
    events = [
        Note(f.reason, f"{f.resource}: {f.message} Fix: {f.fix}", warning=True)
        for f in outcome.findings
        if (f.reason, f.resource) not in seen
    ]
    if outcome.changes:
        events.append(Note(TOPOLOGY_PROVISIONED, "; ".join(outcome.changes)))
    new = previous.model_copy(update={"conditions": conditions.items, "topology": topology})
    return Report(new, tuple(events))


def _topology_unchecked(
    previous: status.FanoutConsumerStatus, outcome: TopologyUnchecked, now: float, generation: int | None
) -> Report:
    conditions = _Conditions(previous.conditions, now, generation)
    message = f"the topology could not be checked: {outcome.message}"[:_TOPOLOGY_MESSAGE_LIMIT]
    conditions.set(status.ConditionType.TOPOLOGY_READY, None, TOPOLOGY_CHECK_FAILED, message)
    return Report(previous.model_copy(update={"conditions": conditions.items}), ())


def _topology_deleted(previous: status.FanoutConsumerStatus, outcome: TopologyDeleted) -> Report:
    kept = previous.topology or status.TopologyStatus()
    new = previous.model_copy(update={"topology": kept.model_copy(update={"created": []})})
    events = (Note(TOPOLOGY_DELETED, "; ".join(outcome.deleted)),) if outcome.deleted else ()
    return Report(new, events)


def apply(
    previous: status.FanoutConsumerStatus, outcome: Outcome, *, now: float, generation: int | None
) -> Report:
    """The status after ``outcome``, and the Events to post about it."""
    if isinstance(outcome, TopologyChecked):
        return _topology_checked(previous, outcome, now, generation)
    if isinstance(outcome, TopologyUnchecked):
        return _topology_unchecked(previous, outcome, now, generation)
    if isinstance(outcome, TopologyDeleted):
        return _topology_deleted(previous, outcome)
    if isinstance(outcome, Rejected):
        return _rejected(previous, outcome, now, generation)
    if isinstance(outcome, Reconciled):
        return _reconciled(previous, outcome, now, generation)
    if isinstance(outcome, Blind):
        return _blind(previous, outcome, now, generation)
    return _polled(previous, outcome, now, generation)
