"""Deduplication at the front door: a retry of an accepted event is answered 202, not published again.

The rules, with the publish step a recorder passed in and the workers' memory store (two
deduplicators sharing one store stand for two replicas sharing a table). Then against moto:
two gateways sharing a DynamoDB table publish a retried request once; a publish that failed
releases its claims, so the retry publishes; a table the gateway cannot use costs the
deduplication, never the traffic.
"""

from __future__ import annotations

import asyncio
import json
import pathlib
from collections.abc import Sequence
from typing import Any

import pytest

from fanout_core import idempotency
from fanout_ingest import classifying, deduplicating, publishing, serving, telemetry
from fanout_lab import harness
from fanout_lab.simulators import webhooks
from tests import test_dedupe, test_ingest_e2e

SECRET = b"genesys-secret-1"
TOPIC = "genesys-interactions"


def inbound(event: dict[str, Any]) -> classifying.InboundEvent:
    text = json.dumps(event)
    [described] = classifying.classify(text.encode(), ordering_key="conversationId", max_events=1)
    return described


class Recorder:
    """The publish step: records what it was asked to publish; scripted failures, an optional gate."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.failures: list[publishing.PublishError] = []
        self.gate: asyncio.Event | None = None

    async def __call__(self, events: Sequence[classifying.InboundEvent], timeout: float) -> None:
        self.calls.append([event.event_id for event in events])
        if self.gate is not None:
            await self.gate.wait()
        if self.failures:
            raise self.failures.pop(0)

    @property
    def published(self) -> list[str]:
        return [event_id for call in self.calls for event_id in call]


def deduplicator(store: idempotency.IdempotencyStore | None) -> deduplicating.Deduplicator:
    return deduplicating.Deduplicator(
        store, topic_name=TOPIC, lease_seconds=10, telemetry=telemetry.IngestTelemetry()
    )


@pytest.fixture
def events() -> list[classifying.InboundEvent]:
    return [inbound(event) for event in test_ingest_e2e.conversation(seed=4, length=3)]


async def test_a_retry_and_a_repeat_inside_a_request_are_not_published_again(
    events: list[classifying.InboundEvent],
) -> None:
    door, recorder = deduplicator(idempotency.MemoryStore(ttl_seconds=300)), Recorder()
    first = await door.publish([events[0], events[1], events[0]], recorder, timeout=5)
    retry = await door.publish(events, recorder, timeout=5)
    assert (first.published, first.duplicates) == (2, 1)
    assert (retry.published, retry.duplicates) == (1, 2)
    assert recorder.published == [events[0].event_id, events[1].event_id, events[2].event_id]


async def test_without_a_store_only_repeats_inside_a_request_are_dropped(
    events: list[classifying.InboundEvent],
) -> None:
    door, recorder = deduplicator(None), Recorder()
    await door.publish([events[0], events[0]], recorder, timeout=5)
    await door.publish([events[0]], recorder, timeout=5)
    assert recorder.published == [events[0].event_id] * 2


async def test_a_batch_published_in_part_is_retried_for_the_rest_only(
    events: list[classifying.InboundEvent],
) -> None:
    door, recorder = deduplicator(idempotency.MemoryStore(ttl_seconds=300)), Recorder()
    recorder.failures.append(
        publishing.PublishFailed(
            "SNS refused the entry: InternalError", code="InternalError", published=(True, False, True)
        )
    )
    with pytest.raises(publishing.PublishFailed):
        await door.publish(events, recorder, timeout=5)
    await asyncio.sleep(0)  # the claims' completions and releases run after the answer
    retry = await door.publish(events, recorder, timeout=5)
    assert (retry.published, retry.duplicates) == (1, 2)
    assert recorder.calls[1] == [events[1].event_id], "only the entry SNS refused is published again"


async def test_concurrent_requests_for_one_event_publish_it_once_and_share_its_fate(
    events: list[classifying.InboundEvent],
) -> None:
    door, recorder = deduplicator(idempotency.MemoryStore(ttl_seconds=300)), Recorder()
    recorder.gate = asyncio.Event()
    first = asyncio.create_task(door.publish(events[:2], recorder, timeout=5))
    await asyncio.sleep(0.01)
    second = asyncio.create_task(door.publish(events[1:], recorder, timeout=5))
    await asyncio.sleep(0.05)
    assert not second.done(), "no 202 before the first request's publish of the shared event is known"
    recorder.gate.set()
    outcomes = await asyncio.gather(first, second)
    assert [(outcome.published, outcome.duplicates) for outcome in outcomes] == [(2, 0), (1, 1)]
    assert sorted(recorder.published) == sorted(event.event_id for event in events)

    # The same, when the first request's publish fails: the second fails too (and is retried).
    failing, recorder = deduplicator(idempotency.MemoryStore(ttl_seconds=300)), Recorder()
    recorder.gate = asyncio.Event()
    recorder.failures.append(publishing.PublishFailed("SNS: EndpointConnectionError", code="Endpoint"))
    first = asyncio.create_task(failing.publish(events[:1], recorder, timeout=5))
    await asyncio.sleep(0.01)
    second = asyncio.create_task(failing.publish(events[:1], recorder, timeout=5))
    await asyncio.sleep(0.01)
    recorder.gate.set()
    answers = await asyncio.gather(first, second, return_exceptions=True)
    assert all(isinstance(answer, publishing.PublishFailed) for answer in answers)
    assert len(recorder.calls) == 1


async def test_an_event_another_replica_is_publishing_waits_for_its_outcome(
    events: list[classifying.InboundEvent],
) -> None:
    table = idempotency.MemoryStore(ttl_seconds=300)  # what two replicas share
    replica_a, replica_b = deduplicator(table), deduplicator(table)
    recorder_a, recorder_b = Recorder(), Recorder()
    recorder_a.gate = asyncio.Event()
    held = asyncio.create_task(replica_a.publish(events[:1], recorder_a, timeout=5))
    await asyncio.sleep(0.01)
    retried = asyncio.create_task(replica_b.publish(events[:1], recorder_b, timeout=5))
    await asyncio.sleep(0.1)
    assert not retried.done()
    recorder_a.gate.set()
    await held
    outcome = await retried
    assert (outcome.published, outcome.duplicates) == (0, 1) and recorder_b.calls == []

    # Replica A's publish fails: its claim is released, and B publishes the event itself.
    recorder_a.gate = asyncio.Event()
    recorder_a.failures.append(publishing.PublishFailed("SNS: Throttling", code="Throttling"))
    held = asyncio.create_task(replica_a.publish(events[1:2], recorder_a, timeout=5))
    await asyncio.sleep(0.01)
    retried = asyncio.create_task(replica_b.publish(events[1:2], recorder_b, timeout=5))
    await asyncio.sleep(0.05)
    recorder_a.gate.set()
    with pytest.raises(publishing.PublishFailed):
        await held
    outcome = await retried
    assert (outcome.published, outcome.duplicates) == (1, 0)
    assert recorder_b.published == [events[1].event_id]

    # A claim nobody settles (a replica died mid-publish) is waited for until the deadline only.
    await table.claim(deduplicating.published_key(TOPIC, events[2].event_id), lease_seconds=60)
    with pytest.raises(publishing.TimedOut):
        await replica_b.publish(events[2:], recorder_b, timeout=0.3)
    assert recorder_b.published == [events[1].event_id]


# --- against moto -----------------------------------------------------------------------


@pytest.fixture
async def table(dynamodb: Any) -> str:
    return await test_dedupe.create_table(dynamodb)


def _manifest(topic_arn: str, secret: pathlib.Path, **idempotency_spec: Any) -> Any:
    return test_ingest_e2e.ingest_manifest(topic_arn, [secret], idempotency=idempotency_spec)


async def test_two_gateways_sharing_a_table_publish_a_retried_request_once(
    tmp_path: pathlib.Path, sns: Any, sqs: Any, table: str
) -> None:
    fabric = await test_ingest_e2e.make_fabric(sns, sqs, "dedupe-shared")
    secret = test_ingest_e2e.secret_file(tmp_path, "s", SECRET)
    manifest = _manifest(fabric.topic_arn, secret, store="dynamodb", table=table)
    batch = test_ingest_e2e.conversation(seed=6, length=3)
    gateways = serving.Gateway(manifest, http_port=0), serving.Gateway(manifest, http_port=0)
    async with serving.running(gateways[0]) as one, serving.running(gateways[1]) as other:
        async with webhooks.Sender(f"{one.url}/events", SECRET) as sender:
            accepted = await sender.post(batch)
        async with webhooks.Sender(f"{other.url}/events", SECRET) as sender:
            # Genesys did not get the 202 and retries the batch; the load balancer picks the other pod.
            retried = await sender.post(batch)
            longer = await sender.post([*batch, test_ingest_e2e.conversation(seed=7, length=1)[0]])
    assert accepted.status == retried.status == longer.status == 202
    assert json.loads(retried.body) == {"accepted": 3, "duplicates": 3}
    assert json.loads(longer.body) == {"accepted": 4, "duplicates": 3}
    published = await test_ingest_e2e.drain_deleting(sqs, fabric.everything)
    assert len(published) == 4, "each event once"


async def test_a_failed_publish_releases_its_claims_so_the_retry_publishes(
    tmp_path: pathlib.Path, sns: Any, sqs: Any, table: str
) -> None:
    # The topic does not exist yet: SNS refuses the publish (503); then it is created.
    topic_arn = "arn:aws:sns:us-east-1:123456789012:dedupe-released"
    secret = test_ingest_e2e.secret_file(tmp_path, "s", SECRET)
    gateway = serving.Gateway(_manifest(topic_arn, secret, store="dynamodb", table=table), http_port=0)
    batch = test_ingest_e2e.conversation(seed=8, length=2)
    async with serving.running(gateway), webhooks.Sender(f"{gateway.url}/events", SECRET) as sender:
        refused = await sender.post(batch)
        fabric = await test_ingest_e2e.make_fabric(sns, sqs, "dedupe-released")
        assert fabric.topic_arn == topic_arn
        retried = await sender.post(batch)
    assert refused.status == 503
    assert retried.status == 202 and json.loads(retried.body) == {"accepted": 2}
    assert len(await harness.drain_queue(sqs, fabric.everything)) == 2


async def test_a_store_that_cannot_answer_costs_the_deduplication_not_the_traffic(
    tmp_path: pathlib.Path, sns: Any, sqs: Any
) -> None:
    fabric = await test_ingest_e2e.make_fabric(sns, sqs, "dedupe-no-table")
    secret = test_ingest_e2e.secret_file(tmp_path, "s", SECRET)
    gateway = serving.Gateway(
        _manifest(fabric.topic_arn, secret, store="dynamodb", table="no-such-table"), http_port=0
    )
    event = test_ingest_e2e.conversation(seed=9, length=1)[0]
    async with serving.running(gateway), webhooks.Sender(f"{gateway.url}/events", SECRET) as sender:
        answers = [await sender.post(event), await sender.post(event)]
        session = sender._session
        assert session is not None
        async with session.get(f"{gateway.url}/metrics") as metrics:
            text = await metrics.text()
    assert [answer.status for answer in answers] == [202, 202]
    assert len(await harness.drain_queue(sqs, fabric.everything)) == 2, "published, without deduplication"
    assert 'fanout_ingest_idempotency_errors_total{operation="claim"}' in text


async def test_the_default_memory_store_answers_a_retry_to_the_same_pod_without_publishing(
    tmp_path: pathlib.Path, sns: Any, sqs: Any
) -> None:
    fabric = await test_ingest_e2e.make_fabric(sns, sqs, "dedupe-memory")
    secret = test_ingest_e2e.secret_file(tmp_path, "s", SECRET)
    gateway = serving.Gateway(test_ingest_e2e.ingest_manifest(fabric.topic_arn, [secret]), http_port=0)
    off = serving.Gateway(_manifest(fabric.topic_arn, secret, enabled=False), http_port=0)
    event = test_ingest_e2e.conversation(seed=10, length=1)[0]
    async with serving.running(gateway), webhooks.Sender(f"{gateway.url}/events", SECRET) as sender:
        answers = [await sender.post(event), await sender.post(event)]
    assert [json.loads(answer.body) for answer in answers] == [
        {"accepted": 1},
        {"accepted": 1, "duplicates": 1},
    ]
    assert len(await harness.drain_queue(sqs, fabric.everything)) == 1
    async with serving.running(off), webhooks.Sender(f"{off.url}/events", SECRET) as sender:
        answers = [await sender.post(event), await sender.post(event)]
    assert [answer.status for answer in answers] == [202, 202]
    assert len(await harness.drain_queue(sqs, fabric.everything)) == 2, "idempotency.enabled: false"
