"""Every Prometheus metric a worker exports, and the bounded label values they take.

Owned here so label cardinality is reviewed in one place: ``queue`` is the queue NAME,
``sink`` the sink type, ``reason_class``/``outcome``/``clock`` small enums; never message or
conversation ids. :mod:`workers.telemetry.recorders` is the only writer; the chart's alert
rules and dashboard (helm/fanout-consumer/files/) query these names.
"""

from __future__ import annotations

import enum
import re
import urllib.parse

import prometheus_client


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


class SinkOutcome(enum.StrEnum):
    """The ``outcome`` label of sink request metrics."""

    DELIVERED = "delivered"
    RETRY = "retry"
    THROTTLED = "throttled"
    REFUSED = "refused"
    PERMANENT = "permanent"
    ERROR = "error"


class CircuitState(enum.IntEnum):
    """Value of ``fanout_sink_circuit_state``."""

    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


# Child span names the runtime uses; ACK is a messaging "settle" operation.

_PROCESSING_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
_SINK_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# Events may wait minutes to hours (retries, throttling, an outage): buckets up to a day.
_E2E_BUCKETS = (
    *(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0),
    *(3600.0, 7200.0, 21600.0, 86400.0),
)

_c = prometheus_client.Counter
_g = prometheus_client.Gauge
_h = prometheus_client.Histogram

MESSAGES_RECEIVED = _c("fanout_messages_received", "SQS messages received.", ["queue"])
EMPTY_RECEIVES = _c("fanout_empty_receives", "ReceiveMessage calls that returned nothing.", ["queue"])
EVENTS_DELIVERED = _c("fanout_events_delivered", "Events the sink accepted.", ["queue", "sink"])
EVENTS_FILTERED = _c("fanout_events_filtered", "Events dropped by the consumer's filter.", ["queue"])
DUPLICATES_SUPPRESSED = _c(
    "fanout_duplicates_suppressed", "Events not delivered again because already delivered.", ["queue"]
)
RETRIES = _c("fanout_retries", "Messages scheduled for another attempt.", ["queue", "reason_class"])
DEAD_LETTERED = _c(
    "fanout_dead_lettered", "Messages sent to the dead-letter queue.", ["queue", "reason_class"]
)
MESSAGES_DELETED = _c("fanout_messages_deleted", "Messages deleted from SQS.", ["queue"])
DELETE_FAILURES = _c("fanout_delete_failures", "Messages whose delete failed.", ["queue", "code"])
VISIBILITY_EXTENSIONS = _c(
    "fanout_visibility_extensions", "Visibility timeout extensions of in-flight messages.", ["queue"]
)
RECEIPT_EXPIRED = _c(
    "fanout_receipt_expired", "Messages whose receipt handle expired before settling.", ["queue"]
)
MESSAGES_RETURNED = _c(
    "fanout_messages_returned", "Messages given back to SQS with visibility 0 (not processed).", ["queue"]
)
PROCESSING_SECONDS = _h(
    "fanout_processing_seconds",
    "Time from receive to settle decision of one message.",
    ["queue"],
    buckets=_PROCESSING_BUCKETS,
)
SINK_REQUEST_SECONDS = _h(
    "fanout_sink_request_seconds", "Duration of one sink request.", ["sink", "outcome"], buckets=_SINK_BUCKETS
)
END_TO_END_SECONDS = _h(
    "fanout_end_to_end_seconds",
    "Delivery time minus SentTimestamp (clock=sqs_sent) or the event's own time (clock=event_time).",
    ["queue", "clock"],
    buckets=_E2E_BUCKETS,
)
IN_FLIGHT = _g("fanout_in_flight_messages", "Messages received and not yet settled.", ["queue"])
ACTIVE_LANES = _g("fanout_active_lanes", "Ordering keys (conversations) with work in progress.", ["queue"])
SINK_RATE_LIMIT = _g(
    "fanout_sink_rate_limit", "Requests per second this replica may send (+Inf: unlimited).", ["sink"]
)
SINK_CONCURRENCY_LIMIT = _g("fanout_sink_concurrency_limit", "Concurrent requests allowed.", ["sink"])
SINK_PAUSED = _g("fanout_sink_paused", "1 while the sink is paused (e.g. quota exhausted).", ["sink"])
SINK_CIRCUIT_STATE = _g(
    "fanout_sink_circuit_state", "Circuit breaker: 0 closed, 1 half-open, 2 open.", ["sink"]
)
SINK_REQUESTS = _c("fanout_sink_requests", "Sink requests by outcome.", ["sink", "outcome"])
SINK_CREDENTIALS_REFUSED = _g(
    "fanout_sink_credentials_refused",
    "1 while the downstream refuses our credential (401/403/407) and no request has been accepted since.",
    ["sink"],
)
WORKER_READY = _g("fanout_worker_ready", "1 when the worker is polling and its sink is usable.", ["queue"])
TASK_RESTARTS = _c(
    "fanout_task_restarts", "Worker tasks restarted after an unexpected error.", ["queue", "task"]
)
TELEMETRY_ERRORS = _c(
    "fanout_telemetry_errors", "Telemetry calls that failed (the data path went on regardless).", ["queue"]
)
REDRIVE_POLICY_CONFLICT = _g(
    "fanout_redrive_policy_conflict",
    "1 when the source queue's RedrivePolicy maxReceiveCount leaves fewer receives than "
    "spec.retry.maxAttempts needs: SQS would dead-letter events the worker still retries.",
    ["queue"],
)

_CODE_RE = re.compile(r"[^A-Za-z0-9_.]")


def bounded_code(code: str) -> str:
    """An AWS error code fit for a label: safe characters, at most 64 of them."""
    return _CODE_RE.sub("_", code)[:64] or "unknown"


def queue_name(queue_url: str) -> str:
    """The queue NAME (last path segment of its URL): the ``queue`` label value."""
    path = urllib.parse.urlsplit(queue_url).path if "://" in queue_url else queue_url
    return path.rstrip("/").rsplit("/", 1)[-1] or queue_url
