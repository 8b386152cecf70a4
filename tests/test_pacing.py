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
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fanout_lab.simulators import ratelimit
from workers import pacing, throttling

RATE = 30.0


def _pace(replicas: int = 3, *, known: bool = True, burst: int = 10) -> pacing.Pace:
    return pacing.Pace(pacing.PaceSettings(rate=RATE, burst=burst), replicas, 0.0, known=known)


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


@settings(max_examples=200)
@given(
    replicas=st.integers(1, 12),
    known=st.booleans(),
    steps=st.lists(
        st.tuples(
            st.floats(0, 2), st.sampled_from(["ok", "throttled", "wanted", "count"]), st.integers(1, 12)
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
        else:
            pace.set_replicas(count, now)
        rate = pace.rate(now)
        assert pace.slice * pace.settings.floor_share - 1e-9 <= rate <= RATE + 1e-9
        assert pace.bucket(now) >= 1.0


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


def run_fleet(
    counts: list[int | None],
    *,
    seconds: float,
    latency: float,
    jitter: float,
    seed: int,
    rate: float = RATE,
    burst: int = 10,
) -> FleetRun:
    """Replicas with unbounded demand (``None``: no count known) against GCRA(rate, burst).

    Each replica asks for a permit exactly when its limiter says, sends it, and hears the
    answer (429 with ``Retry-After: 1`` above the grant) one ``latency`` (+ jitter each way)
    later — as ``AsyncLimiter`` and a sink do, on a fake clock.
    """
    rng = random.Random(seed)
    downstream = ratelimit.Gcra(rate, burst)
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
    run = FleetRun()
    order = itertools.count()
    # (time, seq, kind, replica, permit, throttled)
    agenda: list[tuple[float, int, str, int, throttling.Permit | None, bool]] = [
        (0.0, next(order), "ask", index, None, False) for index in range(len(limiters))
    ]
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
    run = run_fleet([replicas] * replicas, seconds=seconds, latency=0.01, jitter=jitter, seed=seed)
    requests, throttled = run.between(0.0, seconds)
    accepted = requests - throttled
    assert throttled <= 0.01 * requests, (throttled, requests)
    assert accepted >= 0.97 * RATE * seconds, accepted
    # never above the grant over any second (the downstream's burst aside)
    for start in range(int(seconds) - 1):
        sent, _ = run.between(float(start), start + 1.0)
        assert sent <= RATE + 10 + 1


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
