"""A replica's pace within a fleet-wide limit, and what a fleet of them does to a downstream.

The pure :class:`workers.pacing.Pace` is driven on a fake clock; the fleet properties run
several :class:`workers.throttling.Limiter` replicas (each with its own, possibly wrong,
replica count) against a GCRA downstream (the simulators' rate limit, a different
algorithm from ours), on a fake clock, and check what the issue promises: a fleet told
the truth uses the grant and is (almost) never throttled; a fleet told anything else is
never flooding the downstream after its first few seconds.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fanout_lab.simulators import ratelimit
from workers import pacing, throttling

RATE = 30.0


def _pace(
    replicas: int = 3, *, known: bool = True, burst: int = 10, join_seconds: float = 0.0
) -> pacing.Pace:
    """A pace; without reads of the fleet's share (``join_seconds`` 0) unless asked."""
    settings = pacing.PaceSettings(rate=RATE, burst=burst, join_seconds=join_seconds)
    return pacing.Pace(settings, replicas, 0.0, known=known)


def _joining_pace(replicas: int = 3) -> pacing.Pace:
    """A pace told it holds nothing yet, as the share reader tells it when it starts."""
    pace = _pace(replicas, join_seconds=pacing.PaceSettings(rate=RATE).join_seconds)
    pace.observe_share(None, 0.0)
    return pace


def _want(pace: pacing.Pace, start: float, end: float, step: float = 0.05) -> float:
    """Requests wait for the pace from ``start`` to ``end``; the time reached."""
    now = start
    while now < end:
        now = min(end, now + step)
        pace.wanted(now)
    return now


def test_starts_at_its_slice_and_probes_beyond_it_only_after_its_probe_time() -> None:
    pace = _pace(3)
    assert pace.probe_every == pytest.approx(pacing.PROBE_COST * 3 / (0.01 * RATE))  # the probe budget
    now = _want(pace, 0.0, pace.probe_every - 0.1)
    assert pace.rate(now) == pytest.approx(10.0)
    now = _want(pace, now, pace.probe_every + 0.5)
    assert pace.probing
    assert pace.rate(now) > 10.0


def test_a_probe_that_finds_the_fleet_full_costs_one_throttle_and_waits_twice_as_long() -> None:
    pace = _pace(3)
    first = pace.probe_every
    now = _want(pace, 0.0, first + 1.0)
    assert pace.probing
    pace.throttled(now)
    assert not pace.probing
    assert pace.rate(now) < 10.0  # a moment below the slice: the downstream gets its tokens back
    assert pace.probe_every == pytest.approx(2 * first)
    now = _want(pace, now, now + 2.0)
    assert pace.rate(now) == pytest.approx(10.0)


def test_a_probe_that_borrows_more_than_the_burst_keeps_it_until_the_replica_idles() -> None:
    pace = _pace(3, burst=10)
    now = _want(pace, 0.0, pace.probe_every + 4.0)  # 4 s of borrowing: far more than 10 requests
    assert pace.rate(now) > 20.0
    now = _want(pace, now, now + 10.0)
    assert pace.rate(now) == pytest.approx(RATE)  # up to the fleet's rate, no further
    assert pace.rate(now + 5.0) == pytest.approx(10.0)  # idle: what was borrowed is given back


def test_an_isolated_throttle_costs_a_dip_not_the_rate() -> None:
    pace = _pace(1)
    for tick in range(100):
        pace.accepted(tick * 0.033)
    dense = pace.throttled(3.3)
    assert not dense
    assert 0.85 * RATE < pace.rate(3.3) < RATE
    now = _want(pace, 3.3, 3.3 + pace.settings.return_seconds)
    assert pace.rate(now) == pytest.approx(RATE, rel=1e-3)  # back within return_seconds of wanting


def test_throttles_in_a_row_cut_by_the_share_refused_at_most_by_half() -> None:
    pace = _pace(1)
    now = 0.0
    for _ in range(10):  # three replicas that each think they are alone: 2 of 3 refused
        now += 0.01
        pace.accepted(now)
        pace.throttled(now + 0.001)
        pace.throttled(now + 0.002)
    assert pace.rate(now) < 0.5 * RATE


def test_an_unknown_count_starts_low_and_climbs_to_the_rate_while_wanted() -> None:
    pace = _pace(1, known=False)
    assert pace.rate(0.0) == pytest.approx(RATE * pace.settings.slow_start_share)
    now = 0.0
    while now < 3.0:
        now += 0.05
        pace.wanted(now)
    assert pace.rate(now) == pytest.approx(RATE)


def test_a_replica_that_does_not_want_more_does_not_grow() -> None:
    pace = _pace(1, known=False)
    assert pace.rate(30.0) == pytest.approx(RATE * pace.settings.slow_start_share)


def test_fewer_replicas_raise_the_pace_at_once_more_lower_it() -> None:
    pace = _pace(3)
    pace.set_replicas(2, 1.0)
    assert pace.rate(1.0) == pytest.approx(15.0)
    pace.set_replicas(6, 2.0)
    assert pace.rate(2.0) == pytest.approx(5.0)


def test_the_bucket_is_its_share_of_the_burst_at_most_half_a_second_of_its_pace() -> None:
    assert _pace(1, burst=10).bucket(0.0) == pytest.approx(10.0)
    assert _pace(3, burst=10).bucket(0.0) == pytest.approx(10.0 / 3)
    assert _pace(10, burst=10).bucket(0.0) == pytest.approx(1.0)
    assert _pace(1, burst=1).bucket(0.0) == pytest.approx(1.0)
    assert _pace(1, burst=60).bucket(0.0) == pytest.approx(1.0 + RATE * pacing.CATCH_UP_SECONDS)


def test_an_outage_freezes_the_pace() -> None:
    pace = _pace(3)
    pace.freeze(1.0)
    for second in range(2, 30):
        pace.throttled(float(second))  # (the limiter does not report them; nothing moves anyway)
    pace.thaw(30.0)
    assert pace.rate(30.0) <= 10.0


def test_a_share_is_what_this_replica_held_lately_of_what_the_fleet_holds() -> None:
    assert pacing.demand_share(10.0, 10, 30) == pytest.approx(1 / 3)  # 20 held by the others
    assert pacing.demand_share(6.0, 10, 10) == pytest.approx(1.0)  # nobody else holds anything
    assert pacing.demand_share(10.0, 10, 4) == pytest.approx(1.0)  # a late count: never above one
    assert pacing.demand_share(0.0, 0, 50) is None  # holds nothing: no demand to weigh
    # 12 in flight are messages this replica put back for a while: counted as its own (the
    # others count theirs), not as the others', or the shares add up to less than one
    assert pacing.demand_share(10.0, 10, 42, away=12) == pytest.approx(22 / 42)


def test_the_pace_takes_its_share_of_the_fleet_rate_as_read() -> None:
    pace = _joining_pace(3)
    assert pace.rate(0.0) == pytest.approx(10.0 * pacing.JOIN_SHARE)  # until its first read
    pace.observe_share(1 / 3, 0.5)
    assert pace.rate(0.5) == pytest.approx(10.0)
    pace.observe_share(0.2, 1.0)  # a replica joined
    assert pace.rate(1.0) == pytest.approx(6.0)
    pace.observe_share(0.5, 1.5)  # one left: its room is taken at once
    assert pace.rate(1.5) == pytest.approx(15.0)
    pace.observe_share(None, 2.0)  # holds nothing: the count decides again, at first at half
    assert pace.slice == pytest.approx(10.0 * pacing.JOIN_SHARE)
    pace.observe_share(1.0, 2.5)
    assert pace.rate(2.5) == pytest.approx(RATE)


def test_a_replica_that_starts_alone_takes_the_whole_rate_at_its_first_read() -> None:
    pace = _joining_pace(3)  # told three, the two others not started yet
    pace.observe_share(1.0, 0.5)
    assert pace.rate(0.5) == pytest.approx(RATE)


def test_after_excess_throttles_a_larger_share_is_not_taken_at_once() -> None:
    pace = _joining_pace(3)
    pace.observe_share(1 / 3, 0.5)
    assert pace.rate(0.5) == pytest.approx(10.0)
    for tick in range(6):  # a third of the requests refused: excess
        pace.accepted(0.6 + tick * 0.01)
        pace.throttled(0.6 + tick * 0.01 + 0.001)
    assert pace.rate(0.7) < 10.0
    pace.observe_share(0.5, 1.0)
    pace.observe_share(0.5, 1.5)
    assert pace.rate(1.5) < 15.0  # the downstream disagreed lately: climb by the pace's own rules
    pace.observe_share(0.5, 5.0)  # trusted again
    assert pace.rate(5.0) == pytest.approx(15.0)


@settings(max_examples=200)
@given(
    replicas=st.integers(1, 12),
    known=st.booleans(),
    steps=st.lists(
        st.tuples(
            st.floats(0, 2),
            st.sampled_from(["ok", "throttled", "wanted", "count", "share"]),
            st.integers(1, 12),
        ),
        max_size=80,
    ),
)
def test_the_pace_stays_within_the_floor_and_the_fleet_rate(
    replicas: int, known: bool, steps: list[tuple[float, str, int]]
) -> None:
    pace = _pace(replicas, known=known)
    now = 0.0
    for dt, what, count in steps:
        now += dt
        if what == "ok":
            pace.accepted(now)
        elif what == "throttled":
            before = pace.rate(now)
            pace.throttled(now)
            assert pace.rate(now) <= before + 1e-9
        elif what == "wanted":
            pace.wanted(now)
        elif what == "count":
            pace.set_replicas(count, now)
        else:
            pace.observe_share(None if count == 12 else count / 11, now)
        rate = pace.rate(now)
        assert pace.slice * pace.settings.floor_share - 1e-9 <= rate <= RATE + 1e-9
        assert pace.bucket(now) >= 1.0


def test_without_reads_the_count_decides_after_a_second_of_wanting_more() -> None:
    pace = _joining_pace(3)
    assert pace.rate(0.0) == pytest.approx(10.0 * pacing.JOIN_SHARE)
    assert pace.rate(5.0) == pytest.approx(10.0 * pacing.JOIN_SHARE)  # idle: it waits for a read
    now = _want(pace, 5.0, 5.0 + pace.settings.join_seconds + 0.1)
    assert pace.rate(now) == pytest.approx(10.0)


# ------------------------------------------------------------------------------ fleets
@dataclasses.dataclass
class FleetRun:
    sent: list[float] = dataclasses.field(default_factory=list)
    """When each request reached the downstream."""
    throttled: list[float] = dataclasses.field(default_factory=list)

    def between(self, start: float, end: float) -> tuple[int, int]:
        """(requests, throttled) that reached the downstream in [start, end)."""
        return (
            sum(1 for moment in self.sent if start <= moment < end),
            sum(1 for moment in self.throttled if start <= moment < end),
        )


@dataclasses.dataclass(frozen=True)
class Reads:
    """How replicas read what the fleet holds (:func:`workers.fleet.watch_share`, simulated):
    every ``every`` seconds, the in-flight count as it was ``lag`` seconds ago, off by up
    to ``noise`` of itself either way (real SQS says "approximate")."""

    every: float = 0.5
    lag: float = 0.0
    noise: float = 0.0


def run_fleet(
    counts: list[int | None],
    *,
    seconds: float,
    latency: float,
    jitter: float,
    seed: int,
    rate: float = RATE,
    burst: int = 10,
    busy: list[tuple[float, float]] | None = None,
    reads: Reads | None = None,
) -> FleetRun:
    """Replicas (``None``: no count known) against GCRA(rate, burst).

    Each replica, while it has work (``busy[i]``: from, until; default always), asks for a
    permit exactly when its limiter says, sends it, and hears the answer (429 with
    ``Retry-After: 1`` above the grant) one ``latency`` (+ jitter each way) later — as
    ``AsyncLimiter`` and a sink do, on a fake clock. While busy it holds about a second of
    its capacity (``polling.budget_target``); with ``reads`` it learns its share of what the
    fleet holds, as ``workers.fleet`` tells its sink.
    """
    rng = random.Random(seed)
    downstream = ratelimit.Gcra(rate, burst)
    windows = busy or [(0.0, math.inf)] * len(counts)
    limiters = [
        throttling.Limiter(
            throttling.LimiterSettings(
                rate=rate,
                burst=burst,
                replicas=count or 1,
                replicas_known=count is not None,
                max_concurrency=64,
            ),
            0.0,
            random_source=rng.random,
        )
        for count in counts
    ]
    history: list[tuple[float, int]] = [(0.0, 0)]
    """(when, what the fleet held): the reads see it ``lag`` late."""

    def holding(index: int, now: float) -> int:
        start, end = windows[index]
        if not start <= now < end:
            return 0
        return max(1, math.ceil(limiters[index].capacity(now) or 0.0))

    run = FleetRun()
    order = itertools.count()
    # (time, seq, kind, replica, permit, throttled)
    agenda: list[tuple[float, int, str, int, throttling.Permit | None, bool]] = [
        (windows[index][0], next(order), "ask", index, None, False) for index in range(len(limiters))
    ]
    if reads is not None:
        for limiter in limiters:
            limiter.set_share(None, 0.0)  # as the share reader says when it starts
        agenda += [
            (rng.random() * reads.every, next(order), "read", index, None, False)
            for index in range(len(limiters))
        ]
    heapq.heapify(agenda)
    while agenda:
        now, _, kind, index, permit, refused = heapq.heappop(agenda)
        if now > seconds:
            break
        limiter = limiters[index]
        if kind == "answer":
            assert permit is not None
            result = throttling.Result.THROTTLED if refused else throttling.Result.OK
            limiter.release(permit, result, now, retry_after=1.0 if refused else None)
            continue
        if kind == "read":
            assert reads is not None
            held = [holding(other, now) for other in range(len(limiters))]
            history.append((now, sum(held)))
            seen = next(total for when, total in reversed(history) if when <= now - reads.lag or when == 0.0)
            seen = round(seen * (1.0 + reads.noise * (2.0 * rng.random() - 1.0)))
            limiter.set_share(pacing.demand_share(held[index], held[index], max(seen, held[index])), now)
            heapq.heappush(agenda, (now + reads.every, next(order), "read", index, None, False))
            continue
        if now >= windows[index][1]:
            continue  # its work is done
        decision = limiter.try_acquire(now)
        if isinstance(decision, throttling.Permit):
            arrive = now + latency + rng.random() * jitter
            refused = downstream.take(arrive) > 0
            run.sent.append(arrive)
            if refused:
                run.throttled.append(arrive)
            back = arrive + latency + rng.random() * jitter
            heapq.heappush(agenda, (back, next(order), "answer", index, decision, refused))
            heapq.heappush(agenda, (now, next(order), "ask", index, None, False))
        else:
            wait = decision.seconds if decision.seconds != float("inf") else 0.05
            heapq.heappush(agenda, (now + wait, next(order), "ask", index, None, False))
    return run


@settings(max_examples=30, deadline=None)
@given(replicas=st.integers(1, 10), seed=st.integers(0, 1000), jitter=st.floats(0, 0.02))
def test_a_fleet_told_the_truth_uses_the_grant_and_is_almost_never_throttled(
    replicas: int, seed: int, jitter: float
) -> None:
    seconds = 30.0
    run = run_fleet(
        [replicas] * replicas, seconds=seconds, latency=0.01, jitter=jitter, seed=seed, reads=Reads()
    )
    requests, throttled = run.between(0.0, seconds)
    accepted = requests - throttled
    assert throttled <= 0.01 * requests, (throttled, requests)
    assert accepted >= 0.97 * RATE * seconds, accepted
    # never above the grant over any second (the downstream's burst aside)
    for start in range(int(seconds) - 1):
        sent, _ = run.between(float(start), start + 1.0)
        assert sent <= RATE + 10 + 1


@settings(max_examples=20, deadline=None)
@given(replicas=st.integers(2, 10), seed=st.integers(0, 1000), jitter=st.floats(0, 0.02))
def test_a_fleet_told_no_count_that_reads_what_it_holds_does_as_well_as_one_told_the_truth(
    replicas: int, seed: int, jitter: float
) -> None:
    """No file, no ``FANOUT_REPLICAS``: every replica starts low as if alone. Its first read of
    what the fleet holds gives it its part of the rate at once, and its probes for unused
    grant come as seldom as in a fleet told its count (one over its share is the fleet's size):
    the same figures as :func:`test_a_fleet_told_the_truth_uses_the_grant_and_is_almost_never_throttled`.
    (Probing as if alone, ten replicas were refused 2-2.7% of their requests over 40 s; climbing
    from the slow start after the read, three used 0.93 of the grant.)"""
    seconds = 40.0
    run = run_fleet([None] * replicas, seconds=seconds, latency=0.01, jitter=jitter, seed=seed, reads=Reads())
    requests, throttled = run.between(0.0, seconds)
    assert throttled <= 0.01 * requests, (throttled, requests)
    assert requests - throttled >= 0.97 * RATE * seconds, (requests, throttled)


@settings(max_examples=25, deadline=None)
@given(
    counts=st.lists(st.one_of(st.none(), st.integers(1, 6)), min_size=1, max_size=6),
    seed=st.integers(0, 1000),
    jitter=st.floats(0, 0.02),
)
def test_a_fleet_told_anything_never_floods_and_finds_an_unused_grant(
    counts: list[int | None], seed: int, jitter: float
) -> None:
    """Whatever each replica believes the count is (or if nobody said): after its first
    seconds the fleet is never refused more than a tenth of its requests; and once every
    replica had time for a probe, it uses the grant."""
    settle = 5.0
    first_probe = max(
        pacing.Pace(pacing.PaceSettings(rate=RATE), count or 1, 0.0).probe_every for count in counts
    )
    seconds = first_probe + 30.0
    run = run_fleet(counts, seconds=seconds, latency=0.01, jitter=jitter, seed=seed)
    requests, throttled = run.between(settle, seconds)
    assert throttled <= 0.1 * requests, (throttled, requests)
    requests, throttled = run.between(seconds - 15.0, seconds)
    assert requests - throttled >= 0.8 * RATE * 15.0, (requests, throttled)


def test_a_fleet_reading_what_it_holds_uses_the_grant_however_the_work_is_spread() -> None:
    """Three replicas told "3": one busy throughout, one that leaves at 10 s (its slice idle
    from then on, the count never corrected), one that joins at 15 s. Reading what the fleet
    holds, the busy ones use the whole grant; told the count alone, they would leave a third
    of it unused between 10 and 15 s (a probe takes longer than that to find it)."""
    busy = [(0.0, math.inf), (0.0, 10.0), (15.0, math.inf)]
    for seed in range(5):
        run = run_fleet(
            [3, 3, 3], seconds=30.0, latency=0.01, jitter=0.01, seed=seed, busy=busy, reads=Reads()
        )
        requests, throttled = run.between(2.0, 30.0)
        assert throttled <= 0.01 * requests, (seed, throttled, requests)
        assert requests - throttled >= 0.97 * RATE * 28.0, (seed, requests, throttled)
        blind = run_fleet([3, 3, 3], seconds=30.0, latency=0.01, jitter=0.01, seed=seed, busy=busy)
        requests, throttled = blind.between(10.5, 15.0)
        assert requests - throttled < 0.75 * RATE * 4.5  # the count alone: a third unused


@settings(max_examples=25, deadline=None)
@given(
    counts=st.lists(st.one_of(st.none(), st.integers(1, 6)), min_size=1, max_size=6),
    starts=st.lists(st.floats(0, 10), min_size=6, max_size=6),
    lengths=st.lists(st.floats(2, 40), min_size=6, max_size=6),
    lag=st.floats(0, 1.5),
    noise=st.floats(0, 0.3),
    seed=st.integers(0, 1000),
)
def test_a_fleet_reading_late_and_wrong_counts_never_floods(
    counts: list[int | None],
    starts: list[float],
    lengths: list[float],
    lag: float,
    noise: float,
    seed: int,
) -> None:
    """Reads up to 1.5 s late and 30% off (what an approximate in-flight count may do), any
    replica count, replicas coming and going: after the first seconds the fleet is never
    refused more than a tenth of its requests over any ten seconds."""
    busy = [(start, start + length) for start, length in zip(starts, lengths, strict=False)][: len(counts)]
    seconds = 50.0
    run = run_fleet(
        counts,
        seconds=seconds,
        latency=0.01,
        jitter=0.01,
        seed=seed,
        busy=busy,
        reads=Reads(lag=lag, noise=noise),
    )
    for start in range(5, int(seconds) - 10, 5):
        requests, throttled = run.between(float(start), start + 10.0)
        assert throttled <= max(3, 0.1 * requests), (start, throttled, requests)
