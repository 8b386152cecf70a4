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
======================  ===========================================================================

The conditions (``kubectl describe`` shows them; ``Ready`` is a printer column):

- ``Ready``: True while the queue is read and the children are in line with the spec; False
  with the reason that stops it (``InvalidSpec``, ``QueueNotFound``, ``KubernetesError``, ...).
- ``Scaling``: True when the last round changed the fleet size; its reason is what shaped the
  decision (``scaling.Limit``), its message the decision's reason.
- ``Degraded``: True with the cause while something is wrong; False otherwise.

Events: a Warning when a degradation starts or changes cause (not at every failed round), a
Normal ``ScaledUp`` / ``ScaledDown`` when the fleet is resized, a Normal ``DriftRepaired`` when a
resync put back children someone deleted or edited.

A new condition (for example one from checking the AWS topology) is a new outcome here and one
more branch of :func:`apply`; nothing else writes conditions.
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


Outcome = Rejected | Reconciled | Blind | Polled


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

    def set(self, kind: status.ConditionType, state: bool, reason: str, message: str = "") -> None:
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


def apply(
    previous: status.FanoutConsumerStatus, outcome: Outcome, *, now: float, generation: int | None
) -> Report:
    """The status after ``outcome``, and the Events to post about it."""
    if isinstance(outcome, Rejected):
        return _rejected(previous, outcome, now, generation)
    if isinstance(outcome, Reconciled):
        return _reconciled(previous, outcome, now, generation)
    if isinstance(outcome, Blind):
        return _blind(previous, outcome, now, generation)
    return _polled(previous, outcome, now, generation)
