"""The ``status`` of a FanoutConsumer, as one pydantic model.

The operator writes it (``reporting.StatusWriter``, from what ``conditions`` computes),
``kubectl get`` prints parts of it (the CRD's printer columns, built by ``crd`` from this
model), and the scale subresource reads ``replicas`` and ``selector`` from it. It also carries
the scaler's memory (``scaler``) so an operator restart, or a peer taking over, continues the
stabilization window and the cooldown instead of starting them again: the scaling loop's state
lives with the object it describes.

Field names are camelCase on the wire, like the spec's. Times are RFC 3339 strings, except the
scaler's memory, which holds epoch seconds because only the scaling code reads it.
"""

from __future__ import annotations

import datetime
import enum
from collections.abc import Mapping
from typing import Any, Literal

import pydantic
import pydantic.alias_generators


class StatusModel(pydantic.BaseModel):
    """Base of the status models: camelCase aliases; unknown fields are ignored when reading."""

    model_config = pydantic.ConfigDict(
        alias_generator=pydantic.alias_generators.to_camel,
        populate_by_name=True,
        extra="ignore",
    )


class ConditionType(enum.StrEnum):
    READY = "Ready"
    SCALING = "Scaling"
    DEGRADED = "Degraded"
    TOPOLOGY_READY = "TopologyReady"


class Condition(StatusModel):
    """A Kubernetes-style condition (metav1.Condition)."""

    type: ConditionType
    status: Literal["True", "False", "Unknown"]
    reason: str = pydantic.Field(description="CamelCase machine-readable reason.")
    message: str = ""
    last_transition_time: str | None = None
    observed_generation: int | None = None


class Backlog(StatusModel):
    """Queue depth as last read (ApproximateNumberOf...)."""

    visible: int = 0
    in_flight: int = pydantic.Field(0, description="ApproximateNumberOfMessagesNotVisible.")
    delayed: int = pydantic.Field(
        0,
        description="ApproximateNumberOfMessagesDelayed: keeps the fleet from scaling to zero and "
        "wakes it from zero, but does not size it.",
    )
    total: int = pydantic.Field(0, description="visible + inFlight: what the scaler sizes for.")


class RecommendationRecord(StatusModel):
    """One past recommendation inside the scale-down stabilization window."""

    at: float = pydantic.Field(description="Epoch seconds.")
    replicas: int


class ScalerMemory(StatusModel):
    """What the scaling function carries from one poll to the next."""

    empty_since: float | None = pydantic.Field(None, description="Epoch seconds the queue became empty.")
    recommendations: list[RecommendationRecord] = pydantic.Field(default_factory=list)
    consecutive_failures: int = pydantic.Field(0, description="Failed queue reads in a row (backoff).")
    per_replica_throughput: float | None = pydantic.Field(
        None, description="Last measured requests/s one replica can send (for the sink cap)."
    )


class TopologyFinding(StatusModel):
    """One problem of the consumer's AWS topology (fanout_core.findings)."""

    reason: str
    severity: Literal["error", "warning", "unknown"]
    resource: str
    message: str
    fix: str


class TopologyResource(StatusModel):
    """An AWS resource the operator created for this consumer (what deletionPolicy Delete removes)."""

    kind: Literal["queue", "subscription", "table"]
    id: str = pydantic.Field(description="Queue URL, subscription ARN or table name.")


class TopologyStatus(StatusModel):
    """The last check of the consumer's AWS topology."""

    checked_at: str | None = None
    findings: list[TopologyFinding] = pydantic.Field(default_factory=list)
    created: list[TopologyResource] = pydantic.Field(default_factory=list)


class RedriveState(enum.StrEnum):
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    INCOMPLETE = "Incomplete"
    FAILED = "Failed"
    INVALID = "Invalid"


class RedriveStatus(StatusModel):
    """The last declarative redrive request and what became of it (``redrive_requests``)."""

    request: str = pydantic.Field(description="The request's id (or a hash of its text).")
    state: RedriveState
    selection: str | None = None
    dry_run: bool = False
    rate: float | None = pydantic.Field(None, description="Messages per second.")
    rate_why: str | None = None
    moved: int = pydantic.Field(0, description="Back in the source queue (dry run: would be).")
    skipped: int = pydantic.Field(0, description="Not selected: still in the dead-letter queue.")
    held: int = pydantic.Field(
        0, description="Selected, but behind a message of their FIFO group that stays."
    )
    failed: int = pydantic.Field(0, description="Copies the source queue refused: still in the DLQ.")
    started_at: str | None = None
    finished_at: str | None = None
    message: str | None = None
    refused: str | None = pydantic.Field(None, description="The last request refused while one ran.")


class FanoutConsumerStatus(StatusModel):
    """status of a FanoutConsumer."""

    observed_generation: int | None = None
    queue: str | None = pydantic.Field(None, description="Queue name (last segment of the URL).")
    replicas: int = pydantic.Field(0, description="Replicas the Deployment is scaled to.")
    desired_replicas: int | None = pydantic.Field(None, description="The scaler's last decision.")
    ready_replicas: int | None = None
    selector: str | None = pydantic.Field(None, description="Label selector of the worker pods.")
    backlog: Backlog | None = None
    last_poll_time: str | None = None
    last_scale_time: str | None = None
    reason: str | None = pydantic.Field(None, description="Why the last decision was taken.")
    conditions: list[Condition] = pydantic.Field(default_factory=list)
    scaler: ScalerMemory | None = None
    topology: TopologyStatus | None = None
    redrive: RedriveStatus | None = pydantic.Field(
        None, description="The last declarative redrive (annotation fanout.dev/redrive-request)."
    )


def generation_of(body: Mapping[str, Any]) -> int | None:
    """The object's ``metadata.generation``: what ``observedGeneration`` records."""
    generation = body.get("metadata", {}).get("generation")
    return int(generation) if generation is not None else None


def rfc3339(epoch_seconds: float) -> str:
    """Kubernetes' time format: UTC, second precision, Z suffix."""
    moment = datetime.datetime.fromtimestamp(epoch_seconds, tz=datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse(raw: object) -> FanoutConsumerStatus:
    """Read the status off an object; anything unreadable yields an empty status."""
    if not isinstance(raw, dict):
        return FanoutConsumerStatus()
    try:
        return FanoutConsumerStatus.model_validate(raw)
    except pydantic.ValidationError:
        return FanoutConsumerStatus()


def dump(status: FanoutConsumerStatus) -> dict[str, object]:
    """The status as wire data, without unset fields."""
    return status.model_dump(mode="json", by_alias=True, exclude_none=True)


_WRITTEN_ELSEWHERE = {"redrive"}


def merge_patch(status: FanoutConsumerStatus) -> dict[str, object]:
    """The JSON merge patch that makes the server's status exactly ``status``.

    Unset fields are sent as ``null``, which a merge patch reads as "remove": leaving them out
    would keep the server's old value (a stale ``scaler.emptySince`` would come back on the next
    read and start a scale-to-zero cooldown that never happened).

    ``redrive`` is never part of it: only ``redrives`` writes that field (its own merge patch),
    so a status written from an older copy can neither undo a redrive's progress nor remove it.
    """
    full = status.model_dump(mode="json", by_alias=True, exclude=_WRITTEN_ELSEWHERE)
    lean = status.model_dump(mode="json", by_alias=True, exclude_none=True, exclude=_WRITTEN_ELSEWHERE)
    return {"status": _with_removals(full, lean)}


def _with_removals(full: dict[str, object], lean: dict[str, object]) -> dict[str, object]:
    """``lean`` plus ``None`` for every map key ``full`` holds as ``None`` (lists kept lean)."""
    result = dict(lean)
    for key, value in full.items():
        if key not in lean:
            result[key] = None
        elif isinstance(value, dict) and isinstance(lean[key], dict):
            result[key] = _with_removals(value, lean[key])  # type: ignore[arg-type]
    return result


def set_condition(
    conditions: list[Condition],
    kind: ConditionType,
    state: bool | None,
    reason: str,
    message: str,
    *,
    now: float,
    generation: int | None,
) -> list[Condition]:
    """``conditions`` with ``kind`` set (``None``: Unknown); lastTransitionTime moves only when
    the status flips."""
    value: Literal["True", "False", "Unknown"] = "Unknown" if state is None else "True" if state else "False"
    previous = next((c for c in conditions if c.type == kind), None)
    transition = (
        previous.last_transition_time
        if previous is not None and previous.status == value and previous.last_transition_time
        else rfc3339(now)
    )
    updated = Condition(
        type=kind,
        status=value,
        reason=reason,
        message=message,
        last_transition_time=transition,
        observed_generation=generation,
    )
    others = [c for c in conditions if c.type != kind]
    return sorted([*others, updated], key=lambda c: list(ConditionType).index(c.type))


def condition(current: FanoutConsumerStatus, kind: ConditionType) -> Condition | None:
    return next((c for c in current.conditions if c.type == kind), None)
