"""State log lines of workers.telemetry: JSON shape, trace ids, and never a payload value or secret.

Every example event (tests/data, the shared wire-format examples) is decoded by the real
envelope decoder and pushed through every state change, with downstream reasons that quote
the payload and credentials back — the worst a sink reply can do. The captured stream must
not contain any ``ani``/``dnis``/``wrapupNotes``/name value, nor the secrets.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import pathlib
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from workers import envelopes, events, messages, telemetry
from workers.telemetry import logs

DATA = pathlib.Path(__file__).parent / "data"
PAYLOAD_FIELDS = ("ani", "dnis", "wrapupNotes", "name", "addressNormalized", "addressRaw", "email")
SECRETS = ("hec-token-7f3a9c1e2b", "sf-access-00Dxx0000001gPL!AR8AQP0", "hmac-s3cr3t-value")
QUEUE_URL = "http://127.0.0.1:4566/123456789012/interactions"


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    root = logging.getLogger()
    levels = {name: logging.getLogger(name).level for name in ["", *logs.WIRE_LOGGERS]}
    telemetry.configure_logging("DEBUG", stream=stream)
    try:
        yield stream
    finally:
        for handler in list(root.handlers):
            if isinstance(handler.formatter, telemetry.JsonFormatter):
                root.removeHandler(handler)
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def _payload_values(value: Any, found: set[str]) -> set[str]:
    if isinstance(value, dict):
        for key, item in value.items():
            if key in PAYLOAD_FIELDS and isinstance(item, str) and item:
                found.add(item)
            _payload_values(item, found)
    elif isinstance(value, list):
        for item in value:
            _payload_values(item, found)
    elif isinstance(value, str) and value.startswith(("{", "[")):
        with contextlib.suppress(ValueError):
            _payload_values(json.loads(value), found)
    return found


def _examples() -> list[tuple[messages.Message, events.Event]]:
    cases = []
    for index, path in enumerate(sorted(DATA.glob("*.json"))):
        body = path.read_text()
        message = messages.parse(
            {
                "MessageId": f"00000000-0000-4000-8000-{index:012d}",
                "ReceiptHandle": "AQEB-receipt-handle",
                "MD5OfBody": "d41d8cd98f00b204e9800998ecf8427e",
                "Body": body,
                "Attributes": {"SentTimestamp": "1741964967000", "ApproximateReceiveCount": "2"},
            }
        )
        cases.append((message, envelopes.decode(body)))
    return cases


def _lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_no_log_line_contains_a_payload_value_or_a_secret(log_stream: io.StringIO) -> None:
    cases = _examples()
    assert len(cases) >= 5
    sensitive = set(SECRETS)
    for message, _ in cases:
        _payload_values(json.loads(message.body), sensitive)
    assert {"tel:+13175550123", "tel:+18005550199"} <= sensitive, "the examples carry ani/dnis"
    assert any(" " in value for value in sensitive), "and free-text wrapup notes"

    worker = telemetry.WorkerTelemetry(queue_url=QUEUE_URL, sink_name="crm", clock=lambda: 1741964970.0)
    sink = telemetry.SinkTelemetry("crm")
    worker.received(len(cases))
    worker.received(0)
    worker.set_ready(True)
    for message, event in cases:
        body = json.loads(message.body)
        values = sorted(_payload_values(body, set()))
        # A downstream that echoes the record and the credentials back in its error text.
        echo = (
            f"HTTP 400 Bad Request: {json.dumps(body)[:200]} values={values} "
            f"Authorization: Bearer {SECRETS[1]} token={SECRETS[0]} "
            f'{{"password": "{SECRETS[2]}"}} Authorization: Splunk {SECRETS[0]}'
        )
        with worker.process_span(message, event):
            worker.delivered(message, event, 0.25)
            worker.filtered(message, event)
            worker.duplicate(message, event)
            worker.retried(message, event, 2.5, telemetry.ReasonClass.TRANSIENT, echo)
            worker.retried(message, None, 30.0, telemetry.ReasonClass.THROTTLED, echo)
            worker.dead_lettered(message, event, telemetry.ReasonClass.PERMANENT, echo)
            worker.dead_lettered(message, None, telemetry.ReasonClass.POISON, echo)
    worker.returned(2)
    worker.deleted(3)
    worker.delete_failed(1, "ReceiptHandleIsInvalid")
    worker.visibility_extended(4)
    worker.receipt_expired(1)
    worker.set_ready(False)
    sink.limiter_state(rate=10.0, concurrency=4, paused=False, circuit=0)
    sink.limiter_state(rate=None, concurrency=4, paused=True, circuit=2)

    output = log_stream.getvalue()
    lines = _lines(log_stream)
    states = {line["msg"] for line in lines}
    assert {"received", "empty_receive", "delivered", "filtered", "duplicate", "retried"} <= states
    assert {"dead_lettered", "returned", "deleted", "delete_failed", "visibility_extended"} <= states
    assert {"receipt_expired", "ready", "not_ready", "circuit_open", "paused"} <= states
    leaked = sorted(value for value in sensitive if value in output)
    assert leaked == []
    # The reason survives, minus what it must not carry.
    retried = next(line for line in lines if line["msg"] == "retried")
    assert retried["reason"].startswith("HTTP 400 Bad Request")


def test_payload_values_are_redacted_even_json_escaped() -> None:
    payload = {"eventBody": {"wrapupNotes": 'Kunde möchte "Rückruf" morgen', "n": 1741964966123}}
    echo = json.dumps({"error": "bad record", "record": payload}) + " raw: Kunde möchte"
    redacted = telemetry.redact_payload(echo, payload)
    assert "Rückruf" not in redacted
    assert "R\\u00fcckruf" not in redacted
    assert "1741964966123" not in redacted
    assert "bad record" in redacted


def test_state_lines_carry_identifiers_and_the_current_trace(log_stream: io.StringIO) -> None:
    provider = TracerProvider()
    worker = telemetry.WorkerTelemetry(queue_url=QUEUE_URL, sink_name="crm", tracer_provider=provider)
    message, event = next(c for c in _examples() if c[1].event_time_ms is not None)

    with worker.process_span(message, event) as span:
        worker.retried(message, event, 2.5, telemetry.ReasonClass.TRANSIENT, "sink timed out")
    worker.received(3)

    retried, received = _lines(log_stream)
    context = span.get_span_context()
    assert retried == {
        "ts": retried["ts"],
        "level": "WARNING",
        "logger": "fanout.worker",
        "msg": "retried",
        "queue": "interactions",
        "message_id": message.message_id,
        "event_id": event.event_id,
        "ordering_key": event.ordering_key,
        "event_type": event.event_type,
        "delay_seconds": 2.5,
        "reason_class": "transient",
        "reason": "sink timed out",
        "receive_count": 2,
        "trace_id": trace.format_trace_id(context.trace_id),
        "span_id": trace.format_span_id(context.span_id),
    }
    assert retried["ts"].endswith("+00:00")
    assert received["msg"] == "received"
    assert received["count"] == 3
    assert received["trace_id"] is None
    assert received["span_id"] is None
    provider.shutdown()


def test_level_is_configurable_and_configuring_twice_keeps_one_handler(log_stream: io.StringIO) -> None:
    telemetry.configure_logging("warning", stream=log_stream)
    telemetry.configure_logging("WARNING", stream=log_stream)
    handlers = [h for h in logging.getLogger().handlers if isinstance(h.formatter, telemetry.JsonFormatter)]
    assert len(handlers) == 1
    worker = telemetry.WorkerTelemetry(queue_url=QUEUE_URL, sink_name="crm")
    message, event = _examples()[0]
    worker.delivered(message, event, 0.1)
    worker.dead_lettered(message, event, telemetry.ReasonClass.EXHAUSTED, "5 attempts")
    assert [line["msg"] for line in _lines(log_stream)] == ["dead_lettered"]


def test_at_info_deliveries_are_one_summary_line_per_interval_and_the_rest_one_line_each(
    log_stream: io.StringIO,
) -> None:
    """The documented sampled equivalent (telemetry.summaries): at INFO a successful delivery
    writes no line of its own; the summary counts them; every other state keeps its line."""
    telemetry.configure_logging("INFO", stream=log_stream)
    worker = telemetry.WorkerTelemetry(queue_url=QUEUE_URL, sink_name="crm")
    cases = _examples()
    for message, event in cases:
        with worker.process_span(message, event):
            worker.delivered(message, event, 0.25)
    message, event = cases[0]
    worker.retried(message, event, 2.5, telemetry.ReasonClass.TRANSIENT, "sink timed out")
    worker.duplicate(message, event)
    worker.log_delivered_summary()
    worker.log_delivered_summary()  # nothing delivered since: no line

    lines = _lines(log_stream)
    assert [line["msg"] for line in lines] == ["retried", "duplicate", "delivered_summary"]
    summary = lines[-1]
    assert summary["queue"] == "interactions"
    assert summary["count"] == len(cases) > 1
    assert summary["processing_seconds_mean"] == summary["processing_seconds_max"] == 0.25
    assert summary["end_to_end_seconds_max"] >= summary["end_to_end_seconds_mean"] > 0
    assert summary["interval_seconds"] >= 0
    assert summary["trace_id"] is None  # it belongs to no one event


def test_at_debug_every_delivery_has_its_own_line(log_stream: io.StringIO) -> None:
    worker = telemetry.WorkerTelemetry(queue_url=QUEUE_URL, sink_name="crm")
    cases = _examples()
    for message, event in cases:
        worker.delivered(message, event, 0.25)
    worker.log_delivered_summary()
    lines = _lines(log_stream)
    assert [line["msg"] for line in lines] == ["delivered"] * len(cases)
    assert [line["event_id"] for line in lines] == [event.event_id for _, event in cases]


def test_debug_level_does_not_turn_on_wire_dumps_of_client_libraries(log_stream: io.StringIO) -> None:
    for name in ("botocore.parsers", "botocore.endpoint", "aiobotocore.endpoint", "httpx", "httpcore.http11"):
        logging.getLogger(name).debug("Response body: %s", "tel:+13175550123")
    logging.getLogger("httpx").info("HTTP Request: POST https://crm.example/api?token=abc")
    logging.getLogger("workers.processing").debug("our own debug line")
    assert [line["logger"] for line in _lines(log_stream)] == ["workers.processing"]


def test_other_loggers_go_through_the_same_json_formatter(log_stream: io.StringIO) -> None:
    extra = {"queue": "calls", "pollers": 2, "payload": {"ani": "tel:+13175550123"}, "trace_id": "forged"}
    logging.getLogger("workers.polling").info("stopping %s", "now", extra=extra)
    (line,) = _lines(log_stream)
    assert line["msg"] == "stopping now"
    assert line["logger"] == "workers.polling"
    assert (line["queue"], line["pollers"]) == ("calls", 2)
    assert "payload" not in line, "containers in extra are dropped"
    assert line["trace_id"] is None


PHONE = st.from_regex(r"\A(tel:)?\+?[1-9][0-9]{6,14}\Z")
TEXT = st.text(alphabet=st.characters(blacklist_categories=("Nd", "Cs")), max_size=40)


@given(before=TEXT, phone=PHONE, after=TEXT)
def test_scrub_removes_phone_numbers_anywhere(before: str, phone: str, after: str) -> None:
    digits = phone.removeprefix("tel:").lstrip("+")
    assert digits not in telemetry.scrub(f"{before}{phone}{after}")


@given(
    scheme=st.sampled_from(["Bearer", "bearer", "Basic", "Splunk"]),
    secret=st.from_regex(r"\A[A-Za-z0-9!._~+/=-]{8,40}\Z"),
    before=TEXT,
)
def test_scrub_removes_credentials_after_an_auth_scheme(scheme: str, secret: str, before: str) -> None:
    assert secret not in telemetry.scrub(f"{before} {scheme} {secret}")


@given(
    key=st.sampled_from(["token", "password", "api_key", "apikey", "secret"]),
    secret=st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=8, max_size=30),
)
def test_scrub_removes_key_value_secrets(key: str, secret: str) -> None:
    assert secret not in telemetry.scrub(f"failed: {key}={secret}&x=1")
    assert secret not in telemetry.scrub(f'{{"{key}": "{secret}"}}')


@given(text=st.text(max_size=2000))
def test_scrub_bounds_length(text: str) -> None:
    assert len(telemetry.scrub(text)) <= 303
