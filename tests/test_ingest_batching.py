"""The front door's PublishBatch calls against moto: when events leave, with whom, and whose
request a failed entry fails.

The publisher talks to moto's SNS through a hand on the client (:class:`HeldSns`, passed in
where the gateway passes its aiobotocore client): it records each call's entries, can hold
the calls at a gate (a slow SNS, made as slow as the test needs) and can make chosen entries
invalid on their way, so that moto itself refuses just those entries of a batch.
"""

from __future__ import annotations

import asyncio
import json
import pathlib
from collections.abc import Awaitable, Sequence
from typing import Any

import pytest

from fanout_ingest import classifying, publishing, telemetry
from fanout_lab import harness
from tests import test_ingest_e2e
from tests.test_ingest_dedupe import inbound


class HeldSns:
    """moto's SNS client, with each ``PublishBatch`` recorded and optionally held or tampered."""

    def __init__(self, sns: Any) -> None:
        self._sns = sns
        self.calls: list[list[str]] = []
        """Each call's entries, as the eventId attribute of each."""
        self.gate = asyncio.Event()
        self.gate.set()
        self.in_flight = 0
        self.most_in_flight = 0
        self._called = asyncio.Event()
        self.refused: set[str] = set()
        """Event ids whose entries get a MessageDeduplicationId: moto refuses that entry alone
        (InvalidParameter, the sender's fault) on a standard topic."""

    async def publish_batch(self, **call: Any) -> dict[str, Any]:
        entries = call["PublishBatchRequestEntries"]
        self.calls.append([entry["MessageAttributes"]["eventId"]["StringValue"] for entry in entries])
        self._called.set()
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await self.gate.wait()
            call["PublishBatchRequestEntries"] = [
                {**entry, "MessageDeduplicationId": "not-on-a-standard-topic"}
                if entry["MessageAttributes"]["eventId"]["StringValue"] in self.refused
                else entry
                for entry in entries
            ]
            reply: dict[str, Any] = await self._sns.publish_batch(**call)
            return reply
        finally:
            self.in_flight -= 1

    async def reached(self, count: int, seconds: float = 5.0) -> None:
        """Until ``count`` calls have started."""
        async with asyncio.timeout(seconds):
            while len(self.calls) < count:
                self._called.clear()
                await self._called.wait()


def events(count: int, seed: int = 7) -> list[classifying.InboundEvent]:
    made = [inbound(event) for event in test_ingest_e2e.conversation(seed=seed, length=count)]
    assert len({event.event_id for event in made}) == count
    return made


async def settle(tasks: Sequence[Awaitable[None]]) -> list[BaseException | None]:
    return list(await asyncio.gather(*tasks, return_exceptions=True))


@pytest.fixture
async def fabric(sns: Any, sqs: Any, request: pytest.FixtureRequest) -> test_ingest_e2e.Fabric:
    return await test_ingest_e2e.make_fabric(sns, sqs, f"batching-{request.node.name[:40]}")


def publisher(
    held: HeldSns, fabric: test_ingest_e2e.Fabric, tmp_path: pathlib.Path, **publishing_spec: Any
) -> publishing.Publisher:
    secret = test_ingest_e2e.secret_file(tmp_path, "s", b"secret")
    ingest = test_ingest_e2e.ingest_manifest(fabric.topic_arn, [secret], publishing=publishing_spec)
    return publishing.Publisher(sns=held, s3=None, spec=ingest.spec, telemetry=telemetry.IngestTelemetry())


def publish(door: publishing.Publisher, chosen: Sequence[classifying.InboundEvent]) -> asyncio.Task[None]:
    return asyncio.create_task(door.publish(chosen, source="genesys", traceparent=None))


async def published_ids(sqs: Any, fabric: test_ingest_e2e.Fabric) -> list[str]:
    messages = await harness.drain_queue(sqs, fabric.everything)
    return sorted(
        json.loads(message["Body"])["MessageAttributes"]["eventId"]["Value"] for message in messages
    )


async def test_arrivals_during_a_call_leave_together_when_it_comes_back(
    sns: Any, sqs: Any, fabric: test_ingest_e2e.Fabric, tmp_path: pathlib.Path
) -> None:
    held = HeldSns(sns)
    door = publisher(held, fabric, tmp_path, lingerMilliseconds=1000)
    first, *later = events(4)
    held.gate.clear()
    tasks = [publish(door, [first])]
    await held.reached(1)  # nothing in flight: it left at once, alone
    tasks += [publish(door, [event]) for event in later]
    await asyncio.sleep(0.2)
    assert len(held.calls) == 1 and door.waiting == 3  # they wait for the call in flight
    held.gate.set()
    assert await settle(tasks) == [None] * 4
    assert held.calls == [[first.event_id], [event.event_id for event in later]]
    assert await published_ids(sqs, fabric) == sorted(event.event_id for event in [first, *later])


async def test_the_events_of_one_request_leave_together(
    sns: Any, sqs: Any, fabric: test_ingest_e2e.Fabric, tmp_path: pathlib.Path
) -> None:
    held = HeldSns(sns)
    door = publisher(held, fabric, tmp_path, lingerMilliseconds=1000)
    batch = events(12)
    held.gate.clear()
    task = publish(door, batch)
    await held.reached(1)
    await asyncio.sleep(0.1)
    assert held.calls == [[event.event_id for event in batch[:10]]]  # not the first one alone
    held.gate.set()
    await task
    assert held.calls[1:] == [[event.event_id for event in batch[10:]]]


async def test_full_calls_leave_at_once_up_to_the_bound_on_calls_in_flight(
    sns: Any, sqs: Any, fabric: test_ingest_e2e.Fabric, tmp_path: pathlib.Path
) -> None:
    held = HeldSns(sns)
    door = publisher(held, fabric, tmp_path, maxConcurrentCalls=2, lingerMilliseconds=1000)
    first, *burst = events(35)
    held.gate.clear()
    tasks = [publish(door, [first])]
    await held.reached(1)
    tasks += [publish(door, burst[index : index + 2]) for index in range(0, len(burst), 2)]
    await held.reached(2)
    await asyncio.sleep(0.2)
    # The second call left full while the first was out; then both slots were taken.
    assert [len(call) for call in held.calls] == [1, 10] and door.waiting == 24
    held.gate.set()
    assert await settle(tasks) == [None] * len(tasks)
    assert sorted(len(call) for call in held.calls) == [1, 4, 10, 10, 10]
    assert held.most_in_flight == 2
    assert [event_id for call in held.calls for event_id in call] == [
        event.event_id for event in [first, *burst]
    ]
    assert len(await published_ids(sqs, fabric)) == 35


async def test_an_entry_sns_refuses_fails_only_the_request_that_carried_it(
    sns: Any, sqs: Any, fabric: test_ingest_e2e.Fabric, tmp_path: pathlib.Path
) -> None:
    held = HeldSns(sns)
    door = publisher(held, fabric, tmp_path, lingerMilliseconds=1000)
    first, good, bad, also_good = events(4)
    held.refused.add(bad.event_id)
    held.gate.clear()
    tasks = [publish(door, [first])]
    await held.reached(1)
    tasks += [publish(door, [good, also_good]), publish(door, [bad])]
    await asyncio.sleep(0.1)
    held.gate.set()
    outcomes = await settle(tasks)
    assert held.calls[1] == [good.event_id, also_good.event_id, bad.event_id]  # one call for all three
    assert outcomes[:2] == [None, None]
    refused = outcomes[2]
    assert isinstance(refused, publishing.PublishFailed) and refused.code == "InvalidParameter"
    assert refused.published == (False,)
    assert len(held.calls) == 2  # the sender's fault: not retried
    assert await published_ids(sqs, fabric) == sorted([first.event_id, good.event_id, also_good.event_id])


async def test_an_event_stuck_behind_a_call_that_does_not_come_back_gets_its_own(
    sns: Any, sqs: Any, fabric: test_ingest_e2e.Fabric, tmp_path: pathlib.Path
) -> None:
    held = HeldSns(sns)
    door = publisher(held, fabric, tmp_path, lingerMilliseconds=50)
    first, second = events(2)
    held.gate.clear()
    tasks = [publish(door, [first])]
    await held.reached(1)
    tasks.append(publish(door, [second]))
    await held.reached(2)  # the stall guard sent it while the first is still out
    assert held.in_flight == 2
    held.gate.set()
    assert await settle(tasks) == [None, None]
    assert held.calls == [[first.event_id], [second.event_id]]


@pytest.mark.serial
async def test_no_event_waits_for_a_timer_when_nothing_is_in_flight(
    sns: Any, sqs: Any, fabric: test_ingest_e2e.Fabric, tmp_path: pathlib.Path
) -> None:
    """With the stall guard at its longest (1 s), an event leaves as soon as no call is in
    flight: right after another call came back, and the moment the call it waited for does."""
    held = HeldSns(sns)
    door = publisher(held, fabric, tmp_path, lingerMilliseconds=1000)
    first, second, third = events(3)
    loop = asyncio.get_running_loop()
    await publish(door, [first])
    started = loop.time()
    await publish(door, [second])  # a call started a moment ago, and came back
    assert loop.time() - started < 0.5
    held.gate.clear()
    waiting_for_it = publish(door, [first])
    await held.reached(3)
    behind = publish(door, [third])
    await asyncio.sleep(0.05)
    started = loop.time()
    held.gate.set()
    await asyncio.gather(waiting_for_it, behind)
    assert loop.time() - started < 0.5
    assert held.calls[-1] == [third.event_id]


async def test_under_load_the_first_events_wait_for_the_call_to_fill(
    sns: Any, sqs: Any, fabric: test_ingest_e2e.Fabric, tmp_path: pathlib.Path
) -> None:
    """A request of two, then eight of one, at once: with a window that their rate fills (a
    second: ten per second is enough; two events read as twenty), one call of ten; with the
    default window (20 ms needs 500/s) the first request leaves at once, as before, and the
    others wait for its call."""
    burst = events(20)

    async def calls(
        door: publishing.Publisher, held: HeldSns, chosen: list[classifying.InboundEvent]
    ) -> list[int]:
        requests = [publish(door, chosen[:2])] + [publish(door, [event]) for event in chosen[2:]]
        assert await settle(requests) == [None] * 9
        return [len(call) for call in held.calls]

    windowed = HeldSns(sns)
    assert await calls(
        publisher(windowed, fabric, tmp_path, batchWindowMilliseconds=1000), windowed, burst[:10]
    ) == [10]
    default = HeldSns(sns)
    assert await calls(publisher(default, fabric, tmp_path), default, burst[10:]) == [2, 8]
    assert len(await published_ids(sqs, fabric)) == 20


@pytest.mark.serial
async def test_a_held_call_leaves_at_the_end_of_the_window_when_it_does_not_fill(
    sns: Any, sqs: Any, fabric: test_ingest_e2e.Fabric, tmp_path: pathlib.Path
) -> None:
    held = HeldSns(sns)
    door = publisher(held, fabric, tmp_path, batchWindowMilliseconds=300, lingerMilliseconds=1000)
    five = events(5)
    loop = asyncio.get_running_loop()
    started = loop.time()
    # One request of five reads as 50 events/s: enough to fill ten within 300 ms, so held...
    task = publish(door, five)
    await asyncio.sleep(0.1)
    assert held.calls == [] and door.waiting == 5
    await task  # ...until the window is over, not a moment later than it needs
    assert 0.29 <= loop.time() - started < 0.8
    assert held.calls == [[event.event_id for event in five]]


@pytest.mark.serial
async def test_a_call_held_after_one_comes_back_does_not_wait_for_the_stall_guard(
    sns: Any, sqs: Any, fabric: test_ingest_e2e.Fabric, tmp_path: pathlib.Path
) -> None:
    """The stall guard's timer (1 s) was armed while a call was out; when it comes back the
    waiting events are held for the window (600 ms) — and leave at its end, not at the guard's."""
    held = HeldSns(sns)
    door = publisher(held, fabric, tmp_path, batchWindowMilliseconds=600, lingerMilliseconds=1000)
    first, *nine = events(10)
    loop = asyncio.get_running_loop()
    held.gate.clear()
    alone = publish(door, [first])  # ten per second read so far: not enough to hold, it leaves
    await held.reached(1)
    started = loop.time()
    behind = publish(door, nine)  # waits for the call out; the stall guard armed
    await asyncio.sleep(0.05)
    held.gate.set()  # back, nothing in flight, and the rate still fills ten within 600 ms: held
    await alone
    await asyncio.sleep(0.1)
    assert len(held.calls) == 1 and door.waiting == 9
    await behind
    assert 0.5 < loop.time() - started < 0.9
    assert held.calls == [[first.event_id], [event.event_id for event in nine]]


async def test_a_held_call_leaves_at_once_when_the_gateway_closes(
    sns: Any, sqs: Any, fabric: test_ingest_e2e.Fabric, tmp_path: pathlib.Path
) -> None:
    held = HeldSns(sns)
    door = publisher(held, fabric, tmp_path, batchWindowMilliseconds=1000)
    five = events(5)
    task = publish(door, five)
    await asyncio.sleep(0.05)
    assert held.calls == [] and door.waiting == 5  # 50/s fills ten within a second: held
    async with asyncio.timeout(0.5):
        await door.aclose()
        await task
    assert held.calls == [[event.event_id for event in five]]
