"""Every metric and state log line of the front door, in one place.

``serving`` and ``publishing`` call one method per thing that happened; the method bumps
the metric and, for refusals and failures, writes one JSON log line with identifiers only
(never a payload, a header or a signature). Metrics are served on ``/metrics``
(docs/contracts.md lists them). Nothing here raises into, blocks or changes the request
path: a failing recorder is logged once and forgotten.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

import prometheus_client

log = logging.getLogger("fanout.ingest")

_P = ParamSpec("_P")
_R = TypeVar("_R")

STORE_ERROR_LOG_SECONDS = 60.0
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

REQUESTS = prometheus_client.Counter(
    "fanout_ingest_requests_total", "Requests answered, by source and status code.", ["source", "code"]
)
REFUSALS = prometheus_client.Counter(
    "fanout_ingest_refusals_total",
    "Requests not accepted, by reason (signature, not_an_event, too_large, saturated, publish_failed, "
    "timeout, draining).",
    ["source", "reason"],
)
REQUEST_SECONDS = prometheus_client.Histogram(
    "fanout_ingest_request_seconds",
    "Request received → answered.",
    ["source"],
    buckets=_LATENCY_BUCKETS,
)
EVENTS_PUBLISHED = prometheus_client.Counter(
    "fanout_ingest_events_published_total", "Events SNS accepted.", ["source"]
)
EVENTS_OFFLOADED = prometheus_client.Counter(
    "fanout_ingest_events_offloaded_total",
    "Events too large for SNS, stored in S3 and published as pointers.",
)
OFFLOADED_BYTES = prometheus_client.Counter(
    "fanout_ingest_offloaded_bytes_total", "Bytes stored in S3 for offloaded events."
)
PUBLISH_CALLS = prometheus_client.Counter("fanout_ingest_publish_calls_total", "PublishBatch calls.")
BATCH_SIZE = prometheus_client.Histogram(
    "fanout_ingest_publish_batch_entries",
    "Entries per PublishBatch call.",
    buckets=(1, 2, 3, 4, 5, 6, 7, 8, 9, 10),
)
CALL_SECONDS = prometheus_client.Histogram(
    "fanout_ingest_publish_call_seconds", "One PublishBatch call.", buckets=_LATENCY_BUCKETS
)
WAITING = prometheus_client.Gauge("fanout_ingest_waiting_events", "Events waiting for a PublishBatch call.")
AWS_ERRORS = prometheus_client.Counter(
    "fanout_ingest_aws_errors_total",
    "Failed SNS calls or entries and S3 puts, by error code.",
    ["service", "code"],
)
READY = prometheus_client.Gauge("fanout_ingest_ready", "1 while the gateway takes requests.")
DUPLICATES = prometheus_client.Counter(
    "fanout_ingest_duplicates_total",
    "Events accepted without a second publish: already in SNS (a retry), or repeated in one request.",
    ["source"],
)
IDEMPOTENCY_ERRORS = prometheus_client.Counter(
    "fanout_ingest_idempotency_errors_total",
    "Idempotency store calls that failed, by operation (claim, complete, release); events are "
    "published anyway.",
    ["operation"],
)


def _observer(method: Callable[_P, _R]) -> Callable[_P, _R | None]:
    """Telemetry observes: an exception in a recorder is logged, never raised."""

    @functools.wraps(method)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R | None:
        try:
            return method(*args, **kwargs)
        except Exception:  # pragma: no cover - a recorder bug must not fail a request
            log.exception("telemetry recorder %s failed", method.__name__)
            return None

    return wrapper


class IngestTelemetry:
    """The recorders the gateway calls."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._last_store_log: float | None = None
        self._store_errors = 0

    @_observer
    def answered(self, source: str, code: int, seconds: float, published: int, duplicates: int = 0) -> None:
        REQUESTS.labels(source, str(code)).inc()
        REQUEST_SECONDS.labels(source).observe(seconds)
        if code == 202 and published:
            EVENTS_PUBLISHED.labels(source).inc(published)
        if code == 202 and duplicates:
            DUPLICATES.labels(source).inc(duplicates)

    @_observer
    def refused(self, source: str, reason: str, code: int, **fields: Any) -> None:
        REFUSALS.labels(source, reason).inc()
        level = logging.WARNING if code >= 500 else logging.INFO
        if log.isEnabledFor(level):
            log.log(level, "refused", extra={"source": source, "reason": reason, "code": code, **fields})

    @_observer
    def offloaded(self, size: int) -> None:
        EVENTS_OFFLOADED.inc()
        OFFLOADED_BYTES.inc(size)

    @_observer
    def publish_call(self, entries: int, seconds: float) -> None:
        PUBLISH_CALLS.inc()
        BATCH_SIZE.observe(entries)
        CALL_SECONDS.observe(seconds)

    @_observer
    def set_waiting(self, count: int) -> None:
        WAITING.set(count)

    @_observer
    def aws_error(self, service: str, code: str) -> None:
        AWS_ERRORS.labels(service, code or "unknown").inc()

    @_observer
    def idempotency_error(self, operation: str, error: Exception) -> None:
        IDEMPOTENCY_ERRORS.labels(operation).inc()
        # A store that is down fails every event: one line a minute says so, with the count.
        self._store_errors += 1
        now = self._clock()
        if self._last_store_log is None or now - self._last_store_log >= STORE_ERROR_LOG_SECONDS:
            log.warning(
                "idempotency store failed; events are published without deduplication",
                extra={"operation": operation, "error": str(error), "count": self._store_errors},
            )
            self._last_store_log, self._store_errors = now, 0

    @_observer
    def set_ready(self, ready: bool) -> None:
        READY.set(1 if ready else 0)
