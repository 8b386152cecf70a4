"""Everything a worker tells the outside world about itself: metrics, traces, log lines.

The runtime (polling, processing, settling, running) holds one :class:`WorkerTelemetry`
per queue and calls one method per state change (``received``, ``delivered``,
``retried``...); each call bumps its Prometheus metric AND writes one JSON log line, so
metrics and logs cannot drift apart — but for successful deliveries at INFO, which are
summed into one ``delivered_summary`` line per interval (``summaries``).
Sinks and throttling hold a :class:`SinkTelemetry`. Spans are OpenTelemetry context
managers that cost nothing when no SDK is configured.

This package is the facade callers import (``from workers import telemetry``); the parts:

    metrics     every metric name and its bounded labels (queue NAME, sink type, enums)
    logs        the JSON line format; scrubbing free text of payload values and secrets
    tracing     SDK set-up from OTEL_* only; producer context from X-Ray / traceparent / SNS
    recorders   WorkerTelemetry and SinkTelemetry, the only writers of the above
    spans       span context managers that never raise (and cost little while none records)
    summaries   successful deliveries as one log line per interval at INFO (each at DEBUG)
"""

from __future__ import annotations

from workers.telemetry import summaries
from workers.telemetry.logs import JsonFormatter, configure_logging, redact_payload, scrub
from workers.telemetry.metrics import CircuitState, ReasonClass, SinkOutcome, WorkerMetrics, queue_name
from workers.telemetry.recorders import ACK, DEDUPE, SinkTelemetry, WorkerTelemetry
from workers.telemetry.tracing import Tracing, configure_tracing, inject_headers, producer_contexts

__all__ = [
    "ACK",
    "DEDUPE",
    "CircuitState",
    "JsonFormatter",
    "ReasonClass",
    "SinkOutcome",
    "SinkTelemetry",
    "Tracing",
    "WorkerMetrics",
    "WorkerTelemetry",
    "configure_logging",
    "configure_tracing",
    "inject_headers",
    "producer_contexts",
    "queue_name",
    "redact_payload",
    "scrub",
    "summaries",
]
