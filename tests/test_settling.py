"""Settling against a real SQS endpoint (moto over HTTP): batched deletes, visibility changes,
the heartbeat, dead-lettering with reasons, and expired receipts that are counted, not fatal."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from fanout_lab import harness
from workers import events, messages, settling, telemetry


class Budget:
    def __init__(self) -> None:
        self.released = 0

    def release(self, count: int) -> None:
        self.released += count


def settler_for(
    sqs: Any,
    url: str,
    *,
    dead: str | None = None,
    visibility: int = 30,
    metrics: telemetry.WorkerMetrics | None = None,
) -> tuple[settling.Settler, Budget]:
    budget = Budget()
    settler = settling.Settler(
        client=sqs,
        queue_url=events.QueueUrl(url),
        visibility_timeout=visibility,
        dead_letter_url=events.QueueUrl(dead) if dead else None,
        budget=budget,
        telemetry=telemetry.WorkerTelemetry(queue_url=url, sink_name="webhook", metrics=metrics),
        linger=0.02,
    )
    return settler, budget


def track(settler: settling.Settler, received: dict[str, Any]) -> messages.Message:
    """What a poller does with a received message: parse it, hand it to the settler."""
    message = messages.parse(received)
    settler.track(message)
    return message


async def receive_all(sqs: Any, url: str, count: int, visibility: int = 30) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = []
    while len(got) < count:
        reply = await sqs.receive_message(
            QueueUrl=url,
            MaxNumberOfMessages=10,
            WaitTimeSeconds=1,
            VisibilityTimeout=visibility,
            MessageSystemAttributeNames=["All"],
            MessageAttributeNames=["All"],
        )
        got.extend(reply.get("Messages", []))
    return got


async def send(sqs: Any, url: str, count: int, **extra: Any) -> None:
    for start in range(0, count, 10):
        entries = [
            {"Id": str(i), "MessageBody": f"m{i}", **extra} for i in range(start, min(count, start + 10))
        ]
        await sqs.send_message_batch(QueueUrl=url, Entries=entries)


async def test_deletes_are_batched_and_free_the_budget(sqs: Any) -> None:
    url = await harness.make_queue(sqs, "settle-delete")
    await send(sqs, url, 25)
    settler, budget = settler_for(sqs, url)
    settler.start()
    records = [track(settler, message) for message in await receive_all(sqs, url, 25)]
    assert settler.in_flight == 25
    for record in records:
        settler.delete(record)
        settler.delete(record)  # a second action on a settled message is ignored
    await settler.aclose()
    assert budget.released == 25 and settler.in_flight == 0
    assert await harness.queue_counts(sqs, url) == (0, 0)


async def test_retry_later_hides_the_message_for_the_delay_and_give_back_shows_it_now(sqs: Any) -> None:
    url = await harness.make_queue(sqs, "settle-retry")
    await send(sqs, url, 2)
    settler, budget = settler_for(sqs, url)
    settler.start()
    first, second = (track(settler, m) for m in await receive_all(sqs, url, 2))
    settler.retry_later(first, 3)
    settler.give_back([second])
    assert settler.away == 1  # in flight for SQS, held by nobody, until its delay is over
    await settler.flush()
    again = await sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1)
    assert [m["MessageId"] for m in again.get("Messages", [])] == [second.message_id]
    later = await receive_all(sqs, url, 1)
    assert [m["MessageId"] for m in later] == [first.message_id]
    assert settler.away == 0
    assert budget.released == 2
    await settler.aclose()


async def test_heartbeat_keeps_a_held_message_invisible_past_its_timeout(sqs: Any) -> None:
    url = await harness.make_queue(sqs, "settle-heartbeat")
    await send(sqs, url, 1)
    settler, _ = settler_for(sqs, url, visibility=2)
    settler.start()
    (message,) = await receive_all(sqs, url, 1, visibility=2)
    record = track(settler, message)
    for _ in range(3):  # 6 s: three times the visibility timeout
        peek = await sqs.receive_message(
            QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=2, VisibilityTimeout=0
        )
        assert peek.get("Messages", []) == [], "a held message became visible"
    settler.delete(record)
    await settler.aclose()
    assert await harness.queue_counts(sqs, url) == (0, 0)


async def test_dead_letter_copies_body_and_reason_then_deletes(sqs: Any) -> None:
    url = await harness.make_queue(sqs, "settle-dl")
    dead = await harness.make_queue(sqs, "settle-dl-dlq.fifo", fifo=True)
    attributes = {f"a{i}": {"DataType": "String", "StringValue": str(i)} for i in range(9)}
    await sqs.send_message(QueueUrl=url, MessageBody="{poison", MessageAttributes=attributes)
    settler, budget = settler_for(sqs, url, dead=dead)
    settler.start()
    (message,) = await receive_all(sqs, url, 1)
    record = track(settler, message)
    await settler.dead_letter(
        record, None, reason_class=telemetry.ReasonClass.POISON, reason="body is not JSON", backoff=1
    )
    await settler.aclose()
    assert budget.released == 1
    assert await harness.queue_counts(sqs, url) == (0, 0)
    (copied,) = await harness.drain_queue(sqs, dead)
    assert copied["Body"] == "{poison"
    got = copied["MessageAttributes"]
    assert got["fanout.reason"]["StringValue"] == "body is not JSON"
    assert got["fanout.reason-class"]["StringValue"] == "poison"
    assert got["fanout.source-queue"]["StringValue"] == url
    assert got["fanout.attempts"]["StringValue"] == "1"
    assert len(got) == 10  # ours first, then the original ones that still fit
    assert copied["Attributes"]["MessageGroupId"] == "fanout-dead-letter"
    assert copied["Attributes"]["MessageDeduplicationId"] == record.message_id


async def test_without_a_dead_letter_queue_the_message_is_left_to_the_redrive_policy(sqs: Any) -> None:
    url = await harness.make_queue(sqs, "settle-no-dlq")
    await send(sqs, url, 1)
    settler, budget = settler_for(sqs, url)
    settler.start()
    (message,) = await receive_all(sqs, url, 1)
    record = track(settler, message)
    await settler.dead_letter(
        record, None, reason_class=telemetry.ReasonClass.POISON, reason="bad", backoff=1
    )
    await settler.aclose()
    assert budget.released == 1
    back = await receive_all(sqs, url, 1)  # visible again after the backoff, for SQS to redrive
    assert back[0]["MessageId"] == record.message_id


async def test_expired_receipt_is_counted_not_fatal(sqs: Any) -> None:
    url = await harness.make_queue(sqs, "settle-expired")
    await send(sqs, url, 2)
    families = telemetry.WorkerMetrics()
    settler, budget = settler_for(sqs, url, metrics=families)
    settler.start()
    good_one, stale_one = await receive_all(sqs, url, 2)
    await sqs.delete_message(
        QueueUrl=url, ReceiptHandle=stale_one["ReceiptHandle"]
    )  # someone else settled it
    good = track(settler, good_one)
    # an expired receipt: SQS no longer knows it
    stale = dataclasses.replace(
        messages.parse(stale_one),
        receipt_handle=events.ReceiptHandle("invalid-" + stale_one["ReceiptHandle"][:20]),
    )
    settler.track(stale)
    settler.delete(good)
    settler.delete(stale)
    await asyncio.wait_for(settler.aclose(), timeout=15)
    assert budget.released == 2
    assert await harness.queue_counts(sqs, url) == (0, 0)
    assert families.value("fanout_receipt_expired_total", queue="settle-expired") == 1
    assert families.value("fanout_messages_deleted_total", queue="settle-expired") == 1, (
        "the stale one was not"
    )
    failures = [
        sample
        for family in families.registry.collect()
        if family.name == "fanout_delete_failures"
        for sample in family.samples
        if sample.name.endswith("_total")
    ]
    assert failures == [], "an expired receipt is counted as such, not as a failed delete"


async def test_a_receive_is_settled_once_whatever_message_value_stands_for_it(sqs: Any) -> None:
    # A FIFO group waiting in place for S3 is tracked before its payloads are resolved; the
    # processor then settles the resolved messages: new values of the same receives.
    url = await harness.make_queue(sqs, "settle-receive")
    await send(sqs, url, 2)
    settler, budget = settler_for(sqs, url)
    settler.start()
    first_raw, second_raw = await receive_all(sqs, url, 2)
    tracked = track(settler, first_raw)
    other = track(settler, second_raw)
    resolved = messages.parse(first_raw)  # another value of the same receive
    assert resolved is not tracked and settler.in_flight == 2
    settler.delete(resolved)
    settler.retry_later(other, 0)
    await settler.aclose()
    assert budget.released == 2 and settler.in_flight == 0
    settler.delete(tracked)  # the receive is settled already: nothing to do
    back = await receive_all(sqs, url, 1)
    assert [message["MessageId"] for message in back] == [other.message_id], "the first was deleted"
