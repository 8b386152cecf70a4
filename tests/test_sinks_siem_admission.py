"""The siem sink admitting a batch, driven by the real Processor against the HEC simulator
over loopback: a store that answers over the network (DynamoDB's shape: each claim waits)
is asked for the batch's events concurrently; the memory store, which answers in process,
in turn — the same claims, the same deliveries."""

from __future__ import annotations

import asyncio
import contextlib
import json

import pytest

from fanout_core import idempotency as dedupe
from fanout_core import spec as spec_model
from fanout_lab import harness
from fanout_lab.simulators import hec
from workers import events, fleet, processing, telemetry
from workers.sinks import siem

TOKEN = "11111111-2222-3333-4444-555555555555"
QUEUE = "https://sqs.us-east-1.amazonaws.com/123456789012/siem-admission"
BATCH = 20


class SlowStore(dedupe.MemoryStore):
    """A memory store whose claims each wait 50 ms, as a remote store's round trip does,
    counting how many are in flight at once."""

    answers_in_process = False

    def __init__(self) -> None:
        super().__init__(ttl_seconds=3600)
        self.in_flight = 0
        self.most_in_flight = 0
        self.claims = 0

    async def claim(self, event_id: events.EventId, *, lease_seconds: float) -> dedupe.ClaimState:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(0.05)
            self.claims += 1
            return await super().claim(event_id, lease_seconds=lease_seconds)
        finally:
            self.in_flight -= 1


@pytest.fixture(autouse=True)
def _token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEC_TOKEN", TOKEN)


def _body(n: int) -> str:
    return json.dumps(
        {
            "topicName": f"v2.detail.events.conversation.c-{n}.customer.start",
            "eventBody": {"conversationId": f"c-{n}", "eventTime": 1_741_964_967_000 + n},
            "metadata": {"CorrelationId": f"e-{n}"},
        }
    )


async def _deliver_one_batch(url: str, store: dedupe.IdempotencyStore) -> harness.RecordingSettlement:
    """``BATCH`` events of as many conversations through a Processor feeding a HecSink whose
    batch fills at ``BATCH``; returns once every message is settled."""
    spec = spec_model.FanoutConsumerSpec.model_validate(
        {
            "queue": {"url": QUEUE, "waitTimeSeconds": 1, "pollers": 1},
            "sink": {
                "type": "siem",
                "url": url,
                "maxConcurrency": BATCH,
                "siem": {"token": {"env": "HEC_TOKEN"}, "maxBatchEvents": BATCH, "lingerSeconds": 5},
            },
            "idempotency": {"store": "memory", "ttlSeconds": 3600},
        }
    )
    sink = siem.HecSink(spec.sink, replicas=fleet.FixedReplicas(1))
    settler = harness.RecordingSettlement()
    processor = processing.Processor(
        spec=spec,
        sink=sink,
        store=store,
        settler=settler,
        telemetry=telemetry.WorkerTelemetry(queue_url=QUEUE, sink_name="siem"),
    )
    received = [harness.sqs_message(_body(n)) for n in range(BATCH)]
    for message in received:
        settler.track(message)
    dispatcher = asyncio.create_task(processor.run())
    try:
        processor.submit(received)
        assert await harness.wait_until(lambda: not settler.in_hand, timeout=10, interval=0.01)
    finally:
        await processor.drain(1.0)
        dispatcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await dispatcher
        await sink.aclose()
    return settler


async def test_a_remote_store_claims_a_batch_concurrently() -> None:
    store = SlowStore()
    async with hec.HecSimulator(token=TOKEN) as sim:
        settler = await _deliver_one_batch(sim.url, store)
    assert sim.batch_sizes == [BATCH]
    assert settler.count("delete") == BATCH
    assert store.claims == BATCH
    assert store.most_in_flight == BATCH, "every claim of the batch was in flight at once"


async def test_the_memory_store_admits_a_batch_in_turn_with_the_same_outcome() -> None:
    store = dedupe.MemoryStore(ttl_seconds=3600)
    async with hec.HecSimulator(token=TOKEN) as sim:
        settler = await _deliver_one_batch(sim.url, store)
    assert sim.batch_sizes == [BATCH]
    assert sorted(item.event_id or "" for item in sim.accepted) == sorted(f"e-{n}" for n in range(BATCH))
    assert settler.count("delete") == BATCH
    for n in range(BATCH):  # each claimed, delivered and completed once
        claim = await store.claim(events.EventId(f"e-{n}"), lease_seconds=5)
        assert claim is dedupe.ClaimState.COMPLETED
