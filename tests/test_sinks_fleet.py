"""Three replicas' sinks sharing one downstream limit, over loopback.

Each replica's sink is told ``replicas=3`` and so takes a third of the fleet-wide
``rateLimit``; together they must use the downstream's capacity (goodput >= 95% of the
granted rate) without being throttled (<= 1% of requests), and during a full outage only
circuit probes may reach the server, after which everything is delivered exactly once.
The driver stands in for the worker runtime: lanes pull from one shared backlog (like
replicas sharing one SQS queue) and put retries back.
"""

from __future__ import annotations

import asyncio
import contextlib
import pathlib
import time
from typing import Any

import pytest

from fanout_core import spec
from fanout_lab.simulators import crm
from workers import events, fleet, throttling
from workers.sinks import base
from workers.sinks import crm as crm_sink

# Goodput measured in wall-clock time: run alone, after the parallel phase (make test).
pytestmark = pytest.mark.serial

REPLICAS = 3


def _event(n: int) -> events.Event:
    key = f"conv-{n % 97}"
    payload = {"eventBody": {"conversationId": key, "eventTime": 1_700_000_000_000 + n}}
    return events.Event(events.EventId(f"evt-{n}"), "t", payload, key, event_time_ms=1_700_000_000_000 + n)


def _sinks(url: str, token: str, token_file: pathlib.Path, **sink: Any) -> list[crm_sink.CrmSink]:
    token_file.write_text(token)
    sink_spec = spec.SinkSpec.model_validate(
        {"type": "crm", "url": url, "crm": {"token": {"file": str(token_file)}}, **sink}
    )
    return [crm_sink.CrmSink(sink_spec, replicas=fleet.FixedReplicas(REPLICAS)) for _ in range(REPLICAS)]


async def _replica(sink: base.Sink, backlog: asyncio.Queue[events.Event], lanes: int) -> None:
    async def lane() -> None:
        while True:
            event = await backlog.get()
            await sink.wait_accepting()
            outcome = await sink.deliver(event)
            if isinstance(outcome, events.Retry):
                backlog.put_nowait(event)

    await asyncio.gather(*(lane() for _ in range(lanes)))


async def _run_fleet(
    sinks: list[crm_sink.CrmSink], backlog: asyncio.Queue[events.Event], seconds: float
) -> None:
    tasks = [asyncio.create_task(_replica(sink, backlog, lanes=8)) for sink in sinks]
    try:
        await asyncio.sleep(seconds)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def test_three_replicas_use_the_shared_limit_without_being_throttled(tmp_path: pathlib.Path) -> None:
    rate, burst, seconds, warmup = 60.0, 12, 8.0, 1.0
    async with crm.CrmSimulator(rate=rate, burst=burst, latency=0.01) as sim:
        sinks = _sinks(
            sim.url,
            sim.token,
            tmp_path / "token",
            rateLimit={"requestsPerSecond": rate, "burst": burst},
            maxConcurrency=8,
        )
        backlog: asyncio.Queue[events.Event] = asyncio.Queue()
        for n in range(int(rate * seconds * 2)):
            backlog.put_nowait(_event(n))
        started = time.monotonic()
        await _run_fleet(sinks, backlog, seconds)
        for sink in sinks:
            await sink.aclose()
    window = [item for item in sim.accepted if started + warmup <= item.received_at < started + seconds]
    goodput = len(window) / (rate * (seconds - warmup))
    throttled = sim.throttled_count / sim.requests_total
    assert goodput >= 0.95, f"goodput {goodput:.3f} of the granted rate"
    assert throttled <= 0.01, f"{sim.throttled_count} of {sim.requests_total} requests throttled"
    assert not sim.duplicates()


@pytest.mark.parametrize("outage_seconds", [3.0])
async def test_a_full_outage_only_lets_probes_through_and_nothing_is_lost(
    outage_seconds: float, tmp_path: pathlib.Path
) -> None:
    await _outage(outage_seconds, tmp_path, open_seconds=0.5)


@pytest.mark.soak
async def test_a_sixty_second_outage_soak(tmp_path: pathlib.Path) -> None:
    await _outage(60.0, tmp_path, open_seconds=5.0)


async def _outage(outage_seconds: float, tmp_path: pathlib.Path, *, open_seconds: float) -> None:
    rate, total = 30.0, 150
    # each replica's probes while the downstream stays down (``throttling``): here every
    # 0.4 s, a quarter of its slice
    every = throttling.outage_probe_seconds(open_seconds, rate / REPLICAS, throttling.OUTAGE_PROBE_SHARE)
    max_probes_per_second = REPLICAS / every
    async with crm.CrmSimulator(rate=rate, burst=6, latency=0.005) as sim:
        sinks = _sinks(
            sim.url,
            sim.token,
            tmp_path / "token",
            rateLimit={"requestsPerSecond": rate, "burst": 6},
            maxConcurrency=8,
            circuitFailureThreshold=3,
            circuitOpenSeconds=open_seconds,
        )
        backlog: asyncio.Queue[events.Event] = asyncio.Queue()
        for n in range(total):
            backlog.put_nowait(_event(n))
        tasks = [asyncio.create_task(_replica(sink, backlog, lanes=8)) for sink in sinks]
        try:
            await asyncio.sleep(1.0)
            sim.set_outage(True)
            outage_started = time.monotonic()
            await asyncio.sleep(outage_seconds)
            outage_ended = time.monotonic()
            sim.set_outage(False)
            for _ in range(int((30 + open_seconds * 4) / 0.1)):
                if len({item.event_id for item in sim.accepted}) == total:
                    break
                await asyncio.sleep(0.1)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for sink in sinks:
                await sink.aclose()
    # once every circuit is open (a few failures per replica), only probes arrive
    settled = outage_started + 1.0
    probes = sim.requests_between(settled, outage_ended)
    assert probes <= max_probes_per_second * (outage_ended - settled) + REPLICAS, probes
    assert sim.outage_count >= REPLICAS  # the outage was seen
    delivered = [item.event_id for item in sim.accepted]
    assert set(delivered) == {f"evt-{n}" for n in range(total)}, "events lost"
