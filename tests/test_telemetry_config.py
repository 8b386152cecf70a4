"""configure_tracing from the standard OTEL_* environment, observed from outside.

The global tracer provider can be set once per process, so each case runs a short worker
script in a subprocess with its own environment; an OTLP/HTTP receiver (aiohttp on
loopback) decodes what arrives. The SDK is installed (and spans recorded and exported) only
with a traces endpoint; otherwise, and with OTEL_SDK_DISABLED, the no-op API passes the
producer's context on, so a message's log lines still carry the producer's trace id.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

PRODUCER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PRODUCER_SPAN = "00f067aa0ba902b7"
PRODUCER_TRACEPARENT = f"00-{PRODUCER_TRACE}-{PRODUCER_SPAN}-01"

SCRIPT = """
from workers import messages, telemetry
telemetry.configure_logging("INFO")
tracing = telemetry.configure_tracing("fanout-worker-test")
assert not telemetry.configure_tracing("ignored-second-call").provider
worker = telemetry.WorkerTelemetry(queue_url="http://127.0.0.1:9/123456789012/config-q", sink_name="crm")
with worker.receive_span():
    worker.received(1)
traced = messages.parse({
    "MessageId": "m-1",
    "ReceiptHandle": "r-1",
    "MessageAttributes": {"traceparent": {"DataType": "String", "StringValue": "%s"}},
})
with worker.process_span(traced, None):
    worker.retried(traced, None, 1.0, telemetry.ReasonClass.TRANSIENT, "try again")
tracing.shutdown()
"""


@dataclass
class Receiver:
    port: int
    requests: list[tuple[str, bytes]] = field(default_factory=list)

    def spans(self) -> list[tuple[str, str]]:
        """(service.name, span name) of every span received."""
        found = []
        for _, body in self.requests:
            request = trace_service_pb2.ExportTraceServiceRequest()
            request.ParseFromString(body)
            for resource_spans in request.resource_spans:
                attributes = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                for scope_spans in resource_spans.scope_spans:
                    found += [(attributes["service.name"], span.name) for span in scope_spans.spans]
        return found


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    app = web.Application()
    runner = web.AppRunner(app)
    state = Receiver(port=0)

    async def handle(request: web.Request) -> web.Response:
        state.requests.append((request.path, await request.read()))
        return web.Response(body=b"", content_type="application/x-protobuf")

    app.router.add_post("/{tail:.*}", handle)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    state.port = runner.addresses[0][1]
    try:
        yield state
    finally:
        await runner.cleanup()


async def _run_worker_script(env: dict[str, str]) -> list[dict[str, object]]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        SCRIPT % PRODUCER_TRACEPARENT,
        env={**clean, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 0, stderr.decode()
    return [json.loads(line) for line in stderr.decode().splitlines() if line.startswith("{")]


async def test_otlp_endpoint_exports_spans_with_the_service_name(receiver: Receiver) -> None:
    lines = await _run_worker_script({"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver.port}"})
    assert sorted(receiver.spans()) == [
        ("fanout-worker-test", "process config-q"),
        ("fanout-worker-test", "receive config-q"),
    ]
    assert {path for path, _ in receiver.requests} == {"/v1/traces"}
    (received,) = [line for line in lines if line["msg"] == "received"]
    assert isinstance(received["trace_id"], str)
    assert len(received["trace_id"]) == 32
    assert received["trace_id"] != PRODUCER_TRACE
    (retried,) = [line for line in lines if line["msg"] == "retried"]
    # The recorded process span continues the producer's trace as a span of its own.
    assert retried["trace_id"] == PRODUCER_TRACE
    assert retried["span_id"] not in (None, PRODUCER_SPAN)


async def test_traces_endpoint_and_service_name_from_the_environment(receiver: Receiver) -> None:
    await _run_worker_script(
        {
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"http://127.0.0.1:{receiver.port}/custom/traces",
            "OTEL_SERVICE_NAME": "crm-sync",
        }
    )
    assert sorted(receiver.spans()) == [("crm-sync", "process config-q"), ("crm-sync", "receive config-q")]
    assert {path for path, _ in receiver.requests} == {"/custom/traces"}


@pytest.mark.parametrize(
    ("extra", "sdk"),
    [
        ({}, False),
        # Endpoints for other signals are not a traces endpoint.
        ({"OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "http://127.0.0.1:{port}/v1/traces"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:{port}", "OTEL_SDK_DISABLED": "true"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:{port}", "OTEL_TRACES_EXPORTER": "none"}, False),
        # The SDK is there (an endpoint is set), its sampler drops everything.
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:{port}", "OTEL_TRACES_SAMPLER": "always_off"},
            True,
        ),
    ],
)
async def test_nothing_is_exported_without_a_traces_endpoint_or_when_disabled(
    receiver: Receiver, extra: dict[str, str], sdk: bool
) -> None:
    env = {name: value.format(port=receiver.port) for name, value in extra.items()}
    lines = await _run_worker_script(env)
    assert receiver.spans() == []
    (received,) = [line for line in lines if line["msg"] == "received"]
    (retried,) = [line for line in lines if line["msg"] == "retried"]
    # Either way a message's lines carry its producer's trace id.
    assert retried["trace_id"] == PRODUCER_TRACE
    if sdk:
        # An unsampled SDK span still has ids of its own.
        assert received["trace_id"] is not None
        assert retried["span_id"] not in (None, PRODUCER_SPAN)
    else:
        # Without the SDK no span is made: the producer's context is passed on as it is,
        # and a receive outside any message has no trace.
        assert received["trace_id"] is None
        assert retried["span_id"] == PRODUCER_SPAN
