"""The sinks: one module per downstream type behind :class:`base.Sink`, and one table.

``running`` calls :func:`build_sink` with the spec's ``sink`` section; the table
:data:`SINKS` maps ``spec.sink.type`` to a constructor (as KEDA maps a trigger type to a
scaler), so adding a sink type is one module and one line here.

    webhook   one POST per event (docs/formats.md)
    crm       Salesforce-style upsert by external id
    siem      Splunk HTTP Event Collector, batched
    exchange  what the HTTP sinks share: limiter, client, spans, exception translation
    transport the client's default transport: httpx's API on our HTTP/1.1 client (pool,
              connection: asyncio Protocols, httptools); aiohttp behind a proxy
    secrets   SecretRef resolution (env var or mounted file), never logged
"""

from __future__ import annotations

from typing import Protocol

import httpx

from fanout_core import spec
from workers import fleet, telemetry, throttling
from workers.sinks import base, crm, siem, webhook


class SinkFactory(Protocol):
    def __call__(
        self,
        sink: spec.SinkSpec,
        *,
        replicas: fleet.Replicas,
        clock: throttling.Clock | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        metrics: telemetry.WorkerMetrics | None = None,
    ) -> base.Sink: ...


SINKS: dict[spec.SinkType, SinkFactory] = {
    spec.SinkType.WEBHOOK: webhook.WebhookSink,
    spec.SinkType.CRM: crm.CrmSink,
    spec.SinkType.SIEM: siem.HecSink,
}


def build_sink(
    sink: spec.SinkSpec,
    *,
    replicas: fleet.Replicas | None = None,
    clock: throttling.Clock | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    metrics: telemetry.WorkerMetrics | None = None,
) -> base.Sink:
    """The sink ``sink.type`` names, its rate shared by ``replicas`` (default: 1).

    ``clock`` is the limiter's (default: the running loop's time); ``transport`` is an
    httpx transport seam (default: real connections); ``metrics`` the worker's registry the
    sink's series go to (default: one of the sink's own). Raises
    :class:`~fanout_core.spec.ConfigError` (e.g. a missing secret) at build time.
    """
    factory = SINKS.get(sink.type)
    if factory is None:
        raise spec.ConfigError(f"spec.sink.type: no sink for {sink.type!r}")
    return factory(
        sink, replicas=replicas or fleet.FixedReplicas(1), clock=clock, transport=transport, metrics=metrics
    )
