"""Spans of workers.telemetry: names, kinds, attributes and links per kind of trace context.

Messages travel through the real moto SQS server (and SNS for the envelope case) so the
dicts handed to telemetry have exactly the shape aiobotocore returns. Spans are captured by
the SDK's in-memory exporter on a provider passed in (the global provider is left alone).
The HTTP test sends a real request from httpx to an aiohttp server on loopback.
"""

from __future__ import annotations

import json
import pathlib
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from workers import envelopes, events, messages, telemetry
from workers.telemetry import tracing

XRAY_TRACE = "5759e988bd862e3fe1be46a994272793"
XRAY_PARENT = "53995c3f42cd8ad8"
XRAY_HEADER = f"Root=1-{XRAY_TRACE[:8]}-{XRAY_TRACE[8:]};Parent={XRAY_PARENT};Sampled=1"
ATTR_TRACE = "0af7651916cd43dd8448eb211c80319c"
ATTR_PARENT = "b7ad6b7169203331"
ATTR_TRACEPARENT = f"00-{ATTR_TRACE}-{ATTR_PARENT}-01"
EXAMPLES = pathlib.Path(__file__).parent / "data"  # copies of the shared wire-format examples


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> Iterator[TracerProvider]:
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield tracer_provider
    tracer_provider.shutdown()


@pytest.fixture
async def queue_url(sqs: Any) -> str:
    created = await sqs.create_queue(QueueName=f"traces-{uuid.uuid4().hex[:8]}")
    url: str = created["QueueUrl"]
    return url


def _event(ordering_key: str | None = "conv-1", attributes: dict[str, str] | None = None) -> events.Event:
    return events.Event(
        event_id=events.EventId("evt-1"),
        event_type="v2.detail.events.conversation.{id}.customer.start",
        payload={"eventBody": {"ani": "tel:+13175550123"}},
        ordering_key=ordering_key,
        attributes=attributes or {},
    )


def _message(**fields: Any) -> messages.Message:
    """A received message with what every SQS message has, and ``fields``."""
    return messages.parse({"MessageId": "m-1", "ReceiptHandle": "r-1", **fields})


async def _receive_one(sqs: Any, queue_url: str) -> messages.Message:
    got = await sqs.receive_message(
        QueueUrl=queue_url,
        MaxNumberOfMessages=10,
        WaitTimeSeconds=1,
        MessageSystemAttributeNames=["All"],
        MessageAttributeNames=["All"],
    )
    received: list[dict[str, Any]] = got["Messages"]
    assert len(received) == 1
    return messages.parse(received[0])


def _hex_ids(span: ReadableSpan) -> tuple[str, str]:
    assert span.context is not None
    return trace.format_trace_id(span.context.trace_id), trace.format_span_id(span.context.span_id)


def _links(span: ReadableSpan) -> list[tuple[str, str]]:
    return [
        (trace.format_trace_id(link.context.trace_id), trace.format_span_id(link.context.span_id))
        for link in span.links
    ]


def _one(exporter: InMemorySpanExporter, name: str) -> ReadableSpan:
    spans = [s for s in exporter.get_finished_spans() if s.name == name]
    assert len(spans) == 1, [s.name for s in exporter.get_finished_spans()]
    return spans[0]


def _process(
    provider: TracerProvider, queue_url: str, message: messages.Message, event: events.Event | None
) -> None:
    worker = telemetry.WorkerTelemetry(queue_url=queue_url, sink_name="crm", tracer_provider=provider)
    with worker.process_span(message, event):
        with worker.child_span(telemetry.DEDUPE):
            pass
        with worker.child_span(telemetry.ACK):
            pass


def _assert_process_attributes(
    span: ReadableSpan, queue_url: str, message: messages.Message, conversation_id: str | None = "conv-1"
) -> None:
    name = queue_url.rsplit("/", 1)[-1]
    assert span.name == f"process {name}"
    assert span.kind is SpanKind.CONSUMER
    assert span.attributes is not None
    assert dict(span.attributes) == {
        "messaging.system": "aws_sqs",
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.destination.name": name,
        "aws.sqs.queue.url": queue_url,
        "messaging.message.id": message.message_id,
        "messaging.message.conversation_id": conversation_id,
    }


def _assert_children(exporter: InMemorySpanExporter, process: ReadableSpan, queue_url: str) -> None:
    assert process.context is not None
    dedupe = _one(exporter, "dedupe")
    ack = _one(exporter, "ack")
    for child in (dedupe, ack):
        assert child.kind is SpanKind.INTERNAL
        assert child.parent is not None
        assert child.parent.span_id == process.context.span_id
    assert ack.attributes is not None
    assert ack.attributes["messaging.operation.type"] == "settle"
    assert ack.attributes["aws.sqs.queue.url"] == queue_url


async def test_aws_trace_header_becomes_parent_and_link(
    sqs: Any, queue_url: str, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    await sqs.send_message(
        QueueUrl=queue_url,
        MessageBody="{}",
        MessageSystemAttributes={"AWSTraceHeader": {"DataType": "String", "StringValue": XRAY_HEADER}},
    )
    message = await _receive_one(sqs, queue_url)
    assert message.trace_header == XRAY_HEADER

    _process(provider, queue_url, message, _event())

    process = _one(exporter, f"process {queue_url.rsplit('/', 1)[-1]}")
    _assert_process_attributes(process, queue_url, message)
    assert _links(process) == [(XRAY_TRACE, XRAY_PARENT)]
    assert _hex_ids(process)[0] == XRAY_TRACE
    assert process.parent is not None
    assert trace.format_span_id(process.parent.span_id) == XRAY_PARENT
    assert process.parent.is_remote
    _assert_children(exporter, process, queue_url)


async def test_traceparent_message_attribute_becomes_parent_and_link(
    sqs: Any, queue_url: str, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    await sqs.send_message(
        QueueUrl=queue_url,
        MessageBody="{}",
        MessageAttributes={"traceparent": {"DataType": "String", "StringValue": ATTR_TRACEPARENT}},
    )
    message = await _receive_one(sqs, queue_url)

    _process(provider, queue_url, message, _event())

    process = _one(exporter, f"process {queue_url.rsplit('/', 1)[-1]}")
    _assert_process_attributes(process, queue_url, message)
    assert _links(process) == [(ATTR_TRACE, ATTR_PARENT)]
    assert _hex_ids(process)[0] == ATTR_TRACE
    _assert_children(exporter, process, queue_url)


async def test_sns_envelope_traceparent_becomes_parent_and_link(
    sqs: Any, sns: Any, queue_url: str, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    topic = await sns.create_topic(Name=f"traces-{uuid.uuid4().hex[:8]}")
    attributes = await sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])
    await sns.subscribe(
        TopicArn=topic["TopicArn"], Protocol="sqs", Endpoint=attributes["Attributes"]["QueueArn"]
    )
    example = json.loads((EXAMPLES / "customer-start.sns-envelope.json").read_text())
    envelope_traceparent = example["MessageAttributes"]["traceparent"]["Value"]
    await sns.publish(
        TopicArn=topic["TopicArn"],
        Message=example["Message"],
        MessageAttributes={"traceparent": {"DataType": "String", "StringValue": envelope_traceparent}},
    )
    message = await _receive_one(sqs, queue_url)
    body = json.loads(message.body)
    assert "traceparent" not in message.attributes, "raw delivery is off: body only"
    assert body["Type"] == "Notification"
    event = envelopes.decode(message.body)
    assert event.attributes["traceparent"] == envelope_traceparent

    _process(provider, queue_url, message, event)

    process = _one(exporter, f"process {queue_url.rsplit('/', 1)[-1]}")
    _assert_process_attributes(process, queue_url, message, conversation_id=event.ordering_key)
    _, trace_id, parent_id, _ = envelope_traceparent.split("-")
    assert _links(process) == [(trace_id, parent_id)]
    assert _hex_ids(process)[0] == trace_id
    _assert_children(exporter, process, queue_url)


async def test_message_without_context_starts_a_new_trace_without_links(
    sqs: Any, queue_url: str, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    await sqs.send_message(QueueUrl=queue_url, MessageBody="{}")
    message = await _receive_one(sqs, queue_url)
    worker = telemetry.WorkerTelemetry(queue_url=queue_url, sink_name="crm", tracer_provider=provider)
    tracer = provider.get_tracer("test")

    with tracer.start_as_current_span("unrelated outer"), worker.process_span(message, _event()):
        pass

    process = _one(exporter, f"process {queue_url.rsplit('/', 1)[-1]}")
    outer = _one(exporter, "unrelated outer")
    _assert_process_attributes(process, queue_url, message)
    assert process.links == ()
    assert process.parent is None
    assert _hex_ids(process)[0] != _hex_ids(outer)[0]


async def test_no_ordering_key_and_no_event_leave_conversation_id_out(
    sqs: Any, queue_url: str, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    await sqs.send_message(QueueUrl=queue_url, MessageBody="not json")
    message = await _receive_one(sqs, queue_url)
    worker = telemetry.WorkerTelemetry(queue_url=queue_url, sink_name="crm", tracer_provider=provider)
    with worker.process_span(message, None):
        pass
    with worker.process_span(message, _event(ordering_key=None)):
        pass
    spans = exporter.get_finished_spans()
    assert len(spans) == 2
    for span in spans:
        assert span.attributes is not None
        assert "messaging.message.conversation_id" not in span.attributes
        assert span.attributes["messaging.message.id"] == message.message_id


async def test_receive_span_counts_the_batch_and_links_every_producer(
    sqs: Any, queue_url: str, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    await sqs.send_message(
        QueueUrl=queue_url,
        MessageBody="{}",
        MessageSystemAttributes={"AWSTraceHeader": {"DataType": "String", "StringValue": XRAY_HEADER}},
    )
    await sqs.send_message(
        QueueUrl=queue_url,
        MessageBody="{}",
        MessageAttributes={"traceparent": {"DataType": "String", "StringValue": ATTR_TRACEPARENT}},
    )
    await sqs.send_message(QueueUrl=queue_url, MessageBody="{}")
    worker = telemetry.WorkerTelemetry(queue_url=queue_url, sink_name="crm", tracer_provider=provider)
    received: list[messages.Message] = []
    for _ in range(5):  # moto may split the three over receives; bounded
        with worker.receive_span() as span:
            got = await sqs.receive_message(
                QueueUrl=queue_url,
                MaxNumberOfMessages=10,
                WaitTimeSeconds=0,
                MessageSystemAttributeNames=["All"],
                MessageAttributeNames=["All"],
            )
            batch = [messages.parse(entry) for entry in got.get("Messages", [])]
            worker.record_batch(span, batch)
            received.extend(batch)
        if len(received) == 3:
            break
    assert len(received) == 3

    name = queue_url.rsplit("/", 1)[-1]
    receives = [s for s in exporter.get_finished_spans() if s.name == f"receive {name}"]
    assert receives
    for span in receives:
        assert span.kind is SpanKind.CLIENT
        assert span.attributes is not None
        assert span.attributes["messaging.system"] == "aws_sqs"
        assert span.attributes["messaging.operation.type"] == "receive"
        assert span.attributes["messaging.operation.name"] == "ReceiveMessage"
        assert span.attributes["messaging.destination.name"] == name
        assert span.attributes["aws.sqs.queue.url"] == queue_url
    assert sum(int(s.attributes["messaging.batch.message_count"]) for s in receives if s.attributes) == 3
    links = sorted(link for s in receives for link in _links(s))
    assert links == sorted([(XRAY_TRACE, XRAY_PARENT), (ATTR_TRACE, ATTR_PARENT)])
    by_id = {m.message_id: m for m in received}
    for span in receives:
        for link in span.links:
            assert link.attributes is not None
            assert str(link.attributes["messaging.message.id"]) in by_id


@pytest.fixture
async def header_recorder() -> AsyncIterator[tuple[str, list[dict[str, str]]]]:
    seen: list[dict[str, str]] = []

    async def handle(request: web.Request) -> web.Response:
        seen.append(dict(request.headers))
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/api/record", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}/api/record", seen
    finally:
        await runner.cleanup()


async def test_sink_request_carries_traceparent_of_the_process_span(
    sqs: Any,
    queue_url: str,
    provider: TracerProvider,
    exporter: InMemorySpanExporter,
    header_recorder: tuple[str, list[dict[str, str]]],
) -> None:
    url, seen = header_recorder
    await sqs.send_message(
        QueueUrl=queue_url,
        MessageBody="{}",
        MessageAttributes={"traceparent": {"DataType": "String", "StringValue": ATTR_TRACEPARENT}},
    )
    message = await _receive_one(sqs, queue_url)
    worker = telemetry.WorkerTelemetry(queue_url=queue_url, sink_name="crm", tracer_provider=provider)
    sink = telemetry.SinkTelemetry("crm", tracer_provider=provider)

    async with httpx.AsyncClient() as client:
        with worker.process_span(message, _event()):
            with sink.http_span("POST", url + "?access_token=s3cret"):
                headers: dict[str, str] = {}
                telemetry.inject_headers(headers)
                response = await client.post(url, json={"x": 1}, headers=headers)
            assert response.status_code == 200

    process = _one(exporter, f"process {queue_url.rsplit('/', 1)[-1]}")
    http = _one(exporter, "POST")
    assert http.kind is SpanKind.CLIENT
    assert http.parent is not None
    assert process.context is not None
    assert http.parent.span_id == process.context.span_id
    assert http.attributes is not None
    assert http.attributes["url.full"] == url, "no query string (it can carry secrets)"
    assert http.attributes["http.request.method"] == "POST"
    assert http.attributes["server.address"] == "127.0.0.1"

    assert len(seen) == 1
    version, trace_id, parent_id, flags = seen[0]["traceparent"].split("-")
    assert (version, flags) == ("00", "01")
    assert trace_id == _hex_ids(process)[0] == ATTR_TRACE
    assert parent_id == _hex_ids(http)[1]


async def test_without_an_sdk_the_producer_context_reaches_the_sink_and_the_log_lines(
    sqs: Any, queue_url: str, header_recorder: tuple[str, list[dict[str, str]]]
) -> None:
    """No SDK (no OTLP endpoint): nothing is recorded, the producer's context is passed on."""
    assert not tracing.Recording(None)(), "this process must not have a global SDK provider"
    url, seen = header_recorder
    await sqs.send_message(
        QueueUrl=queue_url,
        MessageBody="{}",
        MessageAttributes={"traceparent": {"DataType": "String", "StringValue": ATTR_TRACEPARENT}},
    )
    traced = await _receive_one(sqs, queue_url)
    await sqs.send_message(QueueUrl=queue_url, MessageBody="{}")
    untraced = await _receive_one(sqs, queue_url)
    worker = telemetry.WorkerTelemetry(queue_url=queue_url, sink_name="crm")
    sink = telemetry.SinkTelemetry("crm")

    with worker.receive_span() as receive:
        worker.record_batch(receive, [traced, untraced])
        assert not receive.is_recording()
        assert not receive.get_span_context().is_valid
    async with httpx.AsyncClient() as client:
        for message in (traced, untraced):
            with worker.process_span(message, _event()) as span, worker.child_span(telemetry.DEDUPE):
                assert not span.is_recording()
                with sink.http_span("POST", url) as http:
                    assert not http.is_recording()
                    headers: dict[str, str] = {}
                    telemetry.inject_headers(headers)
                    await client.post(url, json={"x": 1}, headers=headers)
                current = trace.get_current_span().get_span_context()
                ids = (trace.format_trace_id(current.trace_id), trace.format_span_id(current.span_id))
                if message is traced:
                    assert ids == (ATTR_TRACE, ATTR_PARENT)
                else:
                    assert not current.is_valid
    assert not trace.get_current_span().get_span_context().is_valid, "the context is restored"

    assert [headers.get("traceparent") for headers in seen] == [ATTR_TRACEPARENT, None]


def test_inject_headers_without_a_span_adds_nothing() -> None:
    headers: dict[str, str] = {}
    telemetry.inject_headers(headers)
    assert "traceparent" not in headers


def test_unsampled_xray_header_is_kept_unsampled() -> None:
    header = f"Root=1-{XRAY_TRACE[:8]}-{XRAY_TRACE[8:]};Parent={XRAY_PARENT};Sampled=0"
    (context,) = telemetry.producer_contexts(_message(Attributes={"AWSTraceHeader": header}))
    assert not context.trace_flags.sampled
    assert context.is_remote


@pytest.mark.parametrize(
    "header",
    [
        "",
        "Root=1-5759e988-bd862e3fe1be46a994272793",
        "Root=1-5759e988-bd862e3fe1be46a99427279;Parent=53995c3f42cd8ad8;Sampled=1",
        "Root=2-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8",
        "Root=1-00000000-000000000000000000000000;Parent=53995c3f42cd8ad8",
        "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=0000000000000000",
        "garbage",
    ],
)
def test_malformed_xray_headers_are_ignored(header: str) -> None:
    assert telemetry.producer_contexts(_message(Attributes={"AWSTraceHeader": header})) == []


def test_the_same_context_in_two_carriers_links_once() -> None:
    message = _message(
        Attributes={"AWSTraceHeader": f"Root=1-{ATTR_TRACE[:8]}-{ATTR_TRACE[8:]};Parent={ATTR_PARENT}"},
        MessageAttributes={"traceparent": {"DataType": "String", "StringValue": ATTR_TRACEPARENT}},
    )
    assert (
        len(telemetry.producer_contexts(message, _event(attributes={"traceparent": ATTR_TRACEPARENT}))) == 1
    )


@given(
    trace_id=st.integers(min_value=1, max_value=2**128 - 1),
    span_id=st.integers(min_value=1, max_value=2**64 - 1),
    sampled=st.booleans(),
    lineage=st.booleans(),
)
def test_xray_header_round_trips(trace_id: int, span_id: int, sampled: bool, lineage: bool) -> None:
    hex_trace = f"{trace_id:032x}"
    header = f"Root=1-{hex_trace[:8]}-{hex_trace[8:]};Parent={span_id:016x};Sampled={int(sampled)}"
    if lineage:
        header += ";Lineage=a87bd80c:1|68fd508a:5"
    (context,) = telemetry.producer_contexts(_message(Attributes={"AWSTraceHeader": header}))
    assert (context.trace_id, context.span_id, context.trace_flags.sampled) == (trace_id, span_id, sampled)


def test_without_an_sdk_a_failure_carrying_the_context_is_counted_and_the_work_goes_on() -> None:
    """Telemetry never raises into the data path: a message of a shape the carrier cannot
    read (here not a message at all) leaves the work under the invalid span, counted."""
    queue_url = "http://127.0.0.1:9/123456789012/carried"
    worker = telemetry.WorkerTelemetry(queue_url=queue_url, sink_name="webhook")
    ran = False
    with worker.process_span(object(), None) as span:  # type: ignore[arg-type]
        ran = True
        assert span is trace.INVALID_SPAN
        assert not trace.get_current_span().get_span_context().is_valid
    assert ran
    errors = worker.metrics.registry.get_sample_value(
        "fanout_telemetry_errors_total", {"queue": worker.queue}
    )
    assert errors == 1


def test_without_an_sdk_a_message_without_context_is_no_child_of_the_current_span() -> None:
    """As a recorded process span starts a new trace, a message that carries no producer
    context is worked on under the invalid span even where another span is current: its log
    lines and its downstream request carry no trace. The outer span is current again after."""
    worker = telemetry.WorkerTelemetry(
        queue_url="http://127.0.0.1:9/123456789012/carried", sink_name="webhook"
    )
    outer = trace.NonRecordingSpan(
        trace.SpanContext(int(ATTR_TRACE, 16), int(ATTR_PARENT, 16), is_remote=True)
    )
    with trace.use_span(outer):
        with worker.process_span(_message(), _event()) as span:
            assert span is trace.INVALID_SPAN
            assert not trace.get_current_span().get_span_context().is_valid
            headers: dict[str, str] = {}
            telemetry.inject_headers(headers)
            assert "traceparent" not in headers
        assert trace.get_current_span() is outer
    assert trace.get_current_span() is trace.INVALID_SPAN
