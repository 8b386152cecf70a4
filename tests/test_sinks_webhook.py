"""The webhook sink against the webhook simulator over loopback: wire format, every answer
class, the whole-sink pause, the circuit during an outage, and secrets kept out of logs."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import pathlib
import time
from typing import Any

import pytest
from opentelemetry import trace

from fanout_core import spec
from fanout_lab.simulators import aws, webhook
from workers import events, fleet, throttling
from workers.sinks import secrets
from workers.sinks import webhook as webhook_sink

SECRET = "hmac-key-never-logged-7f3a"


def _spec(url: str, **extra: Any) -> spec.SinkSpec:
    return spec.SinkSpec.model_validate({"type": "webhook", "url": url, **extra})


def _event(n: int, key: str = "conv-1") -> events.Event:
    payload = {"topicName": "t", "eventBody": {"conversationId": key, "eventTime": 1_700_000_000_000 + n}}
    return events.Event(events.EventId(f"evt-{n}"), "v2.detail.events.conversation.{id}.acw", payload, key)


async def test_wire_format_and_signature_verified_by_the_receiver(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WEBHOOK_KEY", SECRET)
    async with webhook.WebhookSimulator(signing_secret=SECRET) as sim:
        sink = webhook_sink.WebhookSink(
            _spec(sim.url + "/hook", signing_secret={"env": "WEBHOOK_KEY"}, headers={"X-Team": "cc"}),
            replicas=fleet.FixedReplicas(1),
        )
        event = _event(1)
        assert isinstance(await sink.deliver(event), events.Delivered)
        await sink.aclose()
    assert sim.signature_failures == 0
    [accepted] = sim.accepted
    assert accepted.path == "/hook"
    assert json.loads(accepted.body) == event.payload
    assert accepted.headers["Content-Type"] == "application/json"
    assert accepted.headers["Idempotency-Key"] == "evt-1"
    assert accepted.headers["X-Team"] == "cc"
    expected = hmac.new(SECRET.encode(), accepted.body, hashlib.sha256).hexdigest()
    assert accepted.headers["X-Fanout-Signature"] == f"sha256={expected}"


async def test_a_refused_key_is_the_sinks_failure_and_a_rotated_key_is_picked_up_by_the_probe(
    tmp_path: pathlib.Path,
) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("another-key")
    async with webhook.WebhookSimulator(signing_secret=SECRET) as sim:
        sink = webhook_sink.WebhookSink(
            _spec(sim.url, signing_secret={"file": str(key_file)}, circuitOpenSeconds=0.2),
            replicas=fleet.FixedReplicas(1),
        )
        outcome = await sink.deliver(_event(1))
        # Our credential, not the event: nothing to dead-letter, the whole sink stops.
        assert isinstance(outcome, events.Refused)
        assert "401" in outcome.reason
        assert not sink.accepting
        assert sink.limiter.snapshot().circuit is throttling.CircuitState.OPEN
        key_file.write_text(SECRET)  # the Secret is rotated in its mounted file
        await asyncio.wait_for(sink.wait_accepting(), 5)
        assert isinstance(await sink.deliver(_event(2)), events.Delivered)  # the probe re-read it
        assert sink.accepting
        await sink.aclose()
    assert sim.signature_failures == 1
    assert [request.event_id for request in sim.accepted] == ["evt-2"]


async def test_traceparent_of_the_current_span_is_sent() -> None:
    parent = trace.SpanContext(
        trace_id=0x4BF92F3577B34DA6A3CE929D0E0E4736,
        span_id=0x00F067AA0BA902B7,
        is_remote=True,
        trace_flags=trace.TraceFlags(1),
    )
    async with webhook.WebhookSimulator() as sim:
        sink = webhook_sink.WebhookSink(_spec(sim.url), replicas=fleet.FixedReplicas(1))
        with trace.use_span(trace.NonRecordingSpan(parent)):
            await sink.deliver(_event(1))
        await sink.aclose()
    traceparent = sim.accepted[0].headers["traceparent"]
    assert traceparent.split("-")[1] == "4bf92f3577b34da6a3ce929d0e0e4736"


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (500, events.Retry),
        (502, events.Retry),
        (400, events.Permanent),
        (404, events.Permanent),
        (409, events.Permanent),
        (410, events.Permanent),
        (413, events.Permanent),
        (422, events.Permanent),
        (401, events.Refused),
        (403, events.Refused),
        (407, events.Refused),
        (408, events.Retry),
    ],
)
async def test_status_classes(status: int, expected: type) -> None:
    from aiohttp import web

    async def answer(request: web.Request) -> web.Response:
        return web.Response(status=status, text="no")

    app = web.Application()
    app.router.add_post("/", answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        sink = webhook_sink.WebhookSink(_spec(f"http://127.0.0.1:{port}/"), replicas=fleet.FixedReplicas(1))
        outcome = await sink.deliver(_event(1))
        await sink.aclose()
    finally:
        await runner.cleanup()
    assert isinstance(outcome, expected)
    if isinstance(outcome, events.Permanent | events.Refused):
        assert str(status) in outcome.reason
    else:
        assert isinstance(outcome, events.Retry)
        assert outcome.throttled is (status == 408)
    assert sink.accepting is not isinstance(outcome, events.Refused)


@pytest.mark.parametrize("retry_after_format", ["seconds", "http-date"])
async def test_429_retry_after_pauses_the_whole_sink(retry_after_format: str) -> None:
    async with webhook.WebhookSimulator(
        throttle_ratio=1.0,
        retry_after=2,
        retry_after_format=retry_after_format,  # type: ignore[arg-type]
    ) as sim:
        sink = webhook_sink.WebhookSink(_spec(sim.url), replicas=fleet.FixedReplicas(1))
        outcome = await sink.deliver(_event(1))
        assert isinstance(outcome, events.Retry)
        assert outcome.throttled
        assert outcome.delay_seconds is not None
        # HTTP-date has whole-second resolution: the delay is 1..2 s
        assert 0.9 <= outcome.delay_seconds <= 2.0
        assert not sink.accepting
        assert sink.limiter.snapshot().paused
        # nothing reaches the server while paused: a second delivery waits out the pause
        sim.throttle_ratio = 0.0
        started = time.monotonic()
        assert isinstance(await sink.deliver(_event(2)), events.Delivered)
        assert time.monotonic() - started >= outcome.delay_seconds - 0.05
        assert sink.accepting
        await sink.aclose()
    assert sim.requests_total == 2


async def test_503_is_throttled_and_counts_towards_the_circuit() -> None:
    async with webhook.WebhookSimulator(throttle_ratio=1.0, throttle_status=503, retry_after=1) as sim:
        sink = webhook_sink.WebhookSink(_spec(sim.url), replicas=fleet.FixedReplicas(1))
        outcome = await sink.deliver(_event(1))
        await sink.aclose()
    assert isinstance(outcome, events.Retry)
    assert outcome.throttled
    assert outcome.delay_seconds == 1


async def test_timeouts_and_connection_errors_are_retries() -> None:
    async with webhook.WebhookSimulator(latency=1.0) as sim:
        sink = webhook_sink.WebhookSink(_spec(sim.url, timeout_seconds=0.2), replicas=fleet.FixedReplicas(1))
        outcome = await sink.deliver(_event(1))
        await sink.aclose()
    assert isinstance(outcome, events.Retry)
    assert outcome.reason == "timeout"
    sink = webhook_sink.WebhookSink(
        _spec(f"http://127.0.0.1:{aws.free_port()}/"), replicas=fleet.FixedReplicas(1)
    )
    outcome = await sink.deliver(_event(2))
    await sink.aclose()
    assert isinstance(outcome, events.Retry)
    assert outcome.reason.startswith("connection error")


async def _drive(sink: webhook_sink.WebhookSink, backlog: asyncio.Queue[events.Event], lanes: int) -> None:
    """A minimal consumer: deliver, put retries back, stop when the backlog is empty."""

    async def lane() -> None:
        while True:
            try:
                event = backlog.get_nowait()
            except asyncio.QueueEmpty:
                return
            await sink.wait_accepting()
            outcome = await sink.deliver(event)
            if isinstance(outcome, events.Retry):
                await asyncio.sleep(0.05)
                backlog.put_nowait(event)

    await asyncio.gather(*(lane() for _ in range(lanes)))


async def test_outage_opens_the_circuit_only_probes_reach_the_server_then_everything_recovers() -> None:
    async with webhook.WebhookSimulator() as sim:
        sink = webhook_sink.WebhookSink(
            _spec(sim.url, circuit_failure_threshold=3, circuit_open_seconds=0.4, max_concurrency=4),
            replicas=fleet.FixedReplicas(1),
        )
        sim.set_outage(True)
        backlog: asyncio.Queue[events.Event] = asyncio.Queue()
        for n in range(40):
            backlog.put_nowait(_event(n, key=f"conv-{n % 8}"))
        driver = asyncio.create_task(_drive(sink, backlog, lanes=4))
        outage_started = time.monotonic()
        await asyncio.sleep(2.5)
        outage_requests = sim.requests_total
        assert sink.limiter.snapshot().circuit is not throttling.CircuitState.CLOSED
        sim.set_outage(False)
        await asyncio.wait_for(driver, 30)
        await sink.aclose()
    # threshold failures (+ the others already in flight), then one probe per open period
    # (0.4 s, never shorter: the sinks do not double it, so a fleet finds the downstream back
    # within a period): at most 2.5 / 0.4 probes
    assert outage_requests <= 3 + 4 + 6, outage_requests
    after_opening = sim.requests_between(outage_started + 0.5, outage_started + 2.5)
    assert after_opening <= 2.0 / 0.4, after_opening
    delivered = {item.event_id for item in sim.accepted}
    assert delivered == {f"evt-{n}" for n in range(40)}
    assert not sim.duplicates()


async def test_secrets_never_reach_logs_reprs_or_errors(
    caplog: pytest.LogCaptureFixture, tmp_path: pathlib.Path
) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(SECRET + "\n")
    caplog.set_level(logging.DEBUG)
    async with webhook.WebhookSimulator(signing_secret=SECRET, fail_ratio=0.5, throttle_ratio=0.2) as sim:
        sink = webhook_sink.WebhookSink(
            _spec(sim.url, signing_secret={"file": str(key_file)}, circuit_failure_threshold=100),
            replicas=fleet.FixedReplicas(1),
        )
        outcomes = [await sink.deliver(_event(n)) for n in range(10)]
        await sink.aclose()
    assert sim.accepted  # the key was read and used
    secret = secrets.Secret(spec.SecretRef(file=str(key_file)), field="spec.sink.signingSecret")
    assert secret.reveal() == SECRET
    texts = [caplog.text, repr(sink), repr(secret), str(secret), *map(repr, outcomes)]
    missing = secrets.Secret(
        spec.SecretRef(env="NO_SUCH_VARIABLE_FOR_FANOUT"), field="spec.sink.signingSecret"
    )
    with pytest.raises(secrets.SecretError) as raised:
        missing.reveal()
    assert "NO_SUCH_VARIABLE_FOR_FANOUT" in str(raised.value)
    assert "spec.sink.signingSecret" in str(raised.value)
    for text in texts:
        assert SECRET not in text


async def test_a_missing_secret_fails_at_build_time_as_a_config_error() -> None:
    with pytest.raises(spec.ConfigError, match=r"spec\.sink\.signingSecret"):
        webhook_sink.WebhookSink(
            _spec("http://127.0.0.1:9/", signing_secret={"env": "NO_SUCH_VARIABLE_FOR_FANOUT"}),
            replicas=fleet.FixedReplicas(1),
        )


def test_secret_file_is_reread_on_refresh(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "token"
    path.write_text("old\n")
    secret = secrets.Secret(spec.SecretRef(file=str(path)))
    assert secret.reveal() == "old"
    path.write_text("new")
    assert secret.reveal() == "old"
    assert secret.refresh() == "new"
    path.write_text("")
    with pytest.raises(secrets.SecretError, match="empty"):
        secret.refresh()
