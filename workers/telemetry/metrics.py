"""Every Prometheus metric a worker exports, and the bounded label values they take.

Owned here so label cardinality is reviewed in one place: ``queue`` is the queue NAME,
``sink`` the sink type, ``reason_class``/``outcome``/``clock`` small enums; never message or
conversation ids. :mod:`workers.telemetry.recorders` is the only writer; the chart's alert
rules and dashboard (helm/fanout-consumer/files/) query these names. The families live in
:class:`WorkerMetrics`, one registry per worker.
"""

from __future__ import annotations

import enum
import re
import urllib.parse

import prometheus_client

from workers import events, throttling

ReasonClass = events.ReasonClass
"""The ``reason_class`` label: why a message was retried or dead-lettered (see ``events``)."""
CircuitState = throttling.CircuitState
"""The value of ``fanout_sink_circuit_state`` (the limiter's own states)."""


class SinkOutcome(enum.StrEnum):
    """The ``outcome`` label of sink request metrics."""

    DELIVERED = "delivered"
    RETRY = "retry"
    THROTTLED = "throttled"
    REFUSED = "refused"
    PERMANENT = "permanent"
    ERROR = "error"


_PROCESSING_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
_SINK_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# Events may wait minutes to hours (retries, throttling, an outage): buckets up to a day.
_E2E_BUCKETS = (
    *(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0),
    *(3600.0, 7200.0, 21600.0, 86400.0),
)


class WorkerMetrics:
    """Every metric family of one worker, in a registry of its own.

    Not prometheus_client's global registry: a worker's ``/metrics`` serves exactly its own
    series (and the process collectors), several workers in one process (the demo, the
    tests, the benchmarks) do not add up into one another, and each starts from zero.
    ``running`` builds one per worker and hands it to the recorders and to the sink it builds.
    """

    def __init__(self, registry: prometheus_client.CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else prometheus_client.CollectorRegistry()
        self._data_path_families()
        self._sink_families()
        self._worker_families()
        prometheus_client.ProcessCollector(registry=self.registry)
        prometheus_client.PlatformCollector(registry=self.registry)
        prometheus_client.GCCollector(registry=self.registry)

    def _counter(self, name: str, documentation: str, labels: list[str]) -> prometheus_client.Counter:
        return prometheus_client.Counter(name, documentation, labels, registry=self.registry)

    def _gauge(self, name: str, documentation: str, labels: list[str]) -> prometheus_client.Gauge:
        return prometheus_client.Gauge(name, documentation, labels, registry=self.registry)

    def _histogram(
        self, name: str, documentation: str, labels: list[str], buckets: tuple[float, ...]
    ) -> prometheus_client.Histogram:
        return prometheus_client.Histogram(
            name, documentation, labels, buckets=buckets, registry=self.registry
        )

    def _data_path_families(self) -> None:
        """What happens to messages and events (``WorkerTelemetry``)."""
        self.messages_received = self._counter(
            "fanout_messages_received", "SQS messages received.", ["queue"]
        )
        self.empty_receives = self._counter(
            "fanout_empty_receives", "ReceiveMessage calls that returned nothing.", ["queue"]
        )
        self.events_delivered = self._counter(
            "fanout_events_delivered", "Events the sink accepted.", ["queue", "sink"]
        )
        self.events_filtered = self._counter(
            "fanout_events_filtered", "Events dropped by the consumer's filter.", ["queue"]
        )
        self.duplicates_suppressed = self._counter(
            "fanout_duplicates_suppressed", "Events not delivered again because already delivered.", ["queue"]
        )
        self.retries = self._counter(
            "fanout_retries", "Messages scheduled for another attempt.", ["queue", "reason_class"]
        )
        self.dead_lettered = self._counter(
            "fanout_dead_lettered", "Messages sent to the dead-letter queue.", ["queue", "reason_class"]
        )
        self.messages_deleted = self._counter(
            "fanout_messages_deleted", "Messages deleted from SQS.", ["queue"]
        )
        self.delete_failures = self._counter(
            "fanout_delete_failures", "Messages whose delete finally failed.", ["queue", "code"]
        )
        self.visibility_failures = self._counter(
            "fanout_visibility_failures",
            "Visibility changes (retry later, give back, heartbeat) that finally failed.",
            ["queue", "code"],
        )
        self.visibility_extensions = self._counter(
            "fanout_visibility_extensions", "Visibility timeout extensions of in-flight messages.", ["queue"]
        )
        self.receipt_expired = self._counter(
            "fanout_receipt_expired", "Messages whose receipt handle expired before settling.", ["queue"]
        )
        self.messages_returned = self._counter(
            "fanout_messages_returned",
            "Messages given back to SQS with visibility 0 (not processed).",
            ["queue"],
        )
        self.processing_seconds = self._histogram(
            "fanout_processing_seconds",
            "Time from receive to settle decision of one message.",
            ["queue"],
            _PROCESSING_BUCKETS,
        )
        self.sink_request_seconds = self._histogram(
            "fanout_sink_request_seconds", "Duration of one sink request.", ["sink", "outcome"], _SINK_BUCKETS
        )
        self.end_to_end_seconds = self._histogram(
            "fanout_end_to_end_seconds",
            "Delivery time minus SentTimestamp (clock=sqs_sent) or the event's own time (clock=event_time).",
            ["queue", "clock"],
            _E2E_BUCKETS,
        )
        self.in_flight = self._gauge(
            "fanout_in_flight_messages", "Messages received and not yet settled.", ["queue"]
        )
        self.active_lanes = self._gauge(
            "fanout_active_lanes", "Ordering keys (conversations) with work in progress.", ["queue"]
        )

    def _sink_families(self) -> None:
        """The sink's requests and its limiter (``SinkTelemetry``)."""
        self.sink_rate_limit = self._gauge(
            "fanout_sink_rate_limit", "Requests per second this replica may send (+Inf: unlimited).", ["sink"]
        )
        self.sink_concurrency_limit = self._gauge(
            "fanout_sink_concurrency_limit", "Concurrent requests allowed.", ["sink"]
        )
        self.sink_paused = self._gauge(
            "fanout_sink_paused", "1 while the sink is paused (e.g. quota exhausted).", ["sink"]
        )
        self.sink_circuit_state = self._gauge(
            "fanout_sink_circuit_state", "Circuit breaker: 0 closed, 1 half-open, 2 open.", ["sink"]
        )
        self.sink_requests = self._counter(
            "fanout_sink_requests", "Sink requests by outcome.", ["sink", "outcome"]
        )
        self.sink_credentials_refused = self._gauge(
            "fanout_sink_credentials_refused",
            "1 while the downstream refuses our credential (401/403/407) and no request has been "
            "accepted since.",
            ["sink"],
        )

    def _worker_families(self) -> None:
        """The worker's own health."""
        self.worker_ready = self._gauge(
            "fanout_worker_ready", "1 when the worker is polling and its sink is usable.", ["queue"]
        )
        self.task_restarts = self._counter(
            "fanout_task_restarts", "Worker tasks restarted after an unexpected error.", ["queue", "task"]
        )
        self.telemetry_errors = self._counter(
            "fanout_telemetry_errors",
            "Telemetry calls that failed (the data path went on regardless).",
            ["queue"],
        )
        self.redrive_policy_conflict = self._gauge(
            "fanout_redrive_policy_conflict",
            "1 when the source queue's RedrivePolicy maxReceiveCount leaves fewer receives than "
            "spec.retry.maxAttempts needs: SQS would dead-letter events the worker still retries.",
            ["queue"],
        )

    def exposition(self) -> bytes:
        """What ``/metrics`` answers (Prometheus' text format)."""
        return prometheus_client.generate_latest(self.registry)

    def value(self, name: str, **labels: str) -> float:
        """One sample's value now (0 when there is none): for the demo's report and the tests."""
        return self.registry.get_sample_value(name, labels) or 0.0


_CODE_RE = re.compile(r"[^A-Za-z0-9_.]")


def bounded_code(code: str) -> str:
    """An AWS error code fit for a label: safe characters, at most 64 of them."""
    return _CODE_RE.sub("_", code)[:64] or "unknown"


def queue_name(queue_url: str) -> str:
    """The queue NAME (last path segment of its URL): the ``queue`` label value."""
    path = urllib.parse.urlsplit(queue_url).path if "://" in queue_url else queue_url
    return path.rstrip("/").rsplit("/", 1)[-1] or queue_url
