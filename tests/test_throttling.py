"""The limiter's promises, proven with hypothesis on a fake clock, plus its async face.

The pure core is driven by random schedules of "time passes / ask for a permit /
an answer comes back (ok, throttled, 503, failure, with or without Retry-After) / the
rate changes"; every test then checks one promise over the whole trace.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fanout_core import spec
from workers import throttling
from workers.sinks import exchange

EPS = 1e-6
RESULTS = list(throttling.Result)


@dataclasses.dataclass
class Trace:
    grants: list[tuple[float, throttling.Permit]] = dataclasses.field(default_factory=list)
    pauses: list[tuple[int, float]] = dataclasses.field(default_factory=list)
    """(number of grants before it, until) of each Retry-After the whole sink owes."""
    skips: list[tuple[int, float]] = dataclasses.field(default_factory=list)
    """(number of grants before it, when) of each short throttle: the limiter may skip a beat
    instead of pausing (when it is not excess), never less."""
    states: list[tuple[float, throttling.CircuitState, int, int]] = dataclasses.field(default_factory=list)
    """(now, circuit, concurrency limit, in flight) after every step."""
    rate_changes: list[tuple[float, float]] = dataclasses.field(default_factory=list)
    results: dict[int, throttling.Result] = dataclasses.field(default_factory=dict)
    granted_during_probe: list[throttling.Permit] = dataclasses.field(default_factory=list)
    """Permits granted while a probe was outstanding (must stay empty)."""


step = st.tuples(
    st.floats(0, 1.5),  # time passes
    st.integers(0, 6),  # permits asked for
    st.integers(0, 6),  # answers returned (oldest first)
    st.sampled_from(RESULTS),
    st.one_of(st.none(), st.floats(0.01, 5)),  # Retry-After on those answers
)

# mostly failures: the circuit opens and probes often
failing_step = st.tuples(
    st.floats(0, 3),
    st.integers(0, 4),
    st.integers(0, 4),
    st.sampled_from([throttling.Result.FAILED, throttling.Result.OVERLOADED] * 3 + RESULTS),
    st.one_of(st.none(), st.floats(0.01, 2)),
)


def run(
    limits: throttling.LimiterSettings,
    steps: list[tuple[float, int, int, throttling.Result, float | None]],
    rate_schedule: dict[int, float] | None = None,
) -> Trace:
    now = 100.0
    limiter = throttling.Limiter(limits, now)
    trace = Trace()
    outstanding: list[throttling.Permit] = []
    for index, (dt, asks, answers, result, retry_after) in enumerate(steps):
        now += dt
        if rate_schedule and index in rate_schedule:
            limiter.set_rate(rate_schedule[index], now)
            trace.rate_changes.append((now, rate_schedule[index]))
        for _ in range(asks):
            decision = limiter.try_acquire(now)
            if isinstance(decision, throttling.Wait):
                assert decision.seconds > 0
                break
            if any(permit.probe for permit in outstanding):
                trace.granted_during_probe.append(decision)
            trace.grants.append((now, decision))
            outstanding.append(decision)
        for _ in range(min(answers, len(outstanding))):
            permit = outstanding.pop(0)
            throttle = (
                limits.rate is not None
                and result in (throttling.Result.THROTTLED, throttling.Result.OVERLOADED)
                and limiter.circuit(now) is throttling.CircuitState.CLOSED
            )
            limiter.release(permit, result, now, retry_after=retry_after)
            trace.results[permit.serial] = result
            if retry_after is not None and retry_after > 0:
                if throttle and retry_after <= throttling.SHORT_RETRY_AFTER:
                    trace.skips.append((len(trace.grants), now))
                else:
                    trace.pauses.append((len(trace.grants), now + retry_after))
        trace.states.append((now, limiter.circuit(now), limiter.concurrency_limit, limiter.in_flight))
    return trace


def _limiter_settings(rate: st.SearchStrategy[float | None]) -> st.SearchStrategy[throttling.LimiterSettings]:
    return st.builds(
        throttling.LimiterSettings,
        rate=rate,
        burst=st.integers(1, 10),
        max_concurrency=st.integers(1, 8),
        failure_threshold=st.integers(1, 4),
        open_seconds=st.floats(0.5, 3),
        max_open_seconds=st.just(10.0),
    )


limiter_settings = _limiter_settings(st.floats(0.2, 50))
any_limiter_settings = _limiter_settings(st.one_of(st.none(), st.floats(0.2, 50)))


@settings(max_examples=200)
@given(limits=limiter_settings, steps=st.lists(step, max_size=120))
def test_never_exceeds_the_bucket_over_any_window(
    limits: throttling.LimiterSettings, steps: list[tuple[float, int, int, throttling.Result, float | None]]
) -> None:
    assert limits.rate is not None
    trace = run(limits, steps)
    # A permit handed back unused gives its token back: only the sent requests count.
    unused = throttling.Result.UNUSED
    times = [moment for moment, permit in trace.grants if trace.results.get(permit.serial) is not unused]
    for i, start in enumerate(times):
        for j in range(i, len(times)):
            assert j - i + 1 <= limits.burst + limits.rate * (times[j] - start) + EPS


@settings(max_examples=200)
@given(limits=any_limiter_settings, steps=st.lists(step, max_size=120))
def test_honours_retry_after_and_a_short_throttle_at_least_skips_a_beat(
    limits: throttling.LimiterSettings, steps: list[tuple[float, int, int, throttling.Result, float | None]]
) -> None:
    trace = run(limits, steps)
    for first_after, until in trace.pauses:
        for moment, _ in trace.grants[first_after:]:
            assert moment >= until, f"granted at {moment}, paused until {until}"
    for first_after, when in trace.skips:
        assert limits.rate is not None
        for moment, _ in trace.grants[first_after : first_after + 1]:
            assert moment >= when + 1.0 / limits.rate - EPS, f"granted at {moment}, beat skipped at {when}"


@settings(max_examples=200)
@given(limits=any_limiter_settings, steps=st.lists(step, max_size=120))
def test_concurrency_stays_between_one_and_the_maximum(
    limits: throttling.LimiterSettings, steps: list[tuple[float, int, int, throttling.Result, float | None]]
) -> None:
    for _, _, limit, in_flight in run(limits, steps).states:
        assert 1 <= limit <= limits.max_concurrency
        assert in_flight <= limits.max_concurrency


@settings(max_examples=300)
@given(limits=any_limiter_settings, steps=st.lists(failing_step, min_size=30, max_size=120))
def test_an_open_circuit_lets_one_probe_through_per_open_period(
    limits: throttling.LimiterSettings, steps: list[tuple[float, int, int, throttling.Result, float | None]]
) -> None:
    trace = run(limits, steps)
    assert not trace.granted_during_probe
    probes = [(moment, permit) for moment, permit in trace.grants if permit.probe]
    for (earlier, first), (later, _) in itertools.pairwise(probes):
        # a failed probe re-opens the circuit for a whole period; a successful one closes
        # it, and the next opening starts a new period; only an abandoned probe
        # (cancelled: no answer) or one never sent (unused) lets the next one through at once
        if trace.results[first.serial] not in (throttling.Result.CANCELLED, throttling.Result.UNUSED):
            assert later - earlier >= limits.open_seconds - EPS


@settings(max_examples=200)
@given(
    limits=limiter_settings,
    outcomes=st.lists(st.sampled_from([throttling.Result.FAILED, throttling.Result.OVERLOADED]), max_size=40),
    gaps=st.lists(st.floats(0, 4), min_size=40, max_size=40),
)
def test_circuit_opens_after_the_threshold_and_probes_one_at_a_time(
    limits: throttling.LimiterSettings, outcomes: list[throttling.Result], gaps: list[float]
) -> None:
    """Against a dead downstream: after the threshold only probes pass, one per open period."""
    now = 0.0
    limiter = throttling.Limiter(dataclasses.replace(limits, rate=None), now)
    granted_while_not_closed: list[tuple[float, throttling.Permit]] = []
    failures_in_a_row = 0
    for gap in gaps:
        now += gap
        state_before = limiter.circuit(now)
        decision = limiter.try_acquire(now)
        if isinstance(decision, throttling.Wait):
            assert state_before is throttling.CircuitState.OPEN or limiter.in_flight > 0
            continue
        # a second ask while the permit is outstanding: never a second probe
        if decision.probe:
            assert isinstance(limiter.try_acquire(now), throttling.Wait)
            granted_while_not_closed.append((now, decision))
        else:
            assert state_before is throttling.CircuitState.CLOSED
            failures_in_a_row += 1
        limiter.release(decision, throttling.Result.FAILED, now)
        if failures_in_a_row >= limits.failure_threshold:
            assert limiter.circuit(now) is throttling.CircuitState.OPEN
    for (earlier, _), (later, _) in itertools.pairwise(granted_while_not_closed):
        assert later - earlier >= limits.open_seconds - EPS


def test_probe_success_closes_and_probe_failure_backs_off() -> None:
    limits = throttling.LimiterSettings(failure_threshold=2, open_seconds=1, max_open_seconds=3)
    limiter = throttling.Limiter(limits, 0.0, random_source=lambda: 0.0)
    for _ in range(2):
        permit = limiter.try_acquire(0.0)
        assert isinstance(permit, throttling.Permit)
        limiter.release(permit, throttling.Result.OVERLOADED, 0.0)
    assert limiter.circuit(0.0) is throttling.CircuitState.OPEN
    assert limiter.accepting_in(0.0) == pytest.approx(1.0)
    wait = limiter.try_acquire(0.5)
    assert isinstance(wait, throttling.Wait)
    assert wait.reason is throttling.WaitReason.CIRCUIT_OPEN
    probe = limiter.try_acquire(1.0)
    assert isinstance(probe, throttling.Permit)
    assert probe.probe
    limiter.release(probe, throttling.Result.FAILED, 1.0)
    assert limiter.accepting_in(1.0) == pytest.approx(2.0)  # doubled
    probe = limiter.try_acquire(3.0)
    assert isinstance(probe, throttling.Permit)
    limiter.release(probe, throttling.Result.FAILED, 3.0)
    assert limiter.accepting_in(3.0) == pytest.approx(3.0)  # capped
    probe = limiter.try_acquire(6.0)
    assert isinstance(probe, throttling.Permit)
    limiter.release(probe, throttling.Result.OK, 6.0)
    assert limiter.circuit(6.0) is throttling.CircuitState.CLOSED
    assert isinstance(limiter.try_acquire(6.0), throttling.Permit)


def test_an_isolated_short_throttle_skips_a_beat_and_a_second_one_pauses_the_sink() -> None:
    """At the configured rate an occasional 429 (Retry-After: 1) is the two buckets drifting
    in phase: one interval of silence, not a whole second of it; throttles that are a real
    share of what was sent are excess and get the whole Retry-After."""
    limiter = throttling.Limiter(throttling.LimiterSettings(rate=30, burst=10), 0.0)
    permit = limiter.try_acquire(0.0)
    assert isinstance(permit, throttling.Permit)
    limiter.release(permit, throttling.Result.THROTTLED, 0.01, retry_after=1.0)
    assert not limiter.paused(0.01)
    assert isinstance(limiter.try_acquire(0.01), throttling.Wait)
    permit = limiter.try_acquire(0.1)  # about one interval later
    assert isinstance(permit, throttling.Permit)
    limiter.release(permit, throttling.Result.THROTTLED, 0.11, retry_after=1.0)
    assert limiter.paused(0.11)
    assert limiter.accepting_in(0.11) == pytest.approx(1.0)
    # a long Retry-After is honoured even alone
    fresh = throttling.Limiter(throttling.LimiterSettings(rate=30, burst=10), 0.0)
    permit = fresh.try_acquire(0.0)
    assert isinstance(permit, throttling.Permit)
    fresh.release(permit, throttling.Result.THROTTLED, 0.01, retry_after=30.0)
    assert fresh.accepting_in(0.01) == pytest.approx(30.0)


def test_throttles_that_are_a_sliver_of_what_was_sent_never_pause_the_sink() -> None:
    """Phase drift on a loaded machine: a throttle every second or so among thirty accepted
    requests a second is not excess (pausing a second for each cost a third of the grant)."""
    limiter = throttling.Limiter(throttling.LimiterSettings(rate=30, burst=10), 0.0)
    now = 0.0
    for second in range(6):
        for _ in range(30):
            now += 1 / 30
            decision = limiter.try_acquire(now)
            if isinstance(decision, throttling.Permit):
                limiter.release(decision, throttling.Result.OK, now + 0.01)
        permit = limiter.try_acquire(now + 0.02)
        if isinstance(permit, throttling.Permit):
            limiter.release(permit, throttling.Result.THROTTLED, now + 0.03, retry_after=1.0)
            assert not limiter.paused(now + 0.03), f"paused after the throttle of second {second}"


def test_throttles_of_one_burst_are_one_event() -> None:
    """A replica catching up after a stall sends a few requests at once; their 429s arrive
    together and describe the same moment: one dip, no pause."""
    limiter = throttling.Limiter(throttling.LimiterSettings(rate=30, burst=10), 0.0)
    permits = []
    while isinstance(permit := limiter.try_acquire(1.0), throttling.Permit):
        permits.append(permit)
    assert len(permits) >= 5
    before = limiter.effective_rate(1.0)
    assert before is not None
    limiter.release(permits[0], throttling.Result.THROTTLED, 1.01, retry_after=1.0)
    once = limiter.effective_rate(1.01)
    for permit in permits[1:]:
        limiter.release(permit, throttling.Result.THROTTLED, 1.01, retry_after=1.0)
    assert not limiter.paused(1.01)
    assert limiter.effective_rate(1.01) == pytest.approx(once)
    assert once is not None and once < before
    assert limiter.concurrency_limit == throttling.LimiterSettings().max_concurrency


def test_replicas_that_met_an_outage_together_do_not_probe_together() -> None:
    """An open period lasts up to half as long again, at random (never shorter)."""
    limits = throttling.LimiterSettings(failure_threshold=1, open_seconds=2, max_open_seconds=2)
    waits = []
    for draw in (0.0, 0.5, 1.0):
        limiter = throttling.Limiter(limits, 0.0, random_source=lambda draw=draw: draw)
        permit = limiter.try_acquire(0.0)
        assert isinstance(permit, throttling.Permit)
        limiter.release(permit, throttling.Result.FAILED, 0.0)
        waits.append(limiter.accepting_in(0.0))
    assert waits == [pytest.approx(2.0), pytest.approx(2.5), pytest.approx(3.0)]


def test_an_outage_does_not_cost_the_pace() -> None:
    """The 503s that open the circuit say nothing about the rate: it resumes where it was."""
    limits = throttling.LimiterSettings(rate=30, burst=10, replicas=3, failure_threshold=3, open_seconds=1)
    limiter = throttling.Limiter(limits, 0.0, random_source=lambda: 0.0)
    now = 0.0
    for _ in range(3):
        now += 0.1
        permit = limiter.try_acquire(now)
        assert isinstance(permit, throttling.Permit)
        limiter.release(permit, throttling.Result.OVERLOADED, now)
    assert limiter.circuit(now) is throttling.CircuitState.OPEN
    probe = limiter.try_acquire(now + 1.0)
    assert isinstance(probe, throttling.Permit) and probe.probe
    limiter.release(probe, throttling.Result.OK, now + 1.0)
    assert limiter.circuit(now + 1.0) is throttling.CircuitState.CLOSED
    assert limiter.effective_rate(now + 1.0) == pytest.approx(10.0)


@dataclasses.dataclass(frozen=True)
class Outage:
    opened_at: float
    probes: list[float]
    found_at: float
    """When a probe first met the downstream back (the circuit closed)."""


def _ride_out(limiter: throttling.Limiter, *, back_after: float) -> Outage:
    """Every request fails until ``back_after`` seconds after the circuit opened, and succeeds
    from then on; ask again exactly when told to (as :class:`throttling.AsyncLimiter` does),
    answers at once."""
    now, opened_at, probes = 0.0, math.inf, []
    while now < opened_at + back_after + 100:
        decision = limiter.try_acquire(now)
        if isinstance(decision, throttling.Wait):
            now += decision.seconds
            continue
        if decision.probe:
            probes.append(now)
        back = now >= opened_at + back_after
        limiter.release(decision, throttling.Result.OK if back else throttling.Result.OVERLOADED, now)
        if limiter.circuit(now) is throttling.CircuitState.OPEN:
            opened_at = min(opened_at, now)
        if back and decision.probe:
            return Outage(opened_at, probes, now)
    return Outage(opened_at, probes, math.inf)


def _sink_limiter(rate: float, replicas: int, open_seconds: float, draws: list[float]) -> throttling.Limiter:
    """A limiter as a sink builds it from its spec (``rateLimit`` and ``circuitOpenSeconds``)."""
    sink = spec.SinkSpec.model_validate(
        {
            "type": "webhook",
            "url": "http://127.0.0.1:9/events",
            "rateLimit": {"requestsPerSecond": rate, "burst": 10},
            "circuitOpenSeconds": open_seconds,
        }
    )
    jitter = itertools.cycle(draws or [0.5])
    return throttling.Limiter(
        exchange.limiter_settings(sink, replicas), 0.0, random_source=lambda: next(jitter)
    )


@settings(max_examples=200)
@given(
    rate=st.floats(1, 500),
    replicas=st.integers(1, 20),
    open_seconds=st.floats(0.2, 5),
    draws=st.lists(st.floats(0, 1), max_size=20),
    back_after=st.floats(0, 40),
)
def test_a_replica_finds_a_downstream_back_within_a_short_probe_and_never_floods_it(
    rate: float, replicas: int, open_seconds: float, draws: list[float], back_after: float
) -> None:
    """While a downstream stays down, a sink's replica probes every quarter of a second to an
    open period (jittered), so it finds the downstream back within a fraction of a second, not
    a whole period later; its probes are never more than a quarter of its slice of the rate,
    never more than four a second, and never more often than before (one per open period)."""
    limiter = _sink_limiter(rate, replicas, open_seconds, draws)
    pace = limiter.pace
    assert pace is not None
    every = throttling.outage_probe_seconds(open_seconds, pace.slice, throttling.OUTAGE_PROBE_SHARE)
    assert every <= open_seconds
    outage = _ride_out(limiter, back_after=back_after)
    back_at = outage.opened_at + back_after
    # the first probe waits the whole open period: the downstream has just failed
    assert outage.probes[0] - outage.opened_at >= open_seconds - EPS
    # then never a flood: at most a quarter of the slice in probes and at most 4 a second —
    # or one per open period where that is more (a small slice, or a shorter open period)
    assert 1 / every <= max(1 / open_seconds, throttling.OUTAGE_PROBE_SHARE * pace.slice) + EPS
    assert every >= min(open_seconds, throttling.MIN_PROBE_SECONDS) - EPS
    for earlier, later in itertools.pairwise(outage.probes):
        assert later - earlier >= every - EPS
    # and prompt: back is found within one short (jittered) period, not a whole open period
    # (plus, at a pace under one request a second, the wait for the probe's token)
    first_probe = outage.probes[0]
    if back_at > first_probe:
        assert outage.found_at - back_at <= every * (1 + throttling.OPEN_JITTER) + 1 / pace.slice + EPS
    else:
        assert outage.found_at == first_probe


def test_three_replicas_find_the_downstream_back_within_a_fraction_of_a_second() -> None:
    """The bench's fleet (30 requests/s, three replicas, default circuit): each replica probes
    every 0.4 to 0.6 s while the downstream is down — 7.5 probes a second for the fleet at
    most, a quarter of the grant — and finds it back 0.25 s after its return on average
    (0.63 s with the one-second period it had before)."""
    found = []
    for replica in range(3):
        draws = [(replica * 0.37 + n * 0.61) % 1 for n in range(50)]
        for back_after in (20.0, 20.13, 20.29, 20.41):
            outage = _ride_out(_sink_limiter(30.0, 3, 1.0, draws), back_after=back_after)
            found.append(outage.found_at - outage.opened_at - back_after)
            seconds = outage.probes[-1] - outage.opened_at
            assert len(outage.probes) <= 1 + seconds / 0.4 + EPS  # 2.5 a second at most
    assert max(found) <= 0.6 + EPS
    assert sum(found) / len(found) <= 0.4


def test_a_refused_credential_still_backs_off_the_doubled_period() -> None:
    """Short probes are for an outage; a credential the downstream refuses waits for a person
    (and probes re-read it): the open period doubles, up to ``max_open_seconds``."""
    limiter = throttling.Limiter(
        throttling.LimiterSettings(
            rate=30,
            burst=10,
            open_seconds=1,
            max_open_seconds=8,
            outage_probe_share=throttling.OUTAGE_PROBE_SHARE,
        ),
        0.0,
        random_source=lambda: 0.0,
    )
    permit = limiter.try_acquire(0.0)
    assert isinstance(permit, throttling.Permit)
    limiter.release(permit, throttling.Result.REFUSED, 0.0)
    now, waits = 0.0, []
    for _ in range(4):
        now += limiter.accepting_in(now)
        probe = limiter.try_acquire(now)
        assert isinstance(probe, throttling.Permit) and probe.probe
        limiter.release(probe, throttling.Result.REFUSED, now)
        waits.append(limiter.accepting_in(now))
    assert waits == [pytest.approx(2.0), pytest.approx(4.0), pytest.approx(8.0), pytest.approx(8.0)]


def _drive_at_full_demand(limiter: throttling.Limiter, start: float, end: float) -> list[float]:
    """Ask again exactly when told to (as AsyncLimiter does), answer OK at once; the grant times."""
    grants, now = [], start
    for _ in range(100_000):
        decision = limiter.try_acquire(now)
        if isinstance(decision, throttling.Permit):
            grants.append(now)
            limiter.release(decision, throttling.Result.OK, now)
            continue
        now += decision.seconds
        if now >= end:
            break
    return grants


@settings(max_examples=100, deadline=None)
@given(
    old_rate=st.floats(1, 50),
    new_rate=st.floats(1, 50),
    burst=st.integers(1, 10),
    change_at=st.floats(0.1, 5),
)
def test_converges_after_a_rate_change(
    old_rate: float, new_rate: float, burst: int, change_at: float
) -> None:
    limiter = throttling.Limiter(throttling.LimiterSettings(rate=old_rate, burst=burst), 0.0)
    _drive_at_full_demand(limiter, 0.0, change_at)
    limiter.set_rate(new_rate, change_at)
    horizon = 10.0
    grants = _drive_at_full_demand(limiter, change_at, change_at + horizon)
    # never above the new bucket from the moment of the change ...
    assert len(grants) <= burst + new_rate * horizon + EPS
    # ... and using all of it once the old bucket's tokens are spent
    assert len(grants) >= new_rate * horizon - 1
    late = [moment for moment in grants if moment >= change_at + 1]
    assert len(late) >= new_rate * (horizon - 1) - 1


@settings(max_examples=100)
@given(
    steps=st.lists(st.sampled_from([r for r in RESULTS if r is not throttling.Result.REFUSED]), max_size=200),
    max_concurrency=st.integers(1, 16),
)
def test_aimd_grows_only_when_saturated_and_shrinks_on_throttle(
    steps: list[throttling.Result], max_concurrency: int
) -> None:
    limiter = throttling.Limiter(
        throttling.LimiterSettings(
            max_concurrency=max_concurrency, initial_concurrency=1, failure_threshold=1000
        ),
        0.0,
    )
    now = 0.0
    for result in steps:
        now += 1.0
        before = limiter.concurrency_limit
        permit = limiter.try_acquire(now)
        assert isinstance(permit, throttling.Permit)
        limiter.release(permit, result, now)
        after = limiter.concurrency_limit
        if result in (throttling.Result.THROTTLED, throttling.Result.OVERLOADED):
            assert after <= max(1, before)
        elif after > before:
            assert result is throttling.Result.OK
            assert permit.saturated
        assert 1 <= after <= max_concurrency


def test_a_refused_credential_opens_the_circuit_at_once_and_only_a_probe_closes_it() -> None:
    limiter = throttling.Limiter(
        throttling.LimiterSettings(failure_threshold=1000, open_seconds=2.0, max_open_seconds=8.0),
        0.0,
        random_source=lambda: 0.0,  # no jitter on the open period
    )
    permit = limiter.try_acquire(0.0)
    assert isinstance(permit, throttling.Permit)
    limiter.release(permit, throttling.Result.REFUSED, 0.0)
    assert limiter.circuit(0.0) is throttling.CircuitState.OPEN
    assert limiter.accepting_in(0.0) == 2.0
    probe = limiter.try_acquire(2.0)
    assert isinstance(probe, throttling.Permit) and probe.probe
    limiter.release(probe, throttling.Result.REFUSED, 2.0)  # still refused: open twice as long
    assert limiter.accepting_in(2.0) == 4.0
    probe = limiter.try_acquire(6.0)
    assert isinstance(probe, throttling.Permit) and probe.probe
    limiter.release(probe, throttling.Result.OK, 6.0)
    assert limiter.circuit(6.0) is throttling.CircuitState.CLOSED


def test_an_unused_permit_gives_its_token_back() -> None:
    limiter = throttling.Limiter(throttling.LimiterSettings(rate=1.0, burst=1), 0.0)
    permit = limiter.try_acquire(0.0)
    assert isinstance(permit, throttling.Permit)
    assert isinstance(limiter.try_acquire(0.0), throttling.Wait)
    limiter.release(permit, throttling.Result.UNUSED, 0.0)
    assert isinstance(limiter.try_acquire(0.0), throttling.Permit)  # no wait for the next token


def test_additive_increase_reaches_the_maximum_and_one_throttle_halves_it() -> None:
    limiter = throttling.Limiter(throttling.LimiterSettings(max_concurrency=8, initial_concurrency=1), 0.0)
    now = 0.0
    for _ in range(200):
        now += 0.01
        permits = []
        while isinstance(permit := limiter.try_acquire(now), throttling.Permit):
            permits.append(permit)
        for permit in permits:
            limiter.release(permit, throttling.Result.OK, now)
    assert limiter.concurrency_limit == 8
    permits = [limiter.try_acquire(now) for _ in range(8)]
    for permit in permits:
        assert isinstance(permit, throttling.Permit)
        limiter.release(permit, throttling.Result.THROTTLED, now)
    assert limiter.concurrency_limit == 4  # once per window, not 8 times


def test_throttles_lower_the_rate_and_demand_restores_it() -> None:
    limiter = throttling.Limiter(throttling.LimiterSettings(rate=10, burst=1), 0.0)
    permit = limiter.try_acquire(0.0)
    assert isinstance(permit, throttling.Permit)
    limiter.release(permit, throttling.Result.THROTTLED, 0.0)
    lowered = limiter.effective_rate(0.0)
    assert lowered is not None
    assert lowered < 10
    assert limiter.effective_rate(60.0) == pytest.approx(lowered)  # nobody wanted more
    grants = _drive_at_full_demand(limiter, 60.0, 70.0)
    assert limiter.effective_rate(70.0) == pytest.approx(10)
    assert len(grants) >= 10 * 10 * 0.9


def test_scale_brakes_rate_and_concurrency() -> None:
    limiter = throttling.Limiter(throttling.LimiterSettings(rate=10, burst=1, max_concurrency=10), 0.0)
    limiter.set_scale(0.2, 0.0)
    assert limiter.effective_rate(0.0) == pytest.approx(2)
    assert limiter.concurrency_limit == 2
    limiter.set_scale(1.0, 0.0)
    assert limiter.effective_rate(0.0) == pytest.approx(10)


async def test_async_limiter_pauses_everyone_on_retry_after() -> None:
    limiter = throttling.AsyncLimiter(throttling.LimiterSettings(rate=None, max_concurrency=4))
    async with limiter.slot() as slot:
        slot.report(throttling.Result.THROTTLED, retry_after=0.2)
    assert not limiter.accepting
    start = limiter.now()
    await limiter.wait_accepting()
    assert limiter.now() - start >= 0.2 - 0.01
    permit = await limiter.acquire()
    assert limiter.now() - start >= 0.2 - 0.01
    limiter.release(permit, throttling.Result.OK)
    assert limiter.accepting


async def test_async_limiter_waits_for_a_free_slot_and_releases_cancelled_work() -> None:
    limiter = throttling.AsyncLimiter(throttling.LimiterSettings(max_concurrency=1))
    first = await limiter.acquire()
    waiter = asyncio.create_task(limiter.acquire())
    await asyncio.sleep(0.01)
    assert not waiter.done()
    limiter.release(first, throttling.Result.OK)
    second = await asyncio.wait_for(waiter, 1)

    async def cancelled_body() -> None:
        async with limiter.slot():
            await asyncio.sleep(10)

    limiter.release(second, throttling.Result.OK)
    task = asyncio.create_task(cancelled_body())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert limiter.core.in_flight == 0
    assert math.isfinite(limiter.now())


async def test_async_limiter_publishes_snapshots() -> None:
    seen: list[throttling.Snapshot] = []
    limiter = throttling.AsyncLimiter(throttling.LimiterSettings(rate=5, burst=2), on_change=seen.append)
    async with limiter.slot() as slot:
        slot.report(throttling.Result.OK)
    limiter.set_rate(2.5)
    assert seen
    assert seen[-1].rate == pytest.approx(2.5)
    assert seen[-1].circuit is throttling.CircuitState.CLOSED


async def test_async_limiter_publishes_only_what_the_gauges_would_show_differently() -> None:
    seen: list[throttling.Snapshot] = []
    limiter = throttling.AsyncLimiter(throttling.LimiterSettings(max_concurrency=8), on_change=seen.append)
    for _ in range(50):
        async with limiter.slot() as slot:
            slot.report(throttling.Result.OK)
    assert len(seen) == 1, "in-flight changes alone are not published"
    limiter.set_rate(3.0)
    assert [snapshot.rate for snapshot in seen] == [None, pytest.approx(3.0)]
    async with limiter.slot() as slot:
        slot.report(throttling.Result.THROTTLED)  # isolated: the pace dips, the concurrency stays
    assert [snapshot.concurrency for snapshot in seen] == [8, 8, 8]
    assert seen[-1].rate is not None and seen[-1].rate < 3.0
    async with limiter.slot() as slot:
        slot.report(throttling.Result.THROTTLED)  # a second one in a row: excess, halved
    assert [snapshot.concurrency for snapshot in seen][-1] == 4
