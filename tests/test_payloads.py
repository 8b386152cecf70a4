"""Events too large for SQS: the worker resolves S3 pointers from any producer.

Pure: the decoder takes a resolution's body, or its failure as the poison reason, and names
an unresolved pointer. Against moto: AWS's own ``amazon-sqs-extended-client`` sends 300 KB
events straight to SQS; the front door offloads and publishes through SNS with raw delivery
off (the pointer inside the notification); the worker delivers the real payloads, in order,
deletes the objects when asked, and dead-letters a pointer whose object is missing, with
its reason. When S3 throttles (a proxy in front of moto answering ``503 SlowDown`` for one
object), the message comes back later and is delivered; on a FIFO queue its conversation's
later messages wait for it.
"""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
from collections.abc import AsyncIterator
from typing import Any

import aiobotocore.session
import pytest

from fanout_core import offloading
from fanout_ingest import serving
from fanout_lab import harness
from fanout_lab.simulators import aws, faults, genesys, webhook, webhooks
from tests import sqs_backends, test_ingest_e2e
from workers import envelopes, running

BUCKET = "large-events"
SECRET = b"genesys-secret"


# --- pure -----------------------------------------------------------------------------


def test_a_resolved_body_is_decoded_instead_of_the_pointer() -> None:
    event = genesys.transcript("conv-1", "corr-1", size=2 * 1024 * 1024, event_time_ms=1_741_964_966_000)
    pointer = offloading.Pointer(BUCKET, "k")
    resolution = offloading.Resolution(pointer, body=json.dumps(event))
    decoded = envelopes.decode(offloading.pointer_body(pointer), resolution=resolution)
    assert decoded.event_id == "corr-1" and decoded.ordering_key == "conv-1"
    assert decoded.payload == event  # 2 MiB: over SQS's limit, within the resolved one


def test_a_failed_or_missing_resolution_is_poison_with_its_reason() -> None:
    pointer = offloading.Pointer(BUCKET, "gone")
    body = offloading.pointer_body(pointer)
    with pytest.raises(envelopes.PoisonMessage, match=r"s3://large-events/gone not found \(NoSuchKey\)"):
        envelopes.decode(
            body,
            resolution=offloading.Resolution(
                pointer, failure="S3 payload s3://large-events/gone not found (NoSuchKey)"
            ),
        )
    with pytest.raises(envelopes.PoisonMessage, match="S3 payload pointer that was not resolved"):
        envelopes.decode(body)
    sns = json.dumps({"Type": "Notification", "MessageId": "m", "Message": body})
    with pytest.raises(envelopes.PoisonMessage, match="SNS Message is an S3 payload pointer"):
        envelopes.decode(sns)


# --- against moto ---------------------------------------------------------------------


@pytest.fixture
async def s3(moto_server: aws.MotoServer) -> AsyncIterator[Any]:
    session = aiobotocore.session.get_session()
    async with session.create_client("s3") as client:
        await client.create_bucket(Bucket=BUCKET)
        yield client


def _extended_client_send(queue_url: str, bodies: list[str]) -> None:
    """What a producer using AWS's SQS extended client library does (boto3, synchronous)."""
    import boto3
    import sqs_extended_client  # noqa: F401  (patches boto3's SQS client)

    client: Any = boto3.session.Session().client("sqs")
    client.large_payload_support = BUCKET
    for body in bodies:
        client.send_message(QueueUrl=queue_url, MessageBody=body)


async def _run_worker(worker: running.Worker, until: Any, timeout: float = 60) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        assert await harness.wait_until(until, timeout=timeout), "the worker did not finish"
    finally:
        stop.set()
        await task


async def _objects(s3: Any) -> list[str]:
    reply = await s3.list_objects_v2(Bucket=BUCKET)
    return [item["Key"] for item in reply.get("Contents", [])]


async def test_events_sent_by_the_aws_sqs_extended_client_are_delivered(sqs: Any, s3: Any) -> None:
    source = await harness.make_queue(sqs, "payloads-extended")
    dead = await harness.make_queue(sqs, "payloads-extended-dlq")
    small = [
        event.detail for event in genesys.Generator(5).conversation(start_ms=1_741_964_966_000, length=3)
    ]
    conversation_id = small[0]["eventBody"]["conversationId"]
    big = genesys.transcript(
        conversation_id, "big-transcript", size=300_000, event_time_ms=small[-1]["eventBody"]["eventTime"] + 1
    )
    bodies = [json.dumps(event) for event in [*small, big]]
    assert os.environ["AWS_ENDPOINT_URL"]  # boto3 reaches moto through the standard variable
    await asyncio.to_thread(_extended_client_send, source, bodies)
    assert len(await _objects(s3)) == 1, "the library offloaded the large body itself"

    async with webhook.WebhookSimulator() as sim:
        document = harness.manifest(
            queue_url=source,
            sink_url=sim.url,
            dead_letter_url=dead,
            largePayloads={"deleteAfterDelivery": True},
        )
        worker = running.Worker(harness.consumer(document))

        async def delivered() -> bool:
            return len(sim.accepted) == 4 and await harness.queue_counts(sqs, source) == (0, 0)

        await _run_worker(worker, delivered)
    received = [request.json() for request in sim.accepted]
    assert received[-1] == big, "the real 300 KB payload, not the pointer"
    assert [event["metadata"]["CorrelationId"] for event in received] == [
        *(event["metadata"]["CorrelationId"] for event in small),
        "big-transcript",
    ], "in event-time order within the conversation"
    assert sim.accepted[-1].event_id == "big-transcript"
    assert await harness.drain_queue(sqs, dead) == []
    assert await harness.wait_until(lambda: _no_objects(s3), timeout=5), (
        "deleteAfterDelivery removed the object"
    )


async def _no_objects(s3: Any) -> bool:
    return await _objects(s3) == []


async def test_a_pointer_whose_object_is_missing_is_dead_lettered_with_its_reason(sqs: Any, s3: Any) -> None:
    source = await harness.make_queue(sqs, "payloads-missing")
    dead = await harness.make_queue(sqs, "payloads-missing-dlq")
    await asyncio.to_thread(
        _extended_client_send,
        source,
        [json.dumps(genesys.transcript("c", "x-1", size=300_000, event_time_ms=1))],
    )
    [key] = await _objects(s3)
    await s3.delete_object(Bucket=BUCKET, Key=key)
    async with webhook.WebhookSimulator() as sim:
        document = harness.manifest(queue_url=source, sink_url=sim.url, dead_letter_url=dead)
        worker = running.Worker(harness.consumer(document))

        async def dead_lettered() -> bool:
            return await harness.queue_counts(sqs, dead) == (1, 0)

        await _run_worker(worker, dead_lettered)
        assert sim.accepted == []
    [letter] = await harness.drain_queue(sqs, dead)
    assert letter["MessageAttributes"]["fanout.reason-class"]["StringValue"] == "poison"
    assert f"s3://{BUCKET}/{key} not found" in letter["MessageAttributes"]["fanout.reason"]["StringValue"]
    assert offloading.locate(letter["Body"]) is not None, (
        "the dead letter keeps the pointer (a redrive can resolve it)"
    )


async def test_the_front_door_and_a_worker_through_sns_with_large_transcripts(
    tmp_path: pathlib.Path, sns: Any, sqs: Any, s3: Any
) -> None:
    fabric = await test_ingest_e2e.make_fabric(sns, sqs, "payloads-gateway")
    secret = test_ingest_e2e.secret_file(tmp_path, "secret", SECRET)
    manifest = test_ingest_e2e.ingest_manifest(fabric.topic_arn, [secret], offload={"bucket": BUCKET})
    gateway = serving.Gateway(manifest, http_port=0)
    events = [
        event.detail for event in genesys.Generator(9).conversation(start_ms=1_741_964_966_000, length=5)
    ]
    conversation_id = events[0]["eventBody"]["conversationId"]
    big = genesys.transcript(
        conversation_id, "transcript-1", size=400_000, event_time_ms=events[2]["eventBody"]["eventTime"] + 1
    )
    async with serving.running(gateway), webhooks.Sender(f"{gateway.url}/events", SECRET) as sender:
        answers = [await sender.post(event) for event in [*events[:3], big, *events[3:]]]
    assert {answer.status for answer in answers} == {202}

    # The "everything" subscription has raw delivery off: the pointer sits in the SNS Message.
    async with webhook.WebhookSimulator() as sim:
        # One poller: two concurrent long polls may split a backlog between them, and a standard
        # queue promises no order across receives; within one poller's receives, resolving a
        # pointer must not let a later receive overtake it.
        document = harness.manifest(queue_url=fabric.everything, sink_url=sim.url, queue={"pollers": 1})
        worker = running.Worker(harness.consumer(document))

        async def delivered() -> bool:
            return len(sim.accepted) == 6 and await harness.queue_counts(sqs, fabric.everything) == (0, 0)

        await _run_worker(worker, delivered)
    received = [request.json() for request in sim.accepted]
    assert received[3] == big
    assert [event["metadata"]["CorrelationId"] for event in received] == [
        *(event["metadata"]["CorrelationId"] for event in events[:3]),
        "transcript-1",
        *(event["metadata"]["CorrelationId"] for event in events[3:]),
    ]
    assert len(await _objects(s3)) == 1, "kept: deleteAfterDelivery is off by default"


async def _send_pointer_conversation(
    sqs: Any, s3: Any, url: str, *, fifo: bool, key: str
) -> tuple[list[dict[str, Any]], str]:
    """A conversation whose second event is a large transcript behind an S3 pointer, sent in
    order before the worker starts (one receive takes it whole); returns the events and the
    object's path. One send per event, a few milliseconds apart: moto draws FIFO sequence
    numbers at random, so only distinct send times tell the worker the group's order."""
    small = [
        event.detail for event in genesys.Generator(17).conversation(start_ms=1_741_964_966_000, length=3)
    ]
    conversation_id = small[0]["eventBody"]["conversationId"]
    big = genesys.transcript(
        conversation_id,
        "throttled-transcript",
        size=300_000,
        event_time_ms=small[0]["eventBody"]["eventTime"] + 1,
    )
    payload = json.dumps(big).encode()
    await s3.put_object(Bucket=BUCKET, Key=key, Body=payload)
    events = [small[0], big, *small[1:]]
    for event in events:
        request: dict[str, Any] = {"QueueUrl": url, "MessageBody": json.dumps(event)}
        if event is big:
            request["MessageBody"] = offloading.pointer_body(offloading.Pointer(BUCKET, key))
            request["MessageAttributes"] = {
                offloading.SIZE_ATTRIBUTE: {"DataType": "Number", "StringValue": str(len(payload))}
            }
        if fifo:
            request["MessageGroupId"] = conversation_id
            request["MessageDeduplicationId"] = event["metadata"]["CorrelationId"]
        await sqs.send_message(**request)
        await asyncio.sleep(0.005)
    return events, f"/{BUCKET}/{key}"


async def _deliver_through_throttled_s3(
    monkeypatch: pytest.MonkeyPatch, moto_server: aws.MotoServer, sqs: Any, s3: Any, *, fifo: bool
) -> tuple[list[str], list[str]]:
    """The events delivered through an S3 that refuses the transcript's object once, in the
    order the downstream took them, and the order they were sent in."""
    suffix = ".fifo" if fifo else ""
    source = await harness.make_queue(sqs, f"payloads-throttled{suffix}", fifo=fifo)
    dead = await harness.make_queue(sqs, f"payloads-throttled-dlq{suffix}", fifo=fifo)
    events, path = await _send_pointer_conversation(sqs, s3, source, fifo=fifo, key=f"slow{suffix}")
    async with faults.FaultyEndpoint(moto_server.endpoint_url) as proxy, webhook.WebhookSimulator() as sim:
        refused = proxy.add(faults.Fault(method="GET", path=path, times=1))
        # The worker reaches S3 through the proxy (the standard variable), one attempt per call,
        # so the one SlowDown reaches the worker instead of being retried inside botocore.
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", proxy.url)
        monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
        document = harness.manifest(
            queue_url=source, sink_url=sim.url, dead_letter_url=dead, queue={"pollers": 1}
        )
        worker = running.Worker(harness.consumer(document))

        async def delivered() -> bool:
            return len(sim.accepted) == len(events) and await harness.queue_counts(sqs, source) == (0, 0)

        await _run_worker(worker, delivered, timeout=90)
    assert refused.injected == 1, "S3 refused the object once"
    assert proxy.forwarded >= 1, "then served it"
    received = {request.json()["metadata"]["CorrelationId"]: request.json() for request in sim.accepted}
    assert len(received) == len(events), "each event once"
    assert received["throttled-transcript"] == events[1], "the real payload"
    assert await harness.drain_queue(sqs, dead) == [], "throttling is not a poison"
    return [str(request.event_id) for request in sim.accepted], [
        event["metadata"]["CorrelationId"] for event in events
    ]


async def test_an_object_s3_cannot_serve_now_is_retried_and_delivered(
    monkeypatch: pytest.MonkeyPatch, moto_server: aws.MotoServer, sqs: Any, s3: Any
) -> None:
    delivered, sent = await _deliver_through_throttled_s3(monkeypatch, moto_server, sqs, s3, fifo=False)
    assert sorted(delivered) == sorted(sent)


async def test_on_a_fifo_queue_a_throttled_object_holds_back_the_later_events_of_its_group(
    monkeypatch: pytest.MonkeyPatch,
    moto_server: aws.MotoServer,
    sqs_backend: sqs_backends.SqsBackend,
    s3: Any,
) -> None:
    """The later events of the conversation came in the same receive as the pointer S3 could
    not serve: they wait with it, so none is delivered before it — on both SQS readings of a
    FIFO group lock (S3 stays on moto)."""
    delivered, sent = await _deliver_through_throttled_s3(
        monkeypatch, moto_server, sqs_backend.sqs, s3, fifo=True
    )
    assert delivered == sent
