"""The pollers: the in-flight budget (about a second of what the sink makes room for,
``maxInFlight`` a ceiling), and their turns on a queue that runs short (``polling.Turns``,
on fake loop time); each receive saying whether it came back full (moto and LocalStack).

A poller whose receive came back short rests while another poller waits on the queue, so
receives come back fuller; it never rests when no other poller is receiving (someone must
wait on the queue, or a message would wait for the rest), and a full receive — a backlog —
ends every rest at once. What this saves is measured by ``bench/overhead.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from fanout_core import spec
from fanout_lab import harness
from tests import sqs_backends
from workers import messages, polling, sinks, sqs, telemetry


def test_the_budget_is_a_second_of_capacity_plus_what_waits_for_other_reasons() -> None:
    assert polling.budget_target(10.0, 0, ceiling=200) == 10
    assert polling.budget_target(10.0, 7, ceiling=200) == 17  # held back in lanes, or being deleted
    assert polling.budget_target(2.5, 0, ceiling=200) == 3
    assert polling.budget_target(0.01, 0, ceiling=200) == 1  # never nothing
    assert polling.budget_target(1_000.0, 0, ceiling=200) == 200  # maxInFlight is the ceiling
    assert polling.budget_target(None, 0, ceiling=200) == 200  # nothing bounds the sink


async def test_the_budget_follows_its_target_as_it_moves() -> None:
    target = [5]
    budget = polling.Budget(200, lambda: target[0])
    assert await budget.reserve(10) == 5
    reserving = asyncio.create_task(budget.reserve(10))
    await asyncio.sleep(0.3)
    assert not reserving.done()  # full at the target, far below the ceiling
    target[0] = 12  # the sink can send more now: room without a release
    assert await asyncio.wait_for(reserving, timeout=1) == 7
    target[0] = 3
    budget.release(12)
    assert await budget.reserve(10) == 3


@pytest.mark.parametrize("limit", [1, 50])
async def test_without_a_target_the_limit_is_fixed(limit: int) -> None:
    budget = polling.Budget(limit)
    assert await budget.reserve(100) == limit
    assert budget.current_limit == limit


async def _rest_seconds(turns: polling.Turns) -> float:
    loop = asyncio.get_running_loop()
    started = loop.time()
    await turns.rest()
    return round(loop.time() - started, 3)


@pytest.mark.looptime
async def test_no_rest_when_no_other_poller_waits_on_the_queue() -> None:
    assert await _rest_seconds(polling.Turns()) == 0


@pytest.mark.looptime
async def test_a_short_receive_rests_while_another_poller_receives() -> None:
    turns = polling.Turns()
    with turns.receiving():  # the other poller, in its long poll
        assert await _rest_seconds(turns) == polling.Turns.REST_SECONDS
    assert await _rest_seconds(turns) == 0  # that receive returned: nobody waits, go at once


@pytest.mark.looptime
async def test_a_full_receive_ends_the_rest_at_once() -> None:
    turns = polling.Turns()

    async def other_poller() -> None:
        with turns.receiving():
            await asyncio.sleep(0.01)
        turns.full()  # came back with all it asked for: a backlog

    task = asyncio.create_task(other_poller())
    await asyncio.sleep(0)  # the other poller is in its receive
    assert await _rest_seconds(turns) == 0.01
    await task


class _Held:
    """The settler's part a poller needs: messages taken in hand (nothing goes back here)."""

    def __init__(self) -> None:
        self.tracked: list[messages.Message] = []

    def track(self, message: messages.Message) -> None:
        self.tracked.append(message)

    def retry_later(self, message: messages.Message, delay_seconds: float) -> None:
        raise AssertionError("nothing is retried here")

    def give_back(self, given: Sequence[messages.Message], *, delay_seconds: float = 0.0) -> None:
        assert not given, "nothing goes back here"  # (a receive under way at the stop: empty)


async def test_each_receive_says_whether_it_brought_all_it_asked_for(
    sqs_backend: sqs_backends.SqsBackend,
) -> None:
    """``ordering`` counts only a short receive as a chance a failed message had to come back:
    a full one may have left it behind a backlog."""
    queue_url = await harness.make_queue(sqs_backend.sqs, "full-or-short")
    for start in (0, 10):
        await sqs_backend.sqs.send_message_batch(
            QueueUrl=queue_url,
            Entries=[{"Id": str(n), "MessageBody": "{}"} for n in range(start, min(start + 10, 15))],
        )
    queue = spec.QueueSpec.model_validate({"url": queue_url, "waitTimeSeconds": 1, "maxMessages": 10})
    heard: list[bool] = []
    batches: list[int] = []
    held = _Held()
    emptied = asyncio.Event()  # every message in hand, and a receive after them came back

    def on_receive(began: float, full: bool) -> None:
        heard.append(full)
        if len(held.tracked) == 15 and len(heard) > len(batches):
            emptied.set()

    async with sqs.client(region="us-east-1", max_connections=2) as client:
        poller = polling.Poller(
            client=client,
            queue=queue,
            budget=polling.Budget(100),
            sink=sinks.build_sink(spec.SinkSpec(type="webhook", url="http://127.0.0.1:9/never")),
            settler=held,
            submit=lambda received: batches.append(len(received)),
            telemetry=telemetry.WorkerTelemetry(queue_url=queue_url, sink_name="webhook"),
            on_health=lambda healthy: None,
            on_receive=on_receive,
        )
        running = asyncio.create_task(poller.run())
        await asyncio.wait_for(emptied.wait(), 20)
        poller.stop()
        await asyncio.wait_for(running, 5)
    assert sum(batches) == 15
    assert heard[: len(batches)] == [count == 10 for count in batches]
    assert True in heard and False in heard
