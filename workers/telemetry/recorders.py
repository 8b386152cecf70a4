"""The two recorders the runtime and the sinks hold: one call per state change.

:class:`WorkerTelemetry` (one per queue; polling, processing, settling, running) and
:class:`SinkTelemetry` (one per sink; sinks and throttling). Each state-change method bumps
its metric (:mod:`~workers.telemetry.metrics`) AND writes one JSON line
(:mod:`~workers.telemetry.logs`), so metrics and logs cannot drift apart; the span methods
follow the OpenTelemetry messaging conventions for SQS (:mod:`~workers.telemetry.tracing`).
Log lines copy identifiers from the message and the event, never ``payload``.

They run once or more per event, so they keep their cost down: label children are looked up
once, gauges are set only when their value changes, and while no SDK records spans
(:class:`~workers.telemetry.tracing.Recording`) the span methods only carry the context on —
what the no-op API would do, without building attributes and links nobody reads, nor the
guard a recording span gets (:mod:`~workers.telemetry.spans`).

They observe; they never raise into, block or change the data path. Every state-change
method is wrapped by :func:`_never_raises` and every span guarded (``spans``): a failure
inside telemetry (a payload of an unexpected shape, an exporter bug) is counted in
``fanout_telemetry_errors_total`` and logged by type only, and the caller goes on.

Both write to the :class:`~workers.telemetry.metrics.WorkerMetrics` they are given — the
worker's own registry, which its ``/metrics`` serves (a recorder built without one gets a
registry of its own).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Final, ParamSpec

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Link, Span, SpanKind

from workers import events, messages
from workers.telemetry import logs, spans, summaries, tracing
from workers.telemetry import metrics as _metrics

# Child span names the runtime uses; ACK is a messaging "settle" operation.
DEDUPE: Final = "dedupe"
ACK: Final = "ack"

_P = ParamSpec("_P")


def _never_raises(method: Callable[_P, None]) -> Callable[_P, None]:
    """A recorder method whose failures are counted and swallowed (see the module doc)."""

    @functools.wraps(method)
    def guarded(*args: _P.args, **kwargs: _P.kwargs) -> None:
        try:
            method(*args, **kwargs)
        except Exception as error:
            spans.failed(args[0] if args else None, method.__name__, error)

    return guarded


class WorkerTelemetry:
    """Metrics, spans and state log lines of one worker consuming one queue."""

    def __init__(
        self,
        *,
        queue_url: str,
        sink_name: str,
        tracer_provider: trace.TracerProvider | None = None,
        clock: Callable[[], float] = time.time,
        metrics: _metrics.WorkerMetrics | None = None,
    ) -> None:
        self.metrics = metrics if metrics is not None else _metrics.WorkerMetrics()
        families = self.metrics
        self.queue_url = queue_url
        self.queue = _metrics.queue_name(queue_url)
        self.sink_name = sink_name
        self._clock = clock
        self._tracer_provider = tracer_provider
        self._tracer = trace.get_tracer(tracing.TRACER_NAME, tracer_provider=tracer_provider)
        self._recording = tracing.Recording(tracer_provider)
        self._ready: bool | None = None
        self._summary = summaries.DeliveredSummary()
        self._in_flight_value: int | None = None
        self._lanes_value: int | None = None
        q = self.queue
        # Pre-create the children so every series exists (at 0) from the first scrape:
        # rate() and absent() alerts then behave from the start.
        self._received = families.messages_received.labels(q)
        self._empty = families.empty_receives.labels(q)
        self._delivered = families.events_delivered.labels(q, sink_name)
        self._filtered = families.events_filtered.labels(q)
        self._duplicates = families.duplicates_suppressed.labels(q)
        self._deleted = families.messages_deleted.labels(q)
        self._extended = families.visibility_extensions.labels(q)
        self._expired = families.receipt_expired.labels(q)
        self._returned = families.messages_returned.labels(q)
        self._processing = families.processing_seconds.labels(q)
        self._e2e_sent = families.end_to_end_seconds.labels(q, "sqs_sent")
        self._e2e_event = families.end_to_end_seconds.labels(q, "event_time")
        self._in_flight = families.in_flight.labels(q)
        self._lanes = families.active_lanes.labels(q)
        self._ready_gauge = families.worker_ready.labels(q)
        self._retries = {r: families.retries.labels(q, r.value) for r in _metrics.ReasonClass}
        self._dead_lettered = {r: families.dead_lettered.labels(q, r.value) for r in _metrics.ReasonClass}

    # ----------------------------------------------------------------------------------- spans
    def _base_attributes(self) -> dict[str, str]:
        return {
            "messaging.system": "aws_sqs",
            "messaging.destination.name": self.queue,
            "aws.sqs.queue.url": self.queue_url,
        }

    def receive_span(self) -> contextlib.AbstractContextManager[Span]:
        """``receive <queue>`` CLIENT span around one ReceiveMessage call."""
        return spans.Guarded(self, self._receive_span)

    def _receive_span(self) -> contextlib.AbstractContextManager[Span]:
        if not self._recording():
            return spans.current()
        attributes = self._base_attributes()
        attributes["messaging.operation.type"] = "receive"
        attributes["messaging.operation.name"] = "ReceiveMessage"
        return self._tracer.start_as_current_span(
            f"receive {self.queue}", kind=SpanKind.CLIENT, attributes=attributes
        )

    @_never_raises
    def record_batch(self, span: Span, batch: Sequence[messages.Message]) -> None:
        """Put the batch size and one link per message producer context on a receive span."""
        if not span.is_recording():
            return
        span.set_attribute("messaging.batch.message_count", len(batch))
        for message in batch:
            for span_context in tracing.producer_contexts(message):
                span.add_link(span_context, {"messaging.message.id": message.message_id})

    def process_span(
        self, message: messages.Message, event: events.Event | None
    ) -> contextlib.AbstractContextManager[Span]:
        """``process <queue>`` CONSUMER span for one message (see :meth:`_process_span`)."""
        if not self._recording():
            return spans.Carried(self, message, event)
        return spans.Guarded(self, functools.partial(self._process_span, message, event))

    @contextlib.contextmanager
    def _process_span(self, message: messages.Message, event: events.Event | None) -> Iterator[Span]:
        """``process <queue>`` CONSUMER span for one message.

        The first producer context becomes the parent (one trace from producer to the
        downstream call); every producer context is also a link, as the conventions ask.
        Without one, the span starts a new trace (not a child of whatever is current).
        While nothing records spans, :class:`~workers.telemetry.spans.Carried` makes the
        producer's context (or none) current instead: log lines and the downstream
        ``traceparent`` then carry the producer's trace.
        """
        attributes = self._base_attributes()
        attributes["messaging.operation.type"] = "process"
        attributes["messaging.operation.name"] = "process"
        attributes["messaging.message.id"] = message.message_id
        if event is not None and event.ordering_key:
            attributes["messaging.message.conversation_id"] = event.ordering_key
        producers = tracing.producer_contexts(message, event)
        parent = (
            trace.set_span_in_context(trace.NonRecordingSpan(producers[0]))
            if producers
            else otel_context.Context()
        )
        links = [Link(span_context) for span_context in producers]
        with self._tracer.start_as_current_span(
            f"process {self.queue}",
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes=attributes,
            links=links,
        ) as span:
            yield span

    def child_span(self, name: str) -> contextlib.AbstractContextManager[Span]:
        """An INTERNAL child of the current span: :data:`DEDUPE`, :data:`ACK` (a settle)."""
        if not self._recording():
            return spans.current()
        return spans.Guarded(self, functools.partial(self._child_span, name))

    def _child_span(self, name: str) -> contextlib.AbstractContextManager[Span]:
        attributes: dict[str, str] = {}
        if name == ACK:
            attributes = self._base_attributes()
            attributes["messaging.operation.type"] = "settle"
            attributes["messaging.operation.name"] = "ack"
        return self._tracer.start_as_current_span(name, kind=SpanKind.INTERNAL, attributes=attributes)

    # ---------------------------------------------------------------------------- state changes
    def _fields(self, message: messages.Message | None, event: events.Event | None) -> dict[str, Any]:
        fields: dict[str, Any] = {"queue": self.queue}
        if message is not None:
            fields["message_id"] = message.message_id
        if event is not None:
            fields["event_id"] = event.event_id
            fields["ordering_key"] = event.ordering_key
            fields["event_type"] = event.event_type
        return fields

    @staticmethod
    def _reason(reason: str, message: messages.Message, event: events.Event | None) -> str:
        if event is None:
            return logs.scrub(logs.redact_body(reason, message.body))
        return logs.scrub(logs.redact_payload(reason, event.payload))

    @staticmethod
    def _log(level: int, state: str, fields: dict[str, Any]) -> None:
        if logs.STATE_LOGGER.isEnabledFor(level):
            logs.emit(logs.STATE_LOGGER, level, state, fields)

    @_never_raises
    def received(self, count: int) -> None:
        if count == 0:
            self._empty.inc()
            if logs.STATE_LOGGER.isEnabledFor(logging.DEBUG):
                self._log(logging.DEBUG, "empty_receive", self._fields(None, None))
            return
        self._received.inc(count)
        fields = self._fields(None, None)
        fields["count"] = count
        self._log(logging.INFO, "received", fields)

    @_never_raises
    def delivered(self, message: messages.Message, event: events.Event, processing_seconds: float) -> None:
        self._delivered.inc()
        self._processing.observe(max(0.0, processing_seconds))
        now_ms = self._clock() * 1000.0
        sent_ms = message.sent_timestamp_ms
        if sent_ms is not None:
            self._e2e_sent.observe(max(0.0, (now_ms - sent_ms) / 1000.0))
        end_to_end: float | None = None
        if event.event_time_ms is not None:
            end_to_end = max(0.0, (now_ms - event.event_time_ms) / 1000.0)
            self._e2e_event.observe(end_to_end)
        if not logs.STATE_LOGGER.isEnabledFor(logging.DEBUG):  # INFO: one line per interval
            self._summary.add(processing_seconds, end_to_end)
            return
        fields = self._fields(message, event)
        fields["processing_seconds"] = round(processing_seconds, 6)
        if end_to_end is not None:
            fields["end_to_end_seconds"] = round(end_to_end, 3)
        self._log(logging.INFO, "delivered", fields)

    @_never_raises
    def log_delivered_summary(self) -> None:
        """The ``delivered_summary`` line of the deliveries since the last (none: no line);
        the worker calls it every ``summaries.INTERVAL_SECONDS`` and when it stops."""
        fields = self._summary.take()
        if fields is not None and logs.STATE_LOGGER.isEnabledFor(logging.INFO):
            self._log(logging.INFO, "delivered_summary", {**self._fields(None, None), **fields})

    @_never_raises
    def filtered(self, message: messages.Message, event: events.Event) -> None:
        self._filtered.inc()
        self._log(logging.INFO, "filtered", self._fields(message, event))

    @_never_raises
    def duplicate(self, message: messages.Message, event: events.Event) -> None:
        self._duplicates.inc()
        self._log(logging.INFO, "duplicate", self._fields(message, event))

    @_never_raises
    def retried(
        self,
        message: messages.Message,
        event: events.Event | None,
        delay_seconds: float,
        reason_class: _metrics.ReasonClass,
        reason: str,
    ) -> None:
        reason_class = _metrics.ReasonClass(reason_class)
        self._retries[reason_class].inc()
        fields = self._fields(message, event)
        fields["delay_seconds"] = round(delay_seconds, 3)
        fields["reason_class"] = reason_class.value
        fields["reason"] = self._reason(reason, message, event)
        fields["receive_count"] = message.receive_count
        self._log(logging.WARNING, "retried", fields)

    @_never_raises
    def dead_lettered(
        self,
        message: messages.Message,
        event: events.Event | None,
        reason_class: _metrics.ReasonClass,
        reason: str,
    ) -> None:
        reason_class = _metrics.ReasonClass(reason_class)
        self._dead_lettered[reason_class].inc()
        fields = self._fields(message, event)
        fields["reason_class"] = reason_class.value
        fields["reason"] = self._reason(reason, message, event)
        self._log(logging.ERROR, "dead_lettered", fields)

    def _count(self, level: int, state: str, count: int) -> None:
        if not logs.STATE_LOGGER.isEnabledFor(level):
            return
        fields = self._fields(None, None)
        fields["count"] = count
        self._log(level, state, fields)

    @_never_raises
    def returned(self, count: int) -> None:
        """Messages given back with visibility 0 (e.g. at shutdown, or held too long)."""
        self._returned.inc(count)
        self._count(logging.INFO, "returned", count)

    @_never_raises
    def deleted(self, count: int) -> None:
        self._deleted.inc(count)
        self._count(logging.DEBUG, "deleted", count)

    @_never_raises
    def delete_failed(self, count: int, code: str) -> None:
        """Deletes that finally failed: the messages come back, and are deleted as duplicates."""
        code = _metrics.bounded_code(code)
        self.metrics.delete_failures.labels(self.queue, code).inc(count)
        self._failed("delete_failed", count, code)

    @_never_raises
    def visibility_failed(self, count: int, code: str) -> None:
        """Visibility changes that finally failed: the messages come back when their visibility
        timeout runs out, sooner or later than asked."""
        code = _metrics.bounded_code(code)
        self.metrics.visibility_failures.labels(self.queue, code).inc(count)
        self._failed("visibility_failed", count, code)

    def _failed(self, state: str, count: int, code: str) -> None:
        fields = self._fields(None, None)
        fields["count"] = count
        fields["code"] = code
        self._log(logging.WARNING, state, fields)

    @_never_raises
    def visibility_extended(self, count: int) -> None:
        self._extended.inc(count)
        self._count(logging.DEBUG, "visibility_extended", count)

    @_never_raises
    def receipt_expired(self, count: int) -> None:
        self._expired.inc(count)
        self._count(logging.WARNING, "receipt_expired", count)

    @_never_raises
    def set_in_flight(self, count: int) -> None:
        if count != self._in_flight_value:
            self._in_flight_value = count
            self._in_flight.set(count)

    @_never_raises
    def set_lanes(self, count: int) -> None:
        if count != self._lanes_value:
            self._lanes_value = count
            self._lanes.set(count)

    @_never_raises
    def task_restarted(self, task: str) -> None:
        self.metrics.task_restarts.labels(self.queue, task).inc()

    @_never_raises
    def redrive_conflict(self, problem: str | None) -> None:
        """The source queue's redrive policy would cut retries short (``problem``), or not."""
        self.metrics.redrive_policy_conflict.labels(self.queue).set(1 if problem else 0)
        if problem:
            fields = self._fields(None, None)
            fields["problem"] = problem
            self._log(logging.WARNING, "redrive_policy_conflict", fields)

    @_never_raises
    def set_ready(self, ready: bool) -> None:
        self._ready_gauge.set(1 if ready else 0)
        if ready != self._ready:
            self._ready = ready
            self._log(logging.INFO, "ready" if ready else "not_ready", self._fields(None, None))


class SinkTelemetry:
    """Request metrics, limiter gauges and HTTP client spans of one sink."""

    def __init__(
        self,
        sink_name: str,
        *,
        tracer_provider: trace.TracerProvider | None = None,
        metrics: _metrics.WorkerMetrics | None = None,
    ) -> None:
        self.metrics = metrics if metrics is not None else _metrics.WorkerMetrics()
        families = self.metrics
        self.sink_name = sink_name
        self._tracer_provider = tracer_provider
        self._tracer = trace.get_tracer(tracing.TRACER_NAME, tracer_provider=tracer_provider)
        self._recording = tracing.Recording(tracer_provider)
        self._circuit: int | None = None
        self._paused: bool | None = None
        self._published: tuple[float, int, bool, int] | None = None
        self._requests = {
            outcome.value: (
                families.sink_requests.labels(sink_name, outcome.value),
                families.sink_request_seconds.labels(sink_name, outcome.value),
            )
            for outcome in _metrics.SinkOutcome
        }
        self._rate_gauge = families.sink_rate_limit.labels(sink_name)
        self._concurrency_gauge = families.sink_concurrency_limit.labels(sink_name)
        self._paused_gauge = families.sink_paused.labels(sink_name)
        self._circuit_gauge = families.sink_circuit_state.labels(sink_name)
        self._refused_gauge = families.sink_credentials_refused.labels(sink_name)
        self._refused_gauge.set(0)
        self._refused = False

    @_never_raises
    def request(self, outcome: str, seconds: float) -> None:
        """Count one request; ``outcome`` must be a :class:`_metrics.SinkOutcome` value (ValueError)."""
        children = self._requests.get(outcome)
        if children is None:
            children = self._requests[_metrics.SinkOutcome(outcome).value]
        counter, histogram = children
        counter.inc()
        histogram.observe(max(0.0, seconds))

    @_never_raises
    def limiter_state(self, *, rate: float | None, concurrency: int, paused: bool, circuit: int) -> None:
        """Publish the limiter's view; ``rate=None`` means unlimited (+Inf).

        Called after every limiter change (twice per request); the gauges are set only when a
        value differs from what this recorder last set.
        """
        value = (math.inf if rate is None else rate, concurrency, paused, circuit)
        if value == self._published:
            return
        self._published = value
        self._rate_gauge.set(value[0])
        self._concurrency_gauge.set(concurrency)
        self._paused_gauge.set(1 if paused else 0)
        state = _metrics.CircuitState(circuit)
        self._circuit_gauge.set(state.value)
        if self._circuit is not None and state != self._circuit:
            logs.SINK_LOGGER.log(
                logging.WARNING if state else logging.INFO,
                "circuit_" + state.name.lower(),
                extra={"fanout": {"sink": self.sink_name}},
            )
        if self._paused is not None and paused != self._paused:
            logs.SINK_LOGGER.warning(
                "paused" if paused else "resumed", extra={"fanout": {"sink": self.sink_name}}
            )
        self._circuit = state
        self._paused = paused

    @_never_raises
    def credentials_refused(self, refused: bool) -> None:
        """Raise or clear ``fanout_sink_credentials_refused``; one log line per change."""
        if refused == self._refused:
            return
        self._refused = refused
        self._refused_gauge.set(1 if refused else 0)
        logs.SINK_LOGGER.log(
            logging.ERROR if refused else logging.INFO,
            "credentials_refused" if refused else "credentials_accepted",
            extra={"fanout": {"sink": self.sink_name}},
        )

    def http_span(self, method: str, url: str) -> contextlib.AbstractContextManager[Span]:
        """A CLIENT span for one downstream HTTP request; call :func:`inject_headers` inside it.

        The URL is recorded without userinfo, query or fragment: those can carry secrets.
        """
        if not self._recording():
            return spans.current()
        return spans.Guarded(self, functools.partial(self._http_span, method, url))

    def _http_span(self, method: str, url: str) -> contextlib.AbstractContextManager[Span]:
        attributes = dict(_http_attributes(method.upper(), url, self.sink_name))
        return self._tracer.start_as_current_span(method.upper(), kind=SpanKind.CLIENT, attributes=attributes)


@functools.lru_cache(maxsize=64)
def _http_attributes(method: str, url: str, sink_name: str) -> tuple[tuple[str, str | int], ...]:
    """A sink mostly calls one URL (or a few): parse it once."""
    parts = urllib.parse.urlsplit(url)
    attributes: dict[str, str | int] = {
        "http.request.method": method,
        "url.full": urllib.parse.urlunsplit((parts.scheme, parts.hostname or "", parts.path, "", "")),
        "server.address": parts.hostname or "",
        "fanout.sink": sink_name,
    }
    if parts.port is not None:
        attributes["server.port"] = parts.port
        attributes["url.full"] = urllib.parse.urlunsplit(
            (parts.scheme, f"{parts.hostname}:{parts.port}", parts.path, "", "")
        )
    return tuple(attributes.items())
