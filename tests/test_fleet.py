"""How the fleet-wide rate is divided: the replica count (file first, env fallback, re-read on
change) and each replica's share of what the fleet holds, read from a real queue (moto)."""

from __future__ import annotations

import asyncio
import os
import pathlib
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fanout_core import spec
from fanout_lab import harness
from fanout_lab.simulators import webhook
from workers import events, fleet
from workers.sinks import webhook as webhook_sink


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _write(path: pathlib.Path, text: str, mtime_ns: int) -> None:
    path.write_text(text)
    os.utime(path, ns=(mtime_ns, mtime_ns))


def test_environment_fallback_without_the_file(tmp_path: pathlib.Path) -> None:
    missing = str(tmp_path / "absent")
    assert fleet.ReplicaCount.from_environment({"FANOUT_REPLICAS_FILE": missing}).current() == 1
    env = {"FANOUT_REPLICAS_FILE": missing, "FANOUT_REPLICAS": "4"}
    assert fleet.ReplicaCount.from_environment(env).current() == 4
    env["FANOUT_REPLICAS"] = "lots"
    assert fleet.ReplicaCount.from_environment(env).current() == 1


def test_file_is_reread_when_it_changes_at_most_every_interval(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "replicas"
    _write(path, "3\n", 1_000_000_000)
    clock = FakeClock()
    count = fleet.ReplicaCount.from_environment(
        {"FANOUT_REPLICAS_FILE": str(path), "FANOUT_REPLICAS": "7"}, check_interval=2.0, clock=clock
    )
    assert count.current() == 3
    _write(path, "5\n", 2_000_000_000)
    clock.now = 1.0
    assert count.current() == 3  # not checked yet
    clock.now = 2.5
    assert count.current() == 5
    _write(path, "garbage", 3_000_000_000)
    clock.now = 5.0
    assert count.current() == 5  # a bad file keeps the last good count
    _write(path, "0", 4_000_000_000)
    clock.now = 8.0
    assert count.current() == 1  # scaled to zero, yet we run: one replica
    path.unlink()
    clock.now = 11.0
    assert count.current() == 7  # the env fallback


@pytest.mark.parametrize("replicas", [1, 4])
async def test_the_sink_limiter_follows_the_replica_count(tmp_path: pathlib.Path, replicas: int) -> None:
    path = tmp_path / "replicas"
    _write(path, "2", 1_000_000_000)
    clock = FakeClock()
    count = fleet.ReplicaCount(path=path, check_interval=1.0, clock=clock)
    sink_spec = spec.SinkSpec(
        type=spec.SinkType.WEBHOOK,
        url="http://127.0.0.1:9",
        rate_limit=spec.RateLimitSpec(requests_per_second=40, burst=8),
    )
    async with webhook.WebhookSimulator() as sim:
        sink = webhook_sink.WebhookSink(sink_spec.model_copy(update={"url": sim.url}), replicas=count)
        assert sink.limiter.snapshot().rate == pytest.approx(20)
        _write(path, str(replicas), 2_000_000_000)
        clock.now = 5.0
        outcome = await sink.deliver(events.Event(events.EventId("e"), "t", {"x": 1}))
        assert isinstance(outcome, events.Delivered)
        assert sink.limiter.snapshot().rate == pytest.approx(40 / replicas)
        await sink.aclose()


# ------------------------------------------------------------------ the share of the work
async def test_the_share_is_what_this_replica_holds_of_what_sqs_says_the_fleet_holds(sqs: Any) -> None:
    """Read from a real queue: 8 messages in flight, this replica holds 2 of them."""
    url = await harness.make_queue(sqs, "fleet-share")
    await harness.send_bodies(sqs, url, [f'{{"n": {n}}}' for n in range(10)], max_backlog=100)
    for _ in range(4):  # the "other replicas" take 6, this one 2
        await sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=2, VisibilityTimeout=60)
    told: list[float | None] = []
    watcher = asyncio.create_task(
        fleet.watch_share(sqs, events.QueueUrl(url), held=lambda: 2, tell=told.append, interval=0.1)
    )
    try:
        assert await harness.wait_until(lambda: len(told) >= 3, timeout=10, interval=0.05)
    finally:
        watcher.cancel()
    assert told[0] is None  # nothing held when it started: the count, at first at half
    assert told[1] == pytest.approx(2 / 8)
    assert told[2] == pytest.approx(2 / 8)


async def test_a_replica_that_holds_nothing_asks_sqs_nothing_and_lets_the_count_decide(sqs: Any) -> None:
    holding = [3]
    told: list[float | None] = []
    url = await harness.make_queue(sqs, "fleet-share-idle")
    watcher = asyncio.create_task(
        fleet.watch_share(sqs, events.QueueUrl(url), held=lambda: holding[0], tell=told.append, interval=0.1)
    )
    try:
        assert await harness.wait_until(lambda: len(told) >= 2, timeout=10, interval=0.05)
        assert told[-1] == pytest.approx(1.0)  # nothing in flight in SQS: it holds everything
        holding[0] = 0
        assert await harness.wait_until(lambda: told[-1] is None, timeout=10, interval=0.05)
        reads = len(told)
        await asyncio.sleep(0.5)
        assert len(told) == reads  # idle: no reads, nothing told
    finally:
        watcher.cancel()


async def test_a_share_that_cannot_be_read_leaves_the_count_to_decide(sqs: Any) -> None:
    told: list[float | None] = []
    missing = events.QueueUrl("http://127.0.0.1:9/000000000000/no-such-queue")
    watcher = asyncio.create_task(fleet.watch_share(sqs, missing, held=lambda: 5, tell=told.append))
    try:
        assert await harness.wait_until(lambda: told == [None, None], timeout=30, interval=0.05)
    finally:
        watcher.cancel()


@given(
    low=st.integers(1, 20),
    receive=st.integers(1, 10),
    others=st.integers(0, 200),
    away=st.integers(0, 20),
    phase=st.integers(0, 100),
)
def test_a_share_is_the_same_whatever_the_phase_of_the_receive_cycle_it_is_read_at(
    low: int, receive: int, others: int, away: int, phase: int
) -> None:
    """A replica's hold climbs by a whole receive and falls one delivery at a time; the others
    hold ``others``. Read at any point of that cycle (SQS counting what everyone holds then),
    its share is its average hold's part of the fleet's: a read at the low of the cycle takes no
    less than one at the high, so the replicas' shares add up to one."""
    cycle = [low + receive - step for step in range(receive)]  # just received, then delivering
    held_now = cycle[phase % len(cycle)]
    mean = sum(cycle) / len(cycle)
    share = fleet.share_of(cycle, held_now, held_now + others + away, away=away)
    assert share == pytest.approx((mean + away) / (mean + away + others))
