"""The pollers: the in-flight budget (about a second of what the sink makes room for,
``maxInFlight`` a ceiling), and their turns on a queue that runs short (``polling.Turns``,
on fake loop time).

A poller whose receive came back short rests while another poller waits on the queue, so
receives come back fuller; it never rests when no other poller is receiving (someone must
wait on the queue, or a message would wait for the rest), and a full receive — a backlog —
ends every rest at once. What this saves is measured by ``bench/overhead.py``.
"""

from __future__ import annotations

import asyncio

import pytest

from workers import polling


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
