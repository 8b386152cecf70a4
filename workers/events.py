"""The values that travel the data path: identifiers, decoded events, sink outcomes.

``envelopes`` makes :class:`Event` from message bytes; every later stage reads it.
A sink answers each delivery with one :data:`Outcome`; ``processing`` turns that answer
into an SQS action (delete, change visibility, dead-letter) or, when the failure is the
sink's rather than the event's (a refused credential, throttling, an open circuit), keeps
the message and tries again once the sink takes work. Nothing here does I/O.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from typing import Any, NewType

from fanout_core import keying

QueueUrl = NewType("QueueUrl", str)
ReceiptHandle = NewType("ReceiptHandle", str)
MessageId = NewType("MessageId", str)
EventId = keying.EventId
"""Derived from the payload (``fanout_core.keying``), shared with the front door."""


class EnvelopeKind(enum.StrEnum):
    """How the event reached the queue."""

    RAW = "raw"
    SNS = "sns"
    EVENTBRIDGE = "eventbridge"
    SNS_EVENTBRIDGE = "sns+eventbridge"


@dataclasses.dataclass(frozen=True, slots=True)
class Event:
    """One decoded event, its envelopes removed.

    ``event_id`` is derived from the payload (Genesys ``metadata.CorrelationId``, else a
    stable hash of topic + body), never from an envelope id: redeliveries get new
    envelope ids and must still deduplicate. ``payload`` is what a sink delivers.
    """

    event_id: EventId
    event_type: str
    payload: Mapping[str, Any]
    ordering_key: str | None = None
    event_time_ms: int | None = None
    topic: str | None = None
    envelope: EnvelopeKind = EnvelopeKind.RAW
    attributes: Mapping[str, str] = dataclasses.field(default_factory=dict)


class ReasonClass(enum.StrEnum):
    """Why a message was retried or dead-lettered; a bounded label value.

    Dead-lettered: ``poison``, ``permanent``, ``exhausted``. Retried: ``transient`` (the
    event's own failure: it counts as an attempt), and the sink-wide ones, which never
    count — ``throttled`` (429/503, Retry-After), ``refused`` (our credential),
    ``circuit_open`` (the sink failed for everyone), ``in_progress`` (another replica
    holds the event's claim) and ``store_unavailable`` (the idempotency store could not
    be asked).
    """

    POISON = "poison"
    PERMANENT = "permanent"
    EXHAUSTED = "exhausted"
    TRANSIENT = "transient"
    THROTTLED = "throttled"
    REFUSED = "refused"
    CIRCUIT_OPEN = "circuit_open"
    IN_PROGRESS = "in_progress"
    STORE_UNAVAILABLE = "store_unavailable"


@dataclasses.dataclass(frozen=True, slots=True)
class Delivered:
    """The downstream accepted the event (2xx or its equivalent)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Retry:
    """Try again later: after ``delay_seconds`` when the downstream said (Retry-After),
    else after the retry policy's backoff. ``throttled`` marks a rate-limit answer."""

    reason: str
    delay_seconds: float | None = None
    throttled: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class Refused:
    """The downstream refused OUR credential (HTTP 401/403/407, a HEC token error, a CRM
    session still invalid after a refresh).

    A failure of the sink, not of the event: the event is never dead-lettered for it and no
    attempt is counted. The sink's circuit opens, the pollers stop, and the event is tried
    again once a probe with the re-read credential gets through.
    """

    reason: str


@dataclasses.dataclass(frozen=True, slots=True)
class NotSent:
    """The event was not sent: when its turn came, its admission (the idempotency claim)
    said no — already delivered, or being delivered elsewhere, or the store failed."""


@dataclasses.dataclass(frozen=True, slots=True)
class Permanent:
    """The downstream will never accept this event; dead-letter it with ``reason``."""

    reason: str


Outcome = Delivered | Retry | Refused | Permanent | NotSent
