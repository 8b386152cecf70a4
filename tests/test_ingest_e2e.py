"""The front door against moto over loopback: every answer, rotation, FIFO, offloading.

A real SNS topic with SQS subscriptions (one with a filter policy on ``eventCategory``, one
with raw delivery off), a real S3 bucket, the gateway serving on a free port, and a
Genesys-like sender (lab) posting signed webhooks.
"""

from __future__ import annotations

import asyncio
import json
import pathlib
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import aiobotocore.session
import pytest
from aiohttp import web

from fanout_core import offloading
from fanout_ingest import config, serving
from fanout_lab import harness
from fanout_lab.simulators import aws, genesys, webhooks

SECRET = b"genesys-secret-1"


@pytest.fixture
async def s3(moto_server: aws.MotoServer) -> AsyncIterator[Any]:
    session = aiobotocore.session.get_session()
    async with session.create_client("s3") as client:
        yield client


class Fabric:
    """A topic and its subscribed queues."""

    def __init__(self, topic_arn: str, conversations: str, everything: str) -> None:
        self.topic_arn = topic_arn
        self.conversations = conversations
        """Raw delivery, filter policy eventCategory = conversation."""
        self.everything = everything
        """Raw delivery off: SNS notifications."""


async def make_fabric(sns: Any, sqs: Any, name: str, *, fifo: bool = False) -> Fabric:
    suffix = ".fifo" if fifo else ""
    attributes = {"FifoTopic": "true", "ContentBasedDeduplication": "false"} if fifo else {}
    topic = (await sns.create_topic(Name=name + suffix, Attributes=attributes))["TopicArn"]
    conversations = await harness.make_queue(sqs, f"{name}-conversations{suffix}", fifo=fifo)
    everything = await harness.make_queue(sqs, f"{name}-everything{suffix}", fifo=fifo)
    for url, raw, policy in (
        (conversations, "true", {"eventCategory": ["conversation"]}),
        (everything, "false", None),
    ):
        arn = (await sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"]))["Attributes"][
            "QueueArn"
        ]
        subscription_attributes = {"RawMessageDelivery": raw}
        if policy:
            subscription_attributes["FilterPolicy"] = json.dumps(policy)
        await sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=arn, Attributes=subscription_attributes)
    return Fabric(topic, conversations, everything)


def ingest_manifest(topic_arn: str, secret_files: list[pathlib.Path], **spec: Any) -> config.FanoutIngest:
    document = {
        "apiVersion": "fanout.dev/v1alpha1",
        "kind": "FanoutIngest",
        "metadata": {"name": "genesys-ingest"},
        "spec": {
            "topic": {"arn": topic_arn},
            "sources": [{"name": "genesys", "secrets": [{"file": str(path)} for path in secret_files]}],
            **spec,
        },
    }
    return config.parse(document)


def secret_file(tmp_path: pathlib.Path, name: str, value: bytes) -> pathlib.Path:
    path = tmp_path / name
    path.write_bytes(value)
    return path


async def drain_deleting(sqs: Any, url: str) -> list[dict[str, Any]]:
    """Receive and delete until empty (a FIFO group is locked while a message is in flight)."""
    found: list[dict[str, Any]] = []
    for _ in range(100):
        batch = await harness.drain_queue(sqs, url)
        if not batch:
            break
        found.extend(batch)
        for message in batch:
            await sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
    return found


def conversation(seed: int = 1, length: int = 4) -> list[dict[str, Any]]:
    return [
        event.detail
        for event in genesys.Generator(seed).conversation(start_ms=1_741_964_966_000, length=length)
    ]


async def test_signed_events_are_published_with_attributes_and_reach_filtered_subscriptions(
    tmp_path: pathlib.Path, sns: Any, sqs: Any
) -> None:
    fabric = await make_fabric(sns, sqs, "ingest-basic")
    events = conversation()
    snapshot = {
        "topicName": "v2.routing.queues.5f8e2c1a-1111-4222-8333-944455556666.conversations",
        "eventBody": {"id": events[0]["eventBody"]["conversationId"]},
        "metadata": {"CorrelationId": "snapshot-1"},
    }
    gateway = serving.Gateway(
        ingest_manifest(fabric.topic_arn, [secret_file(tmp_path, "s", SECRET)]), http_port=0
    )
    async with serving.running(gateway), webhooks.Sender(f"{gateway.url}/events", SECRET) as sender:
        answers = [await sender.post(event) for event in events[:2]]
        answers.append(await sender.post([*events[2:], snapshot]))  # a batch
        hex_sender = webhooks.Sender(sender.url, SECRET, encoding=config.DigestEncoding.HEX)
        async with hex_sender:
            hex_answer = await hex_sender.post(
                {"topicName": "custom.thing", "metadata": {"CorrelationId": "hex-1"}}
            )
    assert [answer.status for answer in answers] == [202, 202, 202]
    assert json.loads(answers[2].body) == {"accepted": 3}
    assert hex_answer.status == 202

    raw = await harness.drain_queue(sqs, fabric.conversations)
    assert sorted(json.loads(m["Body"])["metadata"]["CorrelationId"] for m in raw) == sorted(
        event["metadata"]["CorrelationId"] for event in events
    ), "the filter policy keeps conversation events only, and each arrives once"
    by_id = {json.loads(m["Body"])["metadata"]["CorrelationId"]: m for m in raw}
    first = by_id[events[0]["metadata"]["CorrelationId"]]
    assert json.loads(first["Body"]) == events[0]  # the event as sent, no envelope
    attributes = {name: value["StringValue"] for name, value in first["MessageAttributes"].items()}
    assert attributes["eventType"] == "v2.detail.events.conversation.{id}.customer.start"
    assert attributes["eventCategory"] == "conversation"
    assert attributes["conversationId"] == events[0]["eventBody"]["conversationId"]
    assert attributes["eventId"] == events[0]["metadata"]["CorrelationId"]
    assert attributes["source"] == "genesys"
    assert attributes["traceparent"].startswith("00-") and len(attributes["traceparent"]) == 55

    notifications = await harness.drain_queue(sqs, fabric.everything)
    assert len(notifications) == len(events) + 2
    categories = sorted(
        json.loads(m["Body"])["MessageAttributes"]["eventCategory"]["Value"] for m in notifications
    )
    assert categories == ["conversation"] * len(events) + ["other", "queue"]


async def test_requests_that_must_not_be_retried_get_4xx_and_publish_nothing(
    tmp_path: pathlib.Path, sns: Any, sqs: Any
) -> None:
    fabric = await make_fabric(sns, sqs, "ingest-refused")
    manifest = ingest_manifest(
        fabric.topic_arn, [secret_file(tmp_path, "s", SECRET)], limits={"maxBodyBytes": 4096}
    )
    gateway = serving.Gateway(manifest, http_port=0)
    event = conversation()[0]
    async with serving.running(gateway), webhooks.Sender(f"{gateway.url}/events", SECRET) as sender:
        wrong_secret = await sender.post(event, secret=b"an-old-secret")
        unsigned = await sender.post_body(
            json.dumps(event).encode(), headers={"Content-Type": "application/json"}
        )
        tampered_body = json.dumps(event).encode()
        tampered = await sender.post_body(
            tampered_body.replace(b"VOICE", b"CHAT"), headers=sender.headers(tampered_body)
        )
        not_event = await sender.post_body(b"[1, 2]")
        not_json = await sender.post_body(b"{broken")
        too_large = await sender.post_body(b'{"pad": "' + b"a" * 5000 + b'"}')
        authentic = await sender.post(event)
    assert [wrong_secret.status, unsigned.status, tampered.status] == [401, 401, 401]
    assert [not_event.status, not_json.status] == [400, 400]
    assert too_large.status == 413
    assert wrong_secret.retry_after is None
    assert authentic.status == 202
    published = await harness.drain_queue(sqs, fabric.everything)
    assert len(published) == 1, "only the authentic request was published"


async def test_an_event_too_large_for_sns_without_a_bucket_is_413(
    tmp_path: pathlib.Path, sns: Any, sqs: Any
) -> None:
    fabric = await make_fabric(sns, sqs, "ingest-nobucket")
    gateway = serving.Gateway(
        ingest_manifest(fabric.topic_arn, [secret_file(tmp_path, "s", SECRET)]), http_port=0
    )
    big = genesys.transcript("c1", "big-1", size=300_000, event_time_ms=1_741_964_966_000)
    async with serving.running(gateway), webhooks.Sender(f"{gateway.url}/events", SECRET) as sender:
        answer = await sender.post(big)
    assert answer.status == 413
    assert await harness.drain_queue(sqs, fabric.everything) == []


async def test_large_events_go_through_s3_as_extended_client_pointers(
    tmp_path: pathlib.Path, sns: Any, sqs: Any, s3: Any
) -> None:
    fabric = await make_fabric(sns, sqs, "ingest-offload")
    await s3.create_bucket(Bucket="genesys-large-events")
    manifest = ingest_manifest(
        fabric.topic_arn,
        [secret_file(tmp_path, "s", SECRET)],
        offload={"bucket": "genesys-large-events", "keyPrefix": "transcripts/"},
    )
    gateway = serving.Gateway(manifest, http_port=0)
    big = genesys.transcript("c-big", "big-1", size=300_000, event_time_ms=1_741_964_966_000)
    small = conversation()[0]
    async with serving.running(gateway), webhooks.Sender(f"{gateway.url}/events", SECRET) as sender:
        answer = await sender.post([small, big])
    assert answer.status == 202

    messages = await harness.drain_queue(sqs, fabric.conversations)
    assert len(messages) == 2
    [pointer_message] = [m for m in messages if "S3Pointer" in m["Body"]]
    kind, location = json.loads(pointer_message["Body"])
    assert kind == "software.amazon.payloadoffloading.PayloadS3Pointer"
    assert location["s3BucketName"] == "genesys-large-events" and location["s3Key"].startswith("transcripts/")
    size = pointer_message["MessageAttributes"][offloading.SIZE_ATTRIBUTE]
    assert size["DataType"] == "Number"
    stored = await s3.get_object(Bucket=location["s3BucketName"], Key=location["s3Key"])
    payload = await stored["Body"].read()
    assert json.loads(payload) == big and int(size["StringValue"]) == len(payload)
    assert pointer_message["MessageAttributes"]["eventCategory"]["StringValue"] == "conversation"


async def test_secret_rotation_accepts_old_and_new_then_drops_the_removed_one(
    tmp_path: pathlib.Path, sns: Any, sqs: Any
) -> None:
    fabric = await make_fabric(sns, sqs, "ingest-rotation")
    current = secret_file(tmp_path, "current", b"old-secret")
    following = secret_file(tmp_path, "next", b"new-secret")
    gateway = serving.Gateway(ingest_manifest(fabric.topic_arn, [current, following]), http_port=0)
    events = conversation(length=4)
    async with serving.running(gateway), webhooks.Sender(f"{gateway.url}/events", b"old-secret") as sender:
        during = [await sender.post(events[0]), await sender.post(events[1], secret=b"new-secret")]
        # The rotation completes: the old secret's file now holds the new one (as a mounted
        # Secret's key does after an update), the second file is removed.
        current.write_bytes(b"new-secret")
        following.unlink()
        await asyncio.sleep(1.2)  # the files are looked at once a second
        after = [await sender.post(events[2]), await sender.post(events[3], secret=b"new-secret")]
    assert [answer.status for answer in during] == [202, 202]
    assert [answer.status for answer in after] == [401, 202]
    assert len(await harness.drain_queue(sqs, fabric.everything)) == 3


async def test_fifo_topic_groups_by_conversation_and_publishes_a_retry_once(
    tmp_path: pathlib.Path, sns: Any, sqs: Any
) -> None:
    fabric = await make_fabric(sns, sqs, "ingest-fifo", fifo=True)
    gateway = serving.Gateway(
        ingest_manifest(fabric.topic_arn, [secret_file(tmp_path, "s", SECRET)]), http_port=0
    )
    first, second = conversation(seed=2, length=6), conversation(seed=3, length=6)
    async with serving.running(gateway), webhooks.Sender(f"{gateway.url}/events", SECRET) as sender:
        answers = await asyncio.gather(
            *(sender.post(event) for pair in zip(first, second, strict=True) for event in pair)
        )
        retry = await sender.post(first[0])  # Genesys retries an event it already got 202 for
    assert {answer.status for answer in answers} == {202} and retry.status == 202

    messages = await drain_deleting(sqs, fabric.conversations)
    assert len(messages) == 12, "the retry was published once"
    for message in messages:
        body = json.loads(message["Body"])
        assert message["Attributes"]["MessageGroupId"] == body["eventBody"]["conversationId"]
        assert message["Attributes"]["MessageDeduplicationId"] == body["metadata"]["CorrelationId"]


async def test_sns_failing_or_saturated_is_503_with_retry_after_and_never_202(
    tmp_path: pathlib.Path, sns: Any, sqs: Any
) -> None:
    secret = [secret_file(tmp_path, "s", SECRET)]
    missing_topic = "arn:aws:sns:us-east-1:123456789012:no-such-topic"
    gateway = serving.Gateway(
        ingest_manifest(missing_topic, secret, limits={"retryAfterSeconds": 7}), http_port=0
    )
    async with serving.running(gateway), webhooks.Sender(f"{gateway.url}/events", SECRET) as sender:
        failing = await sender.post(conversation()[0])
        async with sender._session.get(f"{gateway.url}/readyz") as ready:  # type: ignore[union-attr]
            readiness = await ready.json()
    assert failing.status == 503 and failing.retry_after == "7"
    assert json.loads(failing.body)["error"] == "publish_failed"
    assert readiness == {"ready": True, "sns": False, "stopping": False}

    fabric = await make_fabric(sns, sqs, "ingest-saturated")
    tight = ingest_manifest(fabric.topic_arn, secret, limits={"maxPendingEvents": 3})
    gateway = serving.Gateway(tight, http_port=0)
    async with serving.running(gateway), webhooks.Sender(f"{gateway.url}/events", SECRET) as sender:
        saturated = await sender.post(conversation(length=4))
        fits = await sender.post(conversation(length=3))
    assert saturated.status == 503 and saturated.retry_after == "5"
    assert json.loads(saturated.body)["error"] == "saturated"
    assert fits.status == 202
    assert len(await harness.drain_queue(sqs, fabric.everything)) == 3


async def test_probes_metrics_and_a_draining_gateway(tmp_path: pathlib.Path, sns: Any, sqs: Any) -> None:
    fabric = await make_fabric(sns, sqs, "ingest-probes")
    gateway = serving.Gateway(
        ingest_manifest(fabric.topic_arn, [secret_file(tmp_path, "s", SECRET)]),
        http_port=0,
        drain_seconds=1.0,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(gateway.run(stop))
    await gateway.wait_started()
    async with webhooks.Sender(f"{gateway.url}/events", SECRET) as sender:
        assert (await sender.post(conversation()[0])).status == 202
        session = sender._session
        assert session is not None
        async with session.get(f"{gateway.url}/metrics") as metrics:
            text = await metrics.text()
        assert 'fanout_ingest_requests_total{code="202",source="genesys"}' in text
        assert "fanout_ingest_publish_batch_entries_bucket" in text
        stop.set()
        await asyncio.sleep(0.2)
        async with session.get(f"{gateway.url}/readyz") as ready:
            assert ready.status == 503
        draining = await sender.post(conversation()[1])
        assert draining.status == 503 and draining.retry_after
    started = time.monotonic()
    await task
    assert time.monotonic() - started < 5


async def test_every_sns_call_names_the_gateway_in_a_user_agent_built_once(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The gateway's AWS clients carry ``fanout-ingest/<version>`` and the SDK's own name in a
    fixed ``User-Agent`` (botocore's option), as the worker's SQS client does: CloudTrail names
    the component, and botocore does not rebuild the header on every call."""
    seen: list[str] = []

    async def answer(request: web.Request) -> web.Response:
        seen.append(request.headers.get("User-Agent", ""))
        body = await request.read()
        members = "".join(
            f"<member><Id>{entry.decode()}</Id><MessageId>m-{entry.decode()}</MessageId></member>"
            for entry in re.findall(rb"PublishBatchRequestEntries\.member\.\d+\.Id=([^&]*)", body)
        )
        return web.Response(
            content_type="text/xml",
            text='<PublishBatchResponse xmlns="http://sns.amazonaws.com/doc/2010-03-31/">'
            f"<PublishBatchResult><Successful>{members}</Successful><Failed/></PublishBatchResult>"
            "<ResponseMetadata><RequestId>r</RequestId></ResponseMetadata></PublishBatchResponse>",
        )

    app = web.Application()
    app.router.add_post("/", answer)
    async with harness.serving_app(app) as url:
        monkeypatch.setenv("AWS_ENDPOINT_URL", url)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
        topic = "arn:aws:sns:us-east-1:123456789012:genesys-events"
        gateway = serving.Gateway(ingest_manifest(topic, [secret_file(tmp_path, "s", SECRET)]), http_port=0)
        async with serving.running(gateway), webhooks.Sender(f"{gateway.url}/events", SECRET) as sender:
            answers = [await sender.post(event) for event in conversation(length=2)]
    assert [answer.status for answer in answers] == [202, 202]
    assert len(seen) == 2
    assert seen[0] == seen[1]
    assert seen[0].startswith("fanout-ingest/")
    assert seen[0].count(" botocore/") == 1  # the SDK still names itself, once


async def test_each_gateway_serves_its_own_metrics(tmp_path: pathlib.Path, sns: Any, sqs: Any) -> None:
    """A registry per gateway, as each worker has: two in one process (the demo, these tests)
    count apart, and each ``/metrics`` also carries the process collectors."""
    fabric = await make_fabric(sns, sqs, "ingest-registries")
    manifest = ingest_manifest(fabric.topic_arn, [secret_file(tmp_path, "s", SECRET)])
    busy, quiet = serving.Gateway(manifest, http_port=0), serving.Gateway(manifest, http_port=0)
    texts = []
    async with (
        serving.running(busy),
        serving.running(quiet),
        webhooks.Sender(f"{busy.url}/events", SECRET) as sender,
    ):
        assert (await sender.post(conversation()[0])).status == 202
        session = sender._session
        assert session is not None
        for gateway in (busy, quiet):
            async with session.get(f"{gateway.url}/metrics") as answer:
                texts.append(await answer.text())
    busy_text, quiet_text = texts
    assert 'fanout_ingest_requests_total{code="202",source="genesys"} 1.0' in busy_text
    assert "fanout_ingest_requests_total{" not in quiet_text
    assert "process_cpu_seconds_total" in busy_text and "process_cpu_seconds_total" in quiet_text
