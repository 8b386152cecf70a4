"""Supervised tasks: restarts back off, readiness falls after crashes in a row and comes back
once a restart runs stably; and a worker whose loop keeps crashing says so on /readyz."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import httpx
import pytest

from fanout_lab import harness
from fanout_lab.simulators import webhook
from workers import events, running, supervision
from workers.sinks import base


@pytest.mark.looptime
async def test_restarts_back_off_and_health_follows_the_crashes() -> None:
    loop = asyncio.get_running_loop()
    starts: list[float] = []
    changes: list[tuple[float, bool]] = []
    health = supervision.Health(on_change=lambda healthy: changes.append((loop.time(), healthy)))

    async def flaky() -> None:
        starts.append(loop.time())
        if len(starts) <= 4:
            raise RuntimeError("boom")
        await asyncio.sleep(100)  # runs well

    task = asyncio.create_task(supervision.supervise("flaky", flaky, health=health, stable_seconds=30))
    await asyncio.sleep(200)
    task.cancel()
    gaps = [round(later - earlier, 3) for earlier, later in itertools.pairwise(starts)]
    assert gaps == [1.0, 2.0, 4.0, 8.0]  # exponential, not a spin
    # Unhealthy at the third crash in a row, healthy again after 30 s of a stable run.
    assert changes == [(starts[2], False), (starts[4] + 30, True)]
    assert health.healthy


@pytest.mark.looptime
async def test_a_loop_that_returns_is_not_restarted_and_cancellation_is_never_caught() -> None:
    runs = 0

    async def once() -> None:
        nonlocal runs
        runs += 1

    health = supervision.Health()
    await supervision.supervise("once", once, health=health)
    assert runs == 1

    async def forever() -> None:
        await asyncio.sleep(1000)

    task = asyncio.create_task(supervision.supervise("forever", forever, health=health))
    await asyncio.sleep(1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


class BreakingSink:
    """A sink whose backpressure signal starts raising after a while: every poller then
    crashes on every round."""

    name = "breaking"
    accepting = True

    def __init__(self) -> None:
        self.broken = False

    async def wait_accepting(self) -> None:
        if self.broken:
            raise RuntimeError("the sink's state is corrupt")

    def capacity(self) -> float | None:
        return None

    def set_fleet_share(self, share: float | None) -> None:
        return None

    async def deliver(self, event: events.Event, admit: base.Admission | None = None) -> events.Outcome:
        return events.Delivered()

    async def flush(self) -> None:
        pass

    async def aclose(self) -> None:
        pass


async def test_a_worker_whose_pollers_keep_crashing_is_not_ready(sqs: Any) -> None:
    source = await harness.make_queue(sqs, "crashing-pollers")
    async with webhook.WebhookSimulator() as sim:
        document = harness.manifest(queue_url=source, sink_url=sim.url)
        sink = BreakingSink()
        worker = running.Worker(harness.consumer(document), sink=sink, http_port=0)
        stop = asyncio.Event()
        task = asyncio.create_task(worker.run(stop))
        try:
            await worker.wait_started()
            assert worker.http_url is not None
            async with httpx.AsyncClient(base_url=worker.http_url) as client:

                async def ready() -> bool:
                    return (await client.get("/readyz")).status_code == 200

                async def not_ready() -> bool:
                    return (await client.get("/readyz")).status_code == 503

                assert await harness.wait_until(ready, timeout=10)
                sink.broken = True

                # Crashes at 0, 1, 3 s (backoff 1 s, 2 s): unready from the third.
                assert await harness.wait_until(not_ready, timeout=10)
                assert (await client.get("/healthz")).status_code == 200
            assert worker.health.crashing == {"poller-0", "poller-1"}
        finally:
            stop.set()
            await asyncio.wait_for(task, timeout=30)
