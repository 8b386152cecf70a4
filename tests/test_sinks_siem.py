"""The Splunk HEC sink against the HEC simulator over loopback: batching by count, bytes
and linger, the event object format, a cancelled delivery, partial failure (400/6), busy
(503/9), a bad token (403/4), 413 splitting, and the outage circuit."""

from __future__ import annotations

import asyncio
import json
import logging
import pathlib
from typing import Any

import pytest

from fanout_core import spec
from fanout_lab.simulators import hec
from workers import events, fleet, throttling
from workers.sinks import siem

TOKEN = "11111111-2222-3333-4444-555555555555"


def _event(n: int, key: str | None = None, size: int = 0) -> events.Event:
    key = key or f"conv-{n}"
    payload = {"eventBody": {"conversationId": key, "eventTime": 1_700_000_000_000 + n, "pad": "x" * size}}
    return events.Event(
        events.EventId(f"evt-{n}"),
        "v2.detail.events.conversation.{id}.customer.start",
        payload,
        key,
        event_time_ms=1_700_000_000_000 + n,
    )


def _sink(url: str, *, env: str = "HEC_TOKEN", **siem_spec: Any) -> siem.HecSink:
    sink_spec = spec.SinkSpec.model_validate(
        {
            "type": "siem",
            "url": url,
            "siem": {"token": {"env": env}, "index": "contact_center", "host": "worker-0", **siem_spec},
            "circuitFailureThreshold": 3,
            "circuitOpenSeconds": 0.3,
        }
    )
    return siem.HecSink(sink_spec, replicas=fleet.FixedReplicas(1))


@pytest.fixture(autouse=True)
def _token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEC_TOKEN", TOKEN)


def _sink_with(url: str, siem_spec: dict[str, Any]) -> siem.HecSink:
    sink_spec = spec.SinkSpec.model_validate(
        {
            "type": "siem",
            "url": url,
            "siem": siem_spec,
            "circuitFailureThreshold": 3,
            "circuitOpenSeconds": 0.3,
        }
    )
    return siem.HecSink(sink_spec, replicas=fleet.FixedReplicas(1))


async def _deliver_all(sink: siem.HecSink, batch: list[events.Event]) -> list[events.Outcome]:
    return list(await asyncio.gather(*(sink.deliver(event) for event in batch)))


async def test_batches_by_count_then_linger_with_the_hec_event_format() -> None:
    async with hec.HecSimulator(token=TOKEN) as sim:
        sink = _sink(sim.url, max_batch_events=5, linger_seconds=0.05)
        outcomes = await _deliver_all(sink, [_event(n) for n in range(12)])
        await sink.aclose()
    assert all(isinstance(outcome, events.Delivered) for outcome in outcomes)
    assert sim.batch_sizes == [5, 5, 2]
    assert [item.event_id for item in sim.accepted] == [f"evt-{n}" for n in range(12)]
    first = json.loads(sim.accepted[0].body)
    assert first == {
        "time": 1_700_000_000.0,
        "host": "worker-0",
        "source": "genesys-cloud",
        "sourcetype": "genesys:event",
        "index": "contact_center",
        "event": _event(0).payload,
        "fields": {
            "event_type": "v2.detail.events.conversation.{id}.customer.start",
            "event_id": "evt-0",
            "ordering_key": "conv-0",
        },
    }
    assert json.loads(sim.accepted[1].body)["time"] == pytest.approx(1_700_000_000.001)
    assert sim.accepted[0].headers["Authorization"] == f"Splunk {TOKEN}"
    assert sim.accepted[0].path == "/services/collector/event"


async def test_batches_stay_under_the_byte_limit() -> None:
    async with hec.HecSimulator(token=TOKEN) as sim:
        sink = _sink(sim.url, max_batch_bytes=1024, linger_seconds=0.05)
        outcomes = await _deliver_all(sink, [_event(n, size=150) for n in range(9)])
        await sink.aclose()
    assert all(isinstance(outcome, events.Delivered) for outcome in outcomes)
    sizes = [len(item.body) for item in sim.accepted]
    assert 300 < sizes[0] < 512  # so two fit in 1 KiB and three do not
    assert sim.batch_sizes == [2, 2, 2, 2, 1]


async def test_a_lone_event_waits_only_the_linger() -> None:
    async with hec.HecSimulator(token=TOKEN) as sim:
        sink = _sink(sim.url, max_batch_events=100, linger_seconds=0.05)
        outcome = await asyncio.wait_for(sink.deliver(_event(1)), 5)
        await sink.aclose()
    assert isinstance(outcome, events.Delivered)
    assert sim.batch_sizes == [1]


class _Admissions:
    """Admissions that answer at once and remember whom they admitted."""

    def __init__(self, count: int) -> None:
        self.admitted: list[int] = []
        self.count = count
        self.all_admitted = asyncio.Event()

    def for_event(self, n: int) -> Any:
        admissions = self

        class Admission:
            immediate = True

            async def __call__(self) -> bool:
                admissions.admitted.append(n)
                if len(admissions.admitted) == admissions.count:
                    admissions.all_admitted.set()
                return True

        return Admission()


async def test_a_delivery_cancelled_before_its_batch_leaves_is_neither_claimed_nor_sent() -> None:
    """Its message went back to the queue (the runtime gives a cancelled delivery back): the
    event must not be claimed in the idempotency store or reach the downstream now."""
    admissions = _Admissions(4)
    async with hec.HecSimulator(token=TOKEN) as sim:
        sink = _sink(sim.url, max_batch_events=5, linger_seconds=5)
        first = asyncio.create_task(sink.deliver(_event(0), admissions.for_event(0)))
        await asyncio.sleep(0)  # in the open batch, waiting
        first.cancel()
        rest = [asyncio.create_task(sink.deliver(_event(n), admissions.for_event(n))) for n in range(1, 5)]
        await asyncio.sleep(0)
        await sink.flush()
        outcomes = await asyncio.wait_for(asyncio.gather(*rest), 5)
        await sink.aclose()
    assert first.cancelled()
    assert all(isinstance(outcome, events.Delivered) for outcome in outcomes)
    assert admissions.admitted == [1, 2, 3, 4]
    assert sim.batch_sizes == [4]


async def test_a_delivery_cancelled_while_its_batch_is_on_the_wire_leaves_the_rest_answered() -> None:
    """A deliverer cancelled (shutdown's grace ran out) once its event was admitted and sent:
    the batch goes on, and every other event of it gets the batch's answer."""
    admissions = _Admissions(5)
    async with hec.HecSimulator(token=TOKEN, latency=0.5) as sim:
        sink = _sink(sim.url, max_batch_events=5, linger_seconds=5)
        deliveries = [asyncio.create_task(sink.deliver(_event(n), admissions.for_event(n))) for n in range(5)]
        await asyncio.wait_for(admissions.all_admitted.wait(), 5)  # the request is going out
        deliveries[0].cancel()
        outcomes = await asyncio.wait_for(asyncio.gather(*deliveries, return_exceptions=True), 5)
        await sink.aclose()
    assert isinstance(outcomes[0], asyncio.CancelledError)
    assert all(isinstance(outcome, events.Delivered) for outcome in outcomes[1:])
    assert sim.batch_sizes == [5]


async def test_partial_failure_400_6_splits_outcomes_at_the_invalid_event() -> None:
    async with hec.HecSimulator(token=TOKEN, reject_event_ids={"evt-3"}) as sim:
        sink = _sink(sim.url, max_batch_events=6, linger_seconds=5)
        outcomes = await _deliver_all(sink, [_event(n) for n in range(6)])
        await sink.aclose()
    assert sim.batch_sizes == [6]
    assert [type(outcome) for outcome in outcomes] == [
        events.Delivered,
        events.Delivered,
        events.Delivered,
        events.Permanent,
        events.Retry,
        events.Retry,
    ]
    permanent = outcomes[3]
    assert isinstance(permanent, events.Permanent)
    assert "code 6" in permanent.reason
    assert [item.event_id for item in sim.accepted] == ["evt-0", "evt-1", "evt-2"]
    # the sink is not punished for one bad event
    assert sink.limiter.snapshot().circuit is throttling.CircuitState.CLOSED


async def test_busy_503_9_throttles_every_event_of_the_batch() -> None:
    async with hec.HecSimulator(token=TOKEN, throttle_ratio=1.0, retry_after=2) as sim:
        sink = _sink(sim.url, max_batch_events=3, linger_seconds=5)
        outcomes = await _deliver_all(sink, [_event(n) for n in range(3)])
        assert not sink.accepting  # Retry-After pauses the sink
        await sink.aclose()
    for outcome in outcomes:
        assert isinstance(outcome, events.Retry)
        assert outcome.throttled
        assert outcome.delay_seconds == 2
        assert "code 9" in outcome.reason
    assert not sim.accepted


async def test_a_refused_token_dead_letters_nothing_and_a_rotated_token_is_picked_up_by_the_probe(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    token_file = tmp_path / "hec-token"
    token_file.write_text("wrong-token-value-0000")
    async with hec.HecSimulator(token=TOKEN) as sim:
        sink = _sink_with(
            sim.url, {"token": {"file": str(token_file)}, "maxBatchEvents": 2, "lingerSeconds": 5}
        )
        outcomes = await _deliver_all(sink, [_event(n) for n in range(2)])
        for outcome in outcomes:
            assert isinstance(outcome, events.Refused)  # the token's fault, never the events'
            assert "403 code 4" in outcome.reason
        assert not sink.accepting  # one refusal opens the circuit: the pollers stop
        token_file.write_text(TOKEN)
        await asyncio.wait_for(sink.wait_accepting(), 5)
        again = await _deliver_all(sink, [_event(n) for n in range(2)])
        await sink.aclose()
    assert all(isinstance(outcome, events.Delivered) for outcome in again)
    errors = [record for record in caplog.records if record.levelno == logging.ERROR]
    assert errors
    assert "spec.sink.siem.token" in errors[0].getMessage()
    assert "wrong-token-value-0000" not in caplog.text


async def test_413_splits_the_batch_until_it_fits() -> None:
    async with hec.HecSimulator(token=TOKEN, max_body_bytes=700) as sim:
        sink = _sink(sim.url, max_batch_events=8, linger_seconds=5)
        outcomes = await _deliver_all(sink, [_event(n, size=150) for n in range(8)])
        await sink.aclose()
    assert all(isinstance(outcome, events.Delivered) for outcome in outcomes)
    assert sorted(item.event_id or "" for item in sim.accepted) == sorted(f"evt-{n}" for n in range(8))
    assert sim.status_counts[413] >= 1
    assert max(sim.batch_sizes) <= 2


async def test_outage_opens_the_circuit_and_recovers() -> None:
    async with hec.HecSimulator(token=TOKEN) as sim:
        sink = _sink(sim.url, max_batch_events=1, linger_seconds=0)
        sim.set_outage(True)
        for n in range(3):
            outcome = await sink.deliver(_event(n))
            assert isinstance(outcome, events.Retry)
        assert not sink.accepting
        assert sink.limiter.snapshot().circuit is throttling.CircuitState.OPEN
        during = sim.requests_total
        sim.set_outage(False)
        await asyncio.wait_for(sink.wait_accepting(), 5)
        assert isinstance(await sink.deliver(_event(9)), events.Delivered)
        await sink.aclose()
    assert during == 3
    assert sink.limiter.snapshot().circuit is throttling.CircuitState.CLOSED


def test_a_missing_token_is_a_config_error() -> None:
    sink_spec = spec.SinkSpec.model_validate({"type": "siem", "url": "http://127.0.0.1:9"})
    with pytest.raises(spec.ConfigError, match=r"spec\.sink\.siem\.token"):
        siem.HecSink(sink_spec, replicas=fleet.FixedReplicas(1))
