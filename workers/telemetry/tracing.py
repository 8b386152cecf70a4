"""OpenTelemetry set-up from the environment, and trace context carried by SQS messages.

:func:`configure_tracing` is called once by ``cli``, which shuts down what it returns at exit
(nothing here is kept in module state); the span helpers of
:mod:`workers.telemetry.recorders` use :func:`producer_contexts` to find the producer's
context in a message: the ``AWSTraceHeader`` system attribute (X-Ray format), a W3C
``traceparent`` message attribute, or the SNS envelope's ``traceparent``
(``Event.attributes``). :func:`inject_headers` carries the current context on to a
downstream HTTP request.

The SDK is installed only when spans go somewhere (an OTLP traces endpoint): recording
spans nobody exports costs ~80 µs of CPU per event, 4-5% of a worker's. Without it the
no-op API still carries the producer's context through a process span (log lines and the
downstream ``traceparent`` then name the producer's trace); a :class:`Recording` tells each
recorder which of the two worlds it is in, so it skips building what nobody reads.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import time
from collections.abc import Callable, Mapping
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.trace import SpanContext, TraceFlags
from opentelemetry.trace.propagation import tracecontext

from workers import events, messages

TRACER_NAME = "fanout-consumer.workers"

_TRUE = frozenset({"true", "1", "yes"})
_RECHECK_SECONDS = 1.0


@dataclasses.dataclass(frozen=True, slots=True)
class Tracing:
    """What :func:`configure_tracing` set up: the SDK's provider, or None (the no-op API stays)."""

    provider: Any = None

    def shutdown(self) -> None:
        """Flush and stop the provider (call at exit)."""
        if self.provider is not None:
            self.provider.shutdown()


def configure_tracing(
    service_name: str = "fanout-worker", environ: Mapping[str, str] = os.environ
) -> Tracing:
    """Install the OpenTelemetry SDK from the standard ``OTEL_*`` environment.

    The SDK (with an OTLP/HTTP exporter) is installed only when
    ``OTEL_EXPORTER_OTLP_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is set,
    ``OTEL_TRACES_EXPORTER`` is not ``none`` and ``OTEL_SDK_DISABLED`` is not true.
    Otherwise the no-op API stays: no span is recorded, and a process span passes the
    producer's context on (see :mod:`workers.telemetry.recorders`). The sampler, resource
    attributes, service name (``OTEL_SERVICE_NAME`` wins over ``service_name``) and
    exporter details come from the environment through the SDK itself.

    OpenTelemetry takes one global provider per process: once one is installed, a second call
    installs nothing and returns a :class:`Tracing` without a provider (nothing to shut down).
    """
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() in _TRUE or not _export_wanted(environ):
        return Tracing()
    if not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        return Tracing()  # already installed in this process
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk import resources
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    attributes = {} if environ.get("OTEL_SERVICE_NAME") else {resources.SERVICE_NAME: service_name}
    provider = TracerProvider(resource=resources.Resource.create(attributes))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    return Tracing(provider)


class Recording:
    """Whether spans started through ``tracer_provider`` (None: the global one) can record;
    each recorder holds one.

    An explicit provider counts as recording. The global provider records once anything but
    the API's proxy/no-op provider is installed; OpenTelemetry lets that happen only once per
    process, so a True answer is kept. A False one is looked at again after a second (asking
    the API costs an environment lookup, and this runs several times per event), so a
    provider installed later is picked up within a second.
    """

    __slots__ = ("_checked_at", "_clock", "_records")

    def __init__(
        self, tracer_provider: trace.TracerProvider | None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._records = tracer_provider is not None
        self._checked_at = -math.inf
        self._clock = clock

    def __call__(self) -> bool:
        if self._records:
            return True
        now = self._clock()
        if now - self._checked_at < _RECHECK_SECONDS:
            return False
        self._checked_at = now
        provider = trace.get_tracer_provider()
        self._records = not isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider)
        return self._records


def _export_wanted(environ: Mapping[str, str]) -> bool:
    endpoint = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    exporters = {e.strip().lower() for e in environ.get("OTEL_TRACES_EXPORTER", "otlp").split(",")}
    return bool(endpoint) and "none" not in exporters


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


def producer_contexts(message: messages.Message, event: events.Event | None = None) -> list[SpanContext]:
    """Every distinct producer span context a message carries, most authoritative first.

    Order: the ``AWSTraceHeader`` system attribute (set by SQS itself from an X-Ray traced
    send), a ``traceparent`` message attribute, the SNS envelope's ``traceparent``.
    """
    found: list[SpanContext | None] = []
    if message.trace_header is not None:
        found.append(_parse_xray(message.trace_header))
    traceparent = message.string_attribute("traceparent")
    if traceparent:
        found.append(_parse_traceparent(traceparent, message.string_attribute("tracestate")))
    if event is not None and event.attributes.get("traceparent"):
        found.append(_parse_traceparent(event.attributes["traceparent"], event.attributes.get("tracestate")))
    unique: list[SpanContext] = []
    for span_context in found:
        if span_context is not None and all(
            (u.trace_id, u.span_id) != (span_context.trace_id, span_context.span_id) for u in unique
        ):
            unique.append(span_context)
    return unique
