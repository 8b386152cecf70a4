"""Everything a worker tells the outside world about itself: metrics, traces, log lines.

The runtime (polling, settling, running) holds one :class:`WorkerTelemetry` per queue and
calls one method per state change (``received``, ``delivered``, ``retried``...); each call
bumps its Prometheus metric AND writes one JSON log line, so metrics and logs cannot drift
apart. Sinks and throttling hold a :class:`SinkTelemetry`. Spans are OpenTelemetry context
managers that cost nothing when no SDK provider is configured.

Why one module: every metric name and label lives here, so label cardinality is reviewed in
one place (queue NAME, sink type, small fixed enums; never message or conversation ids), and
the "no payload values in logs" rule is enforced by the only code that writes state logs:
it takes the SQS message and the decoded event and copies identifiers, never ``payload``.

Traces follow the OpenTelemetry messaging semantic conventions for SQS: ``receive <queue>``
(CLIENT) per batch links every message's producer context; ``process <queue>`` (CONSUMER)
per message takes the producer context as parent and link. Producer context comes from the
``AWSTraceHeader`` system attribute (X-Ray), a ``traceparent`` message attribute, or the SNS
envelope's ``traceparent`` (``Event.attributes``). Configuration is only the standard
``OTEL_*`` environment (:func:`configure_tracing`).
"""

from __future__ import annotations

import contextlib
import datetime
import enum
import json
import logging
import math
import os
import re
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Final, TextIO

import prometheus_client
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import Link, Span, SpanContext, SpanKind, TraceFlags
from opentelemetry.trace.propagation import tracecontext

from workers import events

__all__ = [
    "ACK",
    "DEDUPE",
    "CircuitState",
    "ReasonClass",
    "SinkOutcome",
    "SinkTelemetry",
    "WorkerTelemetry",
    "configure_logging",
    "configure_tracing",
    "inject_headers",
    "producer_contexts",
    "queue_name",
    "redact_payload",
    "scrub",
    "shutdown_tracing",
]


class ReasonClass(enum.StrEnum):
    """Why a message was retried or dead-lettered; a bounded label value."""

    POISON = "poison"
    PERMANENT = "permanent"
    EXHAUSTED = "exhausted"
    THROTTLED = "throttled"
    TRANSIENT = "transient"
    TIMEOUT = "timeout"
    HOLD_LIMIT = "hold_limit"
    SHUTDOWN = "shutdown"


class SinkOutcome(enum.StrEnum):
    """The ``outcome`` label of sink request metrics."""

    DELIVERED = "delivered"
    RETRY = "retry"
    THROTTLED = "throttled"
    PERMANENT = "permanent"
    ERROR = "error"


class CircuitState(enum.IntEnum):
    """Value of ``fanout_sink_circuit_state``."""

    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


# Child span names the runtime uses; ACK is a messaging "settle" operation.
DEDUPE: Final = "dedupe"
ACK: Final = "ack"

# --------------------------------------------------------------------------------------- metrics
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
WORKER_READY = _g("fanout_worker_ready", "1 when the worker is polling and its sink is usable.", ["queue"])

# ------------------------------------------------------------------------------------ log scrubbing
_MAX_REASON = 300
_SCRUBBERS: Final = (
    # Authorization schemes and key=value secrets (token=..., password: ...).
    (re.compile(r"(?i)\b(bearer|basic|splunk)\s+[^\s,;\"']+"), r"\1 <redacted>"),
    (
        re.compile(
            r"(?i)\b(token|secret|password|passwd|api[_-]?key|signature|authorization)"
            r"(\"?\s*[=:]\s*\"?)[^\s,;&\"']+"
        ),
        r"\1\2<redacted>",
    ),
    # Email addresses and phone-number-like digit runs (Genesys ani/dnis are tel:+1555...).
    (re.compile(r"[\w.+-]+@[\w-]+(\.[\w-]+)+"), "<redacted>"),
    (re.compile(r"(?i)(tel:|sip:)?\+?\d[\d ()./-]{5,}\d"), "<redacted>"),
)


def scrub(text: str) -> str:
    """Make free text (a sink's reason, an error) fit for a log line.

    Reasons can quote a downstream reply, which can echo the payload: phone numbers, emails
    and credentials are replaced and the text is truncated. Identifiers the runtime logs on
    purpose (message and event ids) do not pass through here.
    """
    out = text[: _MAX_REASON * 2]
    for pattern, replacement in _SCRUBBERS:
        out = pattern.sub(replacement, out)
    if len(out) > _MAX_REASON:
        out = out[:_MAX_REASON] + "..."
    return out


_MIN_REDACTED_VALUE = 4
_MAX_REDACTED_VALUES = 2000


def _payload_strings(value: Any, found: set[str], depth: int = 0) -> None:
    """Collect the string (and number) leaves of a payload, JSON-in-strings included."""
    if depth > 32 or len(found) >= _MAX_REDACTED_VALUES:
        return
    if isinstance(value, Mapping):
        for item in value.values():
            _payload_strings(item, found, depth + 1)
    elif isinstance(value, list | tuple):
        for item in value:
            _payload_strings(item, found, depth + 1)
    elif isinstance(value, str):
        if value[:1] in ("{", "["):
            with contextlib.suppress(ValueError):
                _payload_strings(json.loads(value), found, depth + 1)
                return
        if len(value) >= _MIN_REDACTED_VALUE:
            found.add(value)
            found.add(json.dumps(value)[1:-1])  # as quoted inside an echoed JSON document
    elif isinstance(value, int | float) and not isinstance(value, bool):
        text = str(value)
        if len(text) >= _MIN_REDACTED_VALUE:
            found.add(text)


def redact_payload(text: str, payload: Any) -> str:
    """Replace every payload value quoted in ``text`` (a reason echoing a downstream reply).

    Free text such as wrap-up notes has no recognisable shape, so the only sure way to keep
    it out of a log line is to know it: the values come from the payload itself.
    """
    values: set[str] = set()
    _payload_strings(payload, values)
    for value in sorted(values, key=len, reverse=True):
        if value in text:
            text = text.replace(value, "<redacted>")
    return text


_CODE_RE = re.compile(r"[^A-Za-z0-9_.]")


def _bounded_code(code: str) -> str:
    return _CODE_RE.sub("_", code)[:64] or "unknown"


def queue_name(queue_url: str) -> str:
    """The queue NAME (last path segment of its URL): the ``queue`` label value."""
    path = urllib.parse.urlsplit(queue_url).path if "://" in queue_url else queue_url
    return path.rstrip("/").rsplit("/", 1)[-1] or queue_url


# --------------------------------------------------------------------------------------- logging
_STATE_LOGGER = logging.getLogger("fanout.worker")
_SINK_LOGGER = logging.getLogger("fanout.sink")
_HANDLER_MARK = "_fanout_json_handler"
_RESERVED_FIELDS = frozenset({"ts", "level", "logger", "msg", "trace_id", "span_id"})


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, the state fields, trace and span ids.

    State fields come only from ``extra={"fanout": {...}}`` (written by this module), so
    arbitrary attributes on log records never leak into the line.
    """

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fanout", None)
        if isinstance(fields, Mapping):
            line.update({k: v for k, v in fields.items() if k not in _RESERVED_FIELDS})
        span_context = trace.get_current_span().get_span_context()
        if span_context.is_valid:
            line["trace_id"] = trace.format_trace_id(span_context.trace_id)
            line["span_id"] = trace.format_span_id(span_context.span_id)
        else:
            line["trace_id"] = None
            line["span_id"] = None
        if record.exc_info and record.exc_info[0] is not None:
            line["exc_type"] = record.exc_info[0].__name__
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, separators=(",", ":"))


def configure_logging(level: str = "INFO", *, stream: TextIO | None = None) -> None:
    """Send every log record as a JSON line to ``stream`` (stderr); idempotent.

    Calling again changes the level (and the stream) of the one handler it installed.
    """
    root = logging.getLogger()
    root.setLevel(level.upper())
    target = stream if stream is not None else sys.stderr
    for handler in root.handlers:
        if getattr(handler, _HANDLER_MARK, False) and isinstance(handler, logging.StreamHandler):
            handler.setStream(target)
            return
    handler = logging.StreamHandler(target)
    handler.setFormatter(JsonFormatter())
    setattr(handler, _HANDLER_MARK, True)
    root.addHandler(handler)


# --------------------------------------------------------------------------------------- tracing
_TRACING_CONFIGURED = False
_PROVIDER: Any = None
_TRUE = frozenset({"true", "1", "yes"})


def configure_tracing(service_name: str = "fanout-worker") -> None:
    """Install the OpenTelemetry SDK from the standard ``OTEL_*`` environment; idempotent.

    ``OTEL_SDK_DISABLED=true`` leaves the no-op API in place. Otherwise spans are recorded (so
    log lines carry trace ids) and exported over OTLP/HTTP only when
    ``OTEL_EXPORTER_OTLP_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is set and
    ``OTEL_TRACES_EXPORTER`` is not ``none``. The sampler, resource attributes, service
    name (``OTEL_SERVICE_NAME`` wins over ``service_name``) and exporter details come from
    the environment through the SDK itself.
    """
    global _TRACING_CONFIGURED, _PROVIDER
    if _TRACING_CONFIGURED:
        return
    _TRACING_CONFIGURED = True
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() in _TRUE:
        return
    from opentelemetry.sdk import resources
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    attributes = {} if os.environ.get("OTEL_SERVICE_NAME") else {resources.SERVICE_NAME: service_name}
    provider = TracerProvider(resource=resources.Resource.create(attributes))
    if _export_wanted(os.environ):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    _PROVIDER = provider


def _export_wanted(environ: Mapping[str, str]) -> bool:
    endpoint = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    exporters = {e.strip().lower() for e in environ.get("OTEL_TRACES_EXPORTER", "otlp").split(",")}
    return bool(endpoint) and "none" not in exporters


def shutdown_tracing() -> None:
    """Flush and stop the provider :func:`configure_tracing` installed (call at exit)."""
    if _PROVIDER is not None:
        _PROVIDER.shutdown()


def inject_headers(headers: dict[str, str]) -> None:
    """Put the CURRENT span's context (W3C ``traceparent``) into outgoing HTTP headers.

    Uses the global propagator, so ``OTEL_PROPAGATORS`` is honoured (default: tracecontext and
    baggage). Does nothing when there is no valid current span.
    """
    propagate.inject(headers)


_W3C = tracecontext.TraceContextTextMapPropagator()
_XRAY_ROOT = re.compile(r"^1-([0-9a-fA-F]{8})-([0-9a-fA-F]{24})$")
_HEX16 = re.compile(r"^[0-9a-fA-F]{16}$")


def _parse_xray(header: str) -> SpanContext | None:
    fields: dict[str, str] = {}
    for part in header.split(";"):
        key, sep, value = part.strip().partition("=")
        if sep:
            fields[key.strip()] = value.strip()
    root = _XRAY_ROOT.match(fields.get("Root", ""))
    parent = fields.get("Parent", "")
    if root is None or not _HEX16.match(parent):
        return None
    flags = TraceFlags(TraceFlags.SAMPLED if fields.get("Sampled") == "1" else TraceFlags.DEFAULT)
    span_context = SpanContext(
        trace_id=int(root.group(1) + root.group(2), 16),
        span_id=int(parent, 16),
        is_remote=True,
        trace_flags=flags,
    )
    return span_context if span_context.is_valid else None


def _parse_traceparent(traceparent: str, tracestate: str | None = None) -> SpanContext | None:
    carrier = {"traceparent": traceparent}
    if tracestate:
        carrier["tracestate"] = tracestate
    span_context = trace.get_current_span(_W3C.extract(carrier)).get_span_context()
    return span_context if span_context.is_valid else None


def _message_attribute(message: Mapping[str, Any], name: str) -> str | None:
    attributes = message.get("MessageAttributes")
    if not isinstance(attributes, Mapping):
        return None
    value = attributes.get(name)
    if isinstance(value, Mapping):
        string = value.get("StringValue")
        return string if isinstance(string, str) else None
    return None


def producer_contexts(message: Mapping[str, Any], event: events.Event | None = None) -> list[SpanContext]:
    """Every distinct producer span context a message carries, most authoritative first.

    Order: the ``AWSTraceHeader`` system attribute (set by SQS itself from an X-Ray traced
    send), a ``traceparent`` message attribute, the SNS envelope's ``traceparent``.
    """
    found: list[SpanContext | None] = []
    system = message.get("Attributes")
    if isinstance(system, Mapping):
        header = system.get("AWSTraceHeader")
        if isinstance(header, str):
            found.append(_parse_xray(header))
    traceparent = _message_attribute(message, "traceparent")
    if traceparent:
        found.append(_parse_traceparent(traceparent, _message_attribute(message, "tracestate")))
    if event is not None and event.attributes.get("traceparent"):
        found.append(_parse_traceparent(event.attributes["traceparent"], event.attributes.get("tracestate")))
    unique: list[SpanContext] = []
    for span_context in found:
        if span_context is not None and all(
            (u.trace_id, u.span_id) != (span_context.trace_id, span_context.span_id) for u in unique
        ):
            unique.append(span_context)
    return unique


def _message_id(message: Mapping[str, Any]) -> str | None:
    value = message.get("MessageId")
    return value if isinstance(value, str) else None


def _system_ms(message: Mapping[str, Any], name: str) -> int | None:
    system = message.get("Attributes")
    if not isinstance(system, Mapping):
        return None
    try:
        return int(system[name])
    except (KeyError, TypeError, ValueError):
        return None


_TRACER_NAME = "fanout-consumer.workers"


# ------------------------------------------------------------------------------------- the worker
class WorkerTelemetry:
    """Metrics, spans and state log lines of one worker consuming one queue."""

    def __init__(
        self,
        *,
        queue_url: str,
        sink_name: str,
        tracer_provider: trace.TracerProvider | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.queue_url = queue_url
        self.queue = queue_name(queue_url)
        self.sink_name = sink_name
        self._clock = clock
        self._tracer = trace.get_tracer(_TRACER_NAME, tracer_provider=tracer_provider)
        self._ready: bool | None = None
        q = self.queue
        # Pre-create the children so every series exists (at 0) from the first scrape:
        # rate() and absent() alerts then behave from the start.
        self._received = MESSAGES_RECEIVED.labels(q)
        self._empty = EMPTY_RECEIVES.labels(q)
        self._delivered = EVENTS_DELIVERED.labels(q, sink_name)
        self._filtered = EVENTS_FILTERED.labels(q)
        self._duplicates = DUPLICATES_SUPPRESSED.labels(q)
        self._deleted = MESSAGES_DELETED.labels(q)
        self._extended = VISIBILITY_EXTENSIONS.labels(q)
        self._expired = RECEIPT_EXPIRED.labels(q)
        self._returned = MESSAGES_RETURNED.labels(q)
        self._processing = PROCESSING_SECONDS.labels(q)
        self._e2e_sent = END_TO_END_SECONDS.labels(q, "sqs_sent")
        self._e2e_event = END_TO_END_SECONDS.labels(q, "event_time")
        self._in_flight = IN_FLIGHT.labels(q)
        self._lanes = ACTIVE_LANES.labels(q)
        self._ready_gauge = WORKER_READY.labels(q)
        for reason_class in ReasonClass:
            RETRIES.labels(q, reason_class.value)
            DEAD_LETTERED.labels(q, reason_class.value)

    # ----------------------------------------------------------------------------------- spans
    def _base_attributes(self) -> dict[str, str]:
        return {
            "messaging.system": "aws_sqs",
            "messaging.destination.name": self.queue,
            "aws.sqs.queue.url": self.queue_url,
        }

    def receive_span(self) -> contextlib.AbstractContextManager[Span]:
        """``receive <queue>`` CLIENT span around one ReceiveMessage call."""
        attributes = self._base_attributes()
        attributes["messaging.operation.type"] = "receive"
        attributes["messaging.operation.name"] = "ReceiveMessage"
        return self._tracer.start_as_current_span(
            f"receive {self.queue}", kind=SpanKind.CLIENT, attributes=attributes
        )

    def record_batch(self, span: Span, messages: Sequence[Mapping[str, Any]]) -> None:
        """Put the batch size and one link per message producer context on a receive span."""
        span.set_attribute("messaging.batch.message_count", len(messages))
        for message in messages:
            message_id = _message_id(message)
            for span_context in producer_contexts(message):
                span.add_link(span_context, {"messaging.message.id": message_id} if message_id else None)

    @contextlib.contextmanager
    def process_span(self, message: Mapping[str, Any], event: events.Event | None) -> Iterator[Span]:
        """``process <queue>`` CONSUMER span for one message.

        The first producer context becomes the parent (one trace from producer to the
        downstream call); every producer context is also a link, as the conventions ask.
        Without one, the span starts a new trace (not a child of whatever is current).
        """
        attributes = self._base_attributes()
        attributes["messaging.operation.type"] = "process"
        attributes["messaging.operation.name"] = "process"
        message_id = _message_id(message)
        if message_id:
            attributes["messaging.message.id"] = message_id
        if event is not None and event.ordering_key:
            attributes["messaging.message.conversation_id"] = event.ordering_key
        producers = producer_contexts(message, event)
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
        attributes: dict[str, str] = {}
        if name == ACK:
            attributes = self._base_attributes()
            attributes["messaging.operation.type"] = "settle"
            attributes["messaging.operation.name"] = "ack"
        return self._tracer.start_as_current_span(name, kind=SpanKind.INTERNAL, attributes=attributes)

    # ---------------------------------------------------------------------------- state changes
    def _fields(self, message: Mapping[str, Any] | None, event: events.Event | None) -> dict[str, Any]:
        fields: dict[str, Any] = {"queue": self.queue}
        if message is not None:
            fields["message_id"] = _message_id(message)
        if event is not None:
            fields["event_id"] = event.event_id
            fields["ordering_key"] = event.ordering_key
            fields["event_type"] = event.event_type
        return fields

    @staticmethod
    def _reason(reason: str, message: Mapping[str, Any], event: events.Event | None) -> str:
        payload: Any = event.payload if event is not None else message.get("Body")
        return scrub(redact_payload(reason, payload))

    def _log(self, level: int, state: str, fields: dict[str, Any]) -> None:
        if _STATE_LOGGER.isEnabledFor(level):
            _STATE_LOGGER.log(level, state, extra={"fanout": fields})

    def received(self, count: int) -> None:
        if count == 0:
            self._empty.inc()
            self._log(logging.DEBUG, "empty_receive", self._fields(None, None))
            return
        self._received.inc(count)
        fields = self._fields(None, None)
        fields["count"] = count
        self._log(logging.INFO, "received", fields)

    def delivered(self, message: Mapping[str, Any], event: events.Event, processing_seconds: float) -> None:
        self._delivered.inc()
        self._processing.observe(max(0.0, processing_seconds))
        now_ms = self._clock() * 1000.0
        sent_ms = _system_ms(message, "SentTimestamp")
        fields = self._fields(message, event)
        fields["processing_seconds"] = round(processing_seconds, 6)
        if sent_ms is not None:
            self._e2e_sent.observe(max(0.0, (now_ms - sent_ms) / 1000.0))
        if event.event_time_ms is not None:
            end_to_end = max(0.0, (now_ms - event.event_time_ms) / 1000.0)
            self._e2e_event.observe(end_to_end)
            fields["end_to_end_seconds"] = round(end_to_end, 3)
        self._log(logging.INFO, "delivered", fields)

    def filtered(self, message: Mapping[str, Any], event: events.Event) -> None:
        self._filtered.inc()
        self._log(logging.INFO, "filtered", self._fields(message, event))

    def duplicate(self, message: Mapping[str, Any], event: events.Event) -> None:
        self._duplicates.inc()
        self._log(logging.INFO, "duplicate", self._fields(message, event))

    def retried(
        self,
        message: Mapping[str, Any],
        event: events.Event | None,
        delay_seconds: float,
        reason_class: ReasonClass,
        reason: str,
    ) -> None:
        reason_class = ReasonClass(reason_class)
        RETRIES.labels(self.queue, reason_class.value).inc()
        fields = self._fields(message, event)
        fields["delay_seconds"] = round(delay_seconds, 3)
        fields["reason_class"] = reason_class.value
        fields["reason"] = self._reason(reason, message, event)
        receive_count = _system_ms(message, "ApproximateReceiveCount")
        if receive_count is not None:
            fields["receive_count"] = receive_count
        self._log(logging.WARNING, "retried", fields)

    def dead_lettered(
        self,
        message: Mapping[str, Any],
        event: events.Event | None,
        reason_class: ReasonClass,
        reason: str,
    ) -> None:
        reason_class = ReasonClass(reason_class)
        DEAD_LETTERED.labels(self.queue, reason_class.value).inc()
        fields = self._fields(message, event)
        fields["reason_class"] = reason_class.value
        fields["reason"] = self._reason(reason, message, event)
        self._log(logging.ERROR, "dead_lettered", fields)

    def _count(self, level: int, state: str, count: int) -> None:
        fields = self._fields(None, None)
        fields["count"] = count
        self._log(level, state, fields)

    def returned(self, count: int) -> None:
        """Messages given back with visibility 0 (e.g. at shutdown, or held too long)."""
        self._returned.inc(count)
        self._count(logging.INFO, "returned", count)

    def deleted(self, count: int) -> None:
        self._deleted.inc(count)
        self._count(logging.DEBUG, "deleted", count)

    def delete_failed(self, count: int, code: str) -> None:
        code = _bounded_code(code)
        DELETE_FAILURES.labels(self.queue, code).inc(count)
        fields = self._fields(None, None)
        fields["count"] = count
        fields["code"] = code
        self._log(logging.WARNING, "delete_failed", fields)

    def visibility_extended(self, count: int) -> None:
        self._extended.inc(count)
        self._count(logging.DEBUG, "visibility_extended", count)

    def receipt_expired(self, count: int) -> None:
        self._expired.inc(count)
        self._count(logging.WARNING, "receipt_expired", count)

    def set_in_flight(self, count: int) -> None:
        self._in_flight.set(count)

    def set_lanes(self, count: int) -> None:
        self._lanes.set(count)

    def set_ready(self, ready: bool) -> None:
        self._ready_gauge.set(1 if ready else 0)
        if ready != self._ready:
            self._ready = ready
            self._log(logging.INFO, "ready" if ready else "not_ready", self._fields(None, None))


# --------------------------------------------------------------------------------------- the sink
class SinkTelemetry:
    """Request metrics, limiter gauges and HTTP client spans of one sink."""

    def __init__(self, sink_name: str, *, tracer_provider: trace.TracerProvider | None = None) -> None:
        self.sink_name = sink_name
        self._tracer = trace.get_tracer(_TRACER_NAME, tracer_provider=tracer_provider)
        self._circuit: int | None = None
        self._paused: bool | None = None
        for outcome in SinkOutcome:
            SINK_REQUESTS.labels(sink_name, outcome.value)

    def request(self, outcome: str, seconds: float) -> None:
        """Count one request; ``outcome`` must be a :class:`SinkOutcome` value (ValueError)."""
        label = SinkOutcome(outcome).value
        SINK_REQUESTS.labels(self.sink_name, label).inc()
        SINK_REQUEST_SECONDS.labels(self.sink_name, label).observe(max(0.0, seconds))

    def limiter_state(self, *, rate: float | None, concurrency: int, paused: bool, circuit: int) -> None:
        """Publish the limiter's view; ``rate=None`` means unlimited (+Inf)."""
        SINK_RATE_LIMIT.labels(self.sink_name).set(math.inf if rate is None else rate)
        SINK_CONCURRENCY_LIMIT.labels(self.sink_name).set(concurrency)
        SINK_PAUSED.labels(self.sink_name).set(1 if paused else 0)
        state = CircuitState(circuit)
        SINK_CIRCUIT_STATE.labels(self.sink_name).set(state.value)
        if self._circuit is not None and state != self._circuit:
            _SINK_LOGGER.log(
                logging.WARNING if state else logging.INFO,
                "circuit_" + state.name.lower(),
                extra={"fanout": {"sink": self.sink_name}},
            )
        if self._paused is not None and paused != self._paused:
            _SINK_LOGGER.warning(
                "paused" if paused else "resumed", extra={"fanout": {"sink": self.sink_name}}
            )
        self._circuit = state
        self._paused = paused

    def http_span(self, method: str, url: str) -> contextlib.AbstractContextManager[Span]:
        """A CLIENT span for one downstream HTTP request; call :func:`inject_headers` inside it.

        The URL is recorded without userinfo, query or fragment: those can carry secrets.
        """
        parts = urllib.parse.urlsplit(url)
        attributes: dict[str, str | int] = {
            "http.request.method": method.upper(),
            "url.full": urllib.parse.urlunsplit((parts.scheme, parts.hostname or "", parts.path, "", "")),
            "server.address": parts.hostname or "",
            "fanout.sink": self.sink_name,
        }
        if parts.port is not None:
            attributes["server.port"] = parts.port
            attributes["url.full"] = urllib.parse.urlunsplit(
                (parts.scheme, f"{parts.hostname}:{parts.port}", parts.path, "", "")
            )
        return self._tracer.start_as_current_span(method.upper(), kind=SpanKind.CLIENT, attributes=attributes)
