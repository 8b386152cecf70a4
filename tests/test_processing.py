"""processing: the Processor carries out the decision table against its collaborators.

The real Processor, lanes, decoder and memory idempotency store; the settler is the lab's
recording stand-in (``fanout_lab.harness.RecordingSettlement``, the Processor takes its
settler as a parameter) and the sink a script of answers per event, admitting each event as
a real sink does when its permit is granted. The table itself is property-tested in
tests/test_deciding.py; these tests check that each row is carried out: what the settler
was told, what the store remembers, what the sink was sent, and what a lane lets through.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from fanout_core import idempotency as dedupe
from fanout_core import spec as spec_model
from fanout_lab import harness
from workers import events, messages, processing, telemetry
from workers.sinks import base

QUEUE = "https://sqs.us-east-1.amazonaws.com/123456789012/processing"
Answer = events.Outcome | Callable[[], events.Outcome]


def body(event_id: str, conversation: str = "c-1", event_time: int = 1_741_964_967_000) -> str:
    return json.dumps(
        {
            "topicName": f"v2.detail.events.conversation.{conversation}.customer.start",
            "eventBody": {"conversationId": conversation, "eventTime": event_time},
            "metadata": {"CorrelationId": event_id},
        }
    )


class ScriptedSink:
    """A sink answering from a script per event id (then Delivered); a Refused answer opens
    its circuit (it stops accepting) until :meth:`resume`, as a real sink's does."""

    def __init__(self, script: dict[str, list[Answer]] | None = None) -> None:
        self.script = script or {}
        self.sent: list[str] = []
        self._accepting = asyncio.Event()
        self._accepting.set()

    @property
    def name(self) -> str:
        return "webhook"

    @property
    def accepting(self) -> bool:
        return self._accepting.is_set()

    async def wait_accepting(self) -> None:
        await self._accepting.wait()

    def resume(self) -> None:
        self._accepting.set()

    async def deliver(self, event: events.Event, admit: base.Admission | None = None) -> events.Outcome:
        if admit is not None and not await admit():
            return events.NotSent()
        self.sent.append(event.event_id)
        answers = self.script.get(event.event_id)
        answer = answers.pop(0) if answers else events.Delivered()
        outcome = answer() if callable(answer) else answer
        if isinstance(outcome, events.Refused):
            self._accepting.clear()
        return outcome

    async def flush(self) -> None:
        return None

    async def aclose(self) -> None:
        return None


class Run:
    def __init__(self, processor: processing.Processor, settler: harness.RecordingSettlement) -> None:
        self.processor = processor
        self.settler = settler

    def submit(self, *received: messages.Message) -> None:
        for message in received:
            self.settler.track(message)
        self.processor.submit(list(received))

    async def settled(self, *received: messages.Message, timeout: float = 5.0) -> None:
        assert await harness.wait_until(
            lambda: not {message.receipt_handle for message in received} & self.settler.in_hand,
            timeout=timeout,
            interval=0.01,
        )


def consumer_spec(
    *, fifo: bool = False, max_attempts: int = 3, dead_letter: bool = True
) -> spec_model.FanoutConsumerSpec:
    return spec_model.FanoutConsumerSpec.model_validate(
        {
            "queue": {"url": QUEUE + (".fifo" if fifo else ""), "waitTimeSeconds": 1, "pollers": 1},
            "sink": {"type": "webhook", "url": "http://127.0.0.1:9/", "maxConcurrency": 4},
            "retry": {"baseDelaySeconds": 0.05, "maxDelaySeconds": 0.2, "maxAttempts": max_attempts},
            "idempotency": {"store": "memory", "ttlSeconds": 3600},
            **({"deadLetter": {"queueUrl": QUEUE + "-dlq"}} if dead_letter else {}),
        }
    )


@contextlib.asynccontextmanager
async def running(
    sink: ScriptedSink, store: dedupe.IdempotencyStore | None = None, **options: Any
) -> AsyncIterator[Run]:
    spec = consumer_spec(**options)
    settler = harness.RecordingSettlement()
    processor = processing.Processor(
        spec=spec,
        sink=sink,
        store=store if store is not None else dedupe.MemoryStore(ttl_seconds=3600),
        settler=settler,
        telemetry=telemetry.WorkerTelemetry(queue_url=spec.queue.url, sink_name="webhook"),
        jitter=lambda: 1.0,
    )
    dispatcher = asyncio.create_task(processor.run())
    try:
        yield Run(processor, settler)
    finally:
        await processor.drain(1.0)
        dispatcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await dispatcher


async def settle_one(
    sink: ScriptedSink, store: dedupe.IdempotencyStore | None = None, message_body: str | None = None
) -> tuple[harness.Settled, ScriptedSink]:
    """One message (event ``e-1`` unless ``message_body``) through a processor: how it was
    settled, which must be exactly once."""
    async with running(sink, store) as run:
        message = harness.sqs_message(body("e-1") if message_body is None else message_body)
        run.submit(message)
        await run.settled(message)
    (settled,) = run.settler.actions(message.message_id)
    return settled, sink


async def attempts_recorded(store: dedupe.IdempotencyStore, event_id: str = "e-1") -> int:
    """The failed attempts the store counts for ``event_id`` (taking and failing a claim)."""
    assert await store.claim(events.EventId(event_id), lease_seconds=5) is dedupe.ClaimState.CLAIMED
    return await store.release(events.EventId(event_id), failed=True) - 1


async def test_delivered_is_deleted_and_completed() -> None:
    store = dedupe.MemoryStore(ttl_seconds=3600)
    settled, _ = await settle_one(ScriptedSink(), store)
    assert settled.action == "delete"
    assert await store.claim(events.EventId("e-1"), lease_seconds=5) is dedupe.ClaimState.COMPLETED


async def test_a_redelivered_event_is_deleted_without_sending_it_again() -> None:
    sink = ScriptedSink()
    async with running(sink) as run:
        first = harness.sqs_message(body("e-1"))
        run.submit(first)
        await run.settled(first)
        again = harness.sqs_message(body("e-1"), receive_count=2)  # SNS or SQS redelivered it
        run.submit(again)
        await run.settled(again)
    assert sink.sent == ["e-1"]
    assert run.settler.count("delete") == 2


async def test_a_poison_body_is_dead_lettered_once_and_never_sent() -> None:
    settled, sink = await settle_one(ScriptedSink(), message_body="{not json")
    assert (settled.action, settled.reason_class) == ("dead_letter", events.ReasonClass.POISON)
    assert settled.reason is not None and "not JSON" in settled.reason
    assert sink.sent == []


async def test_permanent_is_dead_lettered_and_forgotten_for_a_redrive() -> None:
    store = dedupe.MemoryStore(ttl_seconds=3600)
    settled, _ = await settle_one(ScriptedSink({"e-1": [events.Permanent("HTTP 422 bad field")]}), store)
    assert (settled.action, settled.reason_class, settled.reason) == (
        "dead_letter",
        events.ReasonClass.PERMANENT,
        "HTTP 422 bad field",
    )
    assert await attempts_recorded(store) == 0, "a redrive starts from zero attempts"


async def test_a_retry_counts_an_attempt_and_goes_back_after_the_backoff() -> None:
    store = dedupe.MemoryStore(ttl_seconds=3600)
    settled, _ = await settle_one(ScriptedSink({"e-1": [events.Retry("HTTP 500")]}), store)
    assert (settled.action, settled.delay) == ("retry_later", 0.05)  # base step, jitter 1.0
    assert await attempts_recorded(store) == 1, "one attempt was counted"


async def test_retry_after_is_the_delay() -> None:
    settled, _ = await settle_one(ScriptedSink({"e-1": [events.Retry("HTTP 500", delay_seconds=42.0)]}))
    assert (settled.action, settled.delay) == ("retry_later", 42.0)


async def test_the_last_attempt_dead_letters_as_exhausted() -> None:
    sink = ScriptedSink({"e-1": [events.Retry("HTTP 500")] * 3})
    async with running(sink, max_attempts=3) as run:
        for receive in (1, 2, 3):  # SQS brings it back after each backoff
            message = harness.sqs_message(body("e-1"), message_id="m-1", receive_count=receive)
            run.submit(message)
            await run.settled(message)
    assert [settled.action for settled in run.settler.settled] == [
        "retry_later",
        "retry_later",
        "dead_letter",
    ]
    last = run.settler.settled[-1]
    assert last.reason_class is events.ReasonClass.EXHAUSTED
    assert last.reason == "gave up after 3 attempts; last: HTTP 500"


async def test_a_refused_credential_keeps_the_message_and_counts_nothing() -> None:
    store = dedupe.MemoryStore(ttl_seconds=3600)
    sink = ScriptedSink({"e-1": [*[events.Refused("HTTP 401")] * 5, events.Retry("HTTP 500")]})
    async with running(sink, store, max_attempts=2) as run:
        message = harness.sqs_message(body("e-1"))
        run.submit(message)
        for _ in range(5):  # the circuit's probes keep being refused
            assert await harness.wait_until(lambda: not sink.accepting, timeout=5, interval=0.01)
            assert run.settler.settled == [], "the message stays in hand"
            sink.resume()
        await run.settled(message)
    assert sink.sent == ["e-1"] * 6
    # five refusals counted nothing: the first failure of the event's own is attempt 1 of 2
    assert [settled.action for settled in run.settler.actions(message.message_id)] == ["retry_later"]


async def test_a_store_that_does_not_answer_leaves_the_message_for_later_uncounted() -> None:
    class Unanswering(dedupe.MemoryStore):
        async def claim(self, event_id: events.EventId, *, lease_seconds: float) -> dedupe.ClaimState:
            raise dedupe.StoreUnavailable("DynamoDB throttled")

    settled, sink = await settle_one(ScriptedSink(), Unanswering(ttl_seconds=60))
    assert (settled.action, settled.delay) == ("retry_later", 5.0)
    assert sink.sent == []


async def test_a_crash_in_the_sink_is_one_failed_attempt() -> None:
    def crash() -> events.Outcome:
        raise KeyError("bug")

    store = dedupe.MemoryStore(ttl_seconds=3600)
    settled, _ = await settle_one(ScriptedSink({"e-1": [crash]}), store)
    assert settled.action == "retry_later"
    assert await attempts_recorded(store) == 1


async def test_a_failed_event_blocks_its_conversation_until_it_comes_back() -> None:
    sink = ScriptedSink({"e-1": [events.Retry("HTTP 500")]})
    async with running(sink) as run:
        failed = harness.sqs_message(body("e-1", event_time=1), message_id="m-1")
        run.submit(failed)
        await run.settled(failed)
        later = harness.sqs_message(body("e-2", event_time=2))
        run.submit(later)
        await asyncio.sleep(0.3)
        assert sink.sent == ["e-1"], "the conversation's later event waits for the failed one"
        back = harness.sqs_message(body("e-1", event_time=1), message_id="m-1", receive_count=2)
        run.submit(back)
        await run.settled(back, later)
    assert sink.sent == ["e-1", "e-1", "e-2"]


async def test_a_failed_dead_letter_copy_keeps_the_message_and_blocks_its_conversation() -> None:
    sink = ScriptedSink({"e-1": [events.Permanent("HTTP 422")]})
    async with running(sink) as run:
        run.settler.dead_letter_fails = True
        failed = harness.sqs_message(body("e-1", event_time=1))
        run.submit(failed)
        await run.settled(failed)
        later = harness.sqs_message(body("e-2", event_time=2))
        run.submit(later)
        await asyncio.sleep(0.3)
        assert sink.sent == ["e-1"]
    (settled,) = run.settler.actions(failed.message_id)
    assert settled.action == "retry_later"


async def test_fifo_waits_in_place_for_a_short_backoff_and_keeps_the_group_in_order() -> None:
    sink = ScriptedSink({"e-1": [events.Retry("HTTP 500")]})
    async with running(sink, fifo=True) as run:
        group = {"MessageGroupId": "c-1"}
        first = harness.sqs_message(body("e-1"), SentTimestamp="1", SequenceNumber="1", **group)
        second = harness.sqs_message(body("e-2"), SentTimestamp="2", SequenceNumber="2", **group)
        run.submit(first, second)
        await run.settled(first, second)
    assert sink.sent == ["e-1", "e-1", "e-2"]
    assert [settled.action for settled in run.settler.settled] == ["delete", "delete"]


async def test_drain_gives_back_what_has_not_started() -> None:
    sink = ScriptedSink({"e-1": [events.Refused("HTTP 401")]})
    async with running(sink) as run:
        stuck = harness.sqs_message(body("e-1", event_time=1))
        waiting = harness.sqs_message(body("e-2", event_time=2))
        run.submit(stuck, waiting)
        assert await harness.wait_until(lambda: not sink.accepting, timeout=5, interval=0.01)
        await run.processor.drain(1.0)
    assert {settled.action for settled in run.settler.settled} == {"give_back"}
    assert run.settler.in_hand == set()


@pytest.mark.parametrize("fifo", [False, True])
async def test_submit_never_raises_and_gives_back_once_draining(fifo: bool) -> None:
    async with running(ScriptedSink(), fifo=fifo) as run:
        await run.processor.drain(0.1)
        message = harness.sqs_message(body("e-1"), MessageGroupId="g")
        run.submit(message)
    assert [settled.action for settled in run.settler.settled] == ["give_back"]
