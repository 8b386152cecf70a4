"""The pollers' turns on a queue that runs short (``polling.Turns``), on fake loop time.

A poller whose receive came back short rests while another poller waits on the queue, so
receives come back fuller; it never rests when no other poller is receiving (someone must
wait on the queue, or a message would wait for the rest), and a full receive — a backlog —
ends every rest at once. What this saves is measured by ``bench/overhead.py``.
"""

from __future__ import annotations

import asyncio

import pytest

from workers import polling


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
