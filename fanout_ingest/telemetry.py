"""Every metric and state log line of the front door, in one place.

``serving`` and ``publishing`` call one method per thing that happened; the method bumps
the metric and, for refusals and failures, writes one JSON log line with identifiers only
(never a payload, a header or a signature). Metrics live in :class:`IngestMetrics`, a
registry per gateway, served on ``/metrics`` (docs/contracts.md lists them). Nothing here
raises into, blocks or changes the request path: a failing recorder is logged once and
forgotten.
"""

from __future__ import annotations

import dataclasses
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


class IngestMetrics:
    """Every metric family of one gateway, in a registry of its own (as each worker has): its
    ``/metrics`` serves exactly its own series and the process collectors, and two gateways in
    one process (the demo, the tests) count apart."""

    def __init__(self, registry: prometheus_client.CollectorRegistry | None = None) -> None:
        self.registry = r = registry if registry is not None else prometheus_client.CollectorRegistry()
        self.requests = prometheus_client.Counter(
            "fanout_ingest_requests_total",
            "Requests answered, by source and status code.",
            ["source", "code"],
            registry=r,
        )
        self.refusals = prometheus_client.Counter(
            "fanout_ingest_refusals_total",
            "Requests not accepted, by reason (signature, not_an_event, too_large, saturated, "
            "publish_failed, timeout, draining).",
            ["source", "reason"],
            registry=r,
        )
        self.request_seconds = prometheus_client.Histogram(
            "fanout_ingest_request_seconds",
            "Request received → answered.",
            ["source"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.events_published = prometheus_client.Counter(
            "fanout_ingest_events_published_total", "Events SNS accepted.", ["source"], registry=r
        )
        self.events_offloaded = prometheus_client.Counter(
            "fanout_ingest_events_offloaded_total",
            "Events too large for SNS, stored in S3 and published as pointers.",
            registry=r,
        )
        self.offloaded_bytes = prometheus_client.Counter(
            "fanout_ingest_offloaded_bytes_total", "Bytes stored in S3 for offloaded events.", registry=r
        )
        self.publish_calls = prometheus_client.Counter(
            "fanout_ingest_publish_calls_total", "PublishBatch calls.", registry=r
        )
        self.batch_size = prometheus_client.Histogram(
            "fanout_ingest_publish_batch_entries",
            "Entries per PublishBatch call.",
            buckets=(1, 2, 3, 4, 5, 6, 7, 8, 9, 10),
            registry=r,
        )
        self.call_seconds = prometheus_client.Histogram(
            "fanout_ingest_publish_call_seconds",
            "One PublishBatch call.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.waiting = prometheus_client.Gauge(
            "fanout_ingest_waiting_events", "Events waiting for a PublishBatch call.", registry=r
        )
        self.aws_errors = prometheus_client.Counter(
            "fanout_ingest_aws_errors_total",
            "Failed SNS calls or entries and S3 puts, by error code.",
            ["service", "code"],
            registry=r,
        )
        self.ready = prometheus_client.Gauge(
            "fanout_ingest_ready", "1 while the gateway takes requests.", registry=r
        )
        self.duplicates = prometheus_client.Counter(
            "fanout_ingest_duplicates_total",
            "Events accepted without a second publish: already in SNS (a retry), or repeated in one request.",
            ["source"],
            registry=r,
        )
        self.idempotency_errors = prometheus_client.Counter(
            "fanout_ingest_idempotency_errors_total",
            "Idempotency store calls that failed, by operation (claim, complete, release); events are "
            "published anyway.",
            ["operation"],
            registry=r,
        )
        prometheus_client.ProcessCollector(registry=r)
        prometheus_client.PlatformCollector(registry=r)
        prometheus_client.GCCollector(registry=r)


@dataclasses.dataclass(frozen=True, slots=True)
class _Answered:
    """The series one kind of answer moves, bound once (a ``labels()`` lookup per request is
    a measurable part of a request's own CPU)."""

    requests: Any
    seconds: Any
    published: Any
    duplicates: Any


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

    def __init__(
        self, clock: Callable[[], float] = time.monotonic, metrics: IngestMetrics | None = None
    ) -> None:
        self.metrics = metrics if metrics is not None else IngestMetrics()
        self._clock = clock
        self._answered: dict[tuple[str, int], _Answered] = {}
        self._last_store_log: float | None = None
        self._store_errors = 0

    @_observer
    def answered(self, source: str, code: int, seconds: float, published: int, duplicates: int = 0) -> None:
        series = self._answered.get((source, code))
        if series is None:
            series = self._answered[source, code] = self._bind(source, code)
        series.requests.inc()
        series.seconds.observe(seconds)
        if code == 202 and published:
            series.published.inc(published)
        if code == 202 and duplicates:
            series.duplicates.inc(duplicates)

    def _bind(self, source: str, code: int) -> _Answered:
        metrics = self.metrics
        return _Answered(
            requests=metrics.requests.labels(source, str(code)),
            seconds=metrics.request_seconds.labels(source),
            published=metrics.events_published.labels(source),
            duplicates=metrics.duplicates.labels(source),
        )

    @_observer
    def refused(self, source: str, reason: str, code: int, **fields: Any) -> None:
        self.metrics.refusals.labels(source, reason).inc()
        level = logging.WARNING if code >= 500 else logging.INFO
        if log.isEnabledFor(level):
            log.log(level, "refused", extra={"source": source, "reason": reason, "code": code, **fields})

    @_observer
    def offloaded(self, size: int) -> None:
        self.metrics.events_offloaded.inc()
        self.metrics.offloaded_bytes.inc(size)

    @_observer
    def publish_call(self, entries: int, seconds: float) -> None:
        self.metrics.publish_calls.inc()
        self.metrics.batch_size.observe(entries)
        self.metrics.call_seconds.observe(seconds)

    @_observer
    def set_waiting(self, count: int) -> None:
        self.metrics.waiting.set(count)

    @_observer
    def aws_error(self, service: str, code: str) -> None:
        self.metrics.aws_errors.labels(service, code or "unknown").inc()

    @_observer
    def idempotency_error(self, operation: str, error: Exception) -> None:
        self.metrics.idempotency_errors.labels(operation).inc()
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
        self.metrics.ready.set(1 if ready else 0)
