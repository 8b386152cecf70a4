"""The scaling function: examples for each rule, then properties over random inputs."""

from __future__ import annotations

import dataclasses

import hypothesis
import hypothesis.strategies as st
import pytest

from fanout_core import spec
from fanout_operator import scaling

POLICY = scaling.Policy(
    min_replicas=0,
    max_replicas=20,
    target_backlog_per_replica=100,
    activation_backlog=5,
    scale_down_stabilization_seconds=300,
    cooldown_seconds=300,
)


def _decide(
    backlog: int,
    current: int,
    *,
    policy: scaling.Policy = POLICY,
    state: scaling.State | None = None,
    now: float = 1_000.0,
    sink: scaling.SinkReport | None = None,
    in_flight: int = 0,
) -> scaling.Decision:
    observation = scaling.Observation(
        visible=backlog, in_flight=in_flight, current_replicas=current, sink=sink
    )
    return scaling.decide(policy, observation, state or scaling.State(), now)


def test_backlog_over_target_gives_ceiling() -> None:
    decision = _decide(1_201, 1)
    assert decision.replicas == 13
    assert decision.limit is scaling.Limit.BACKLOG
    assert "backlog 1201 / target 100 → 13" in decision.reason


def test_in_flight_counts_as_backlog() -> None:
    assert _decide(0, 2, in_flight=450).replicas == 5


def test_from_zero_needs_the_activation_backlog() -> None:
    below = _decide(4, 0)
    assert below.replicas == 0
    assert below.limit is scaling.Limit.ACTIVATION
    assert _decide(5, 0).replicas == 1


def test_max_bound() -> None:
    decision = _decide(100_000, 3)
    assert decision.replicas == 20
    assert decision.limit is scaling.Limit.BOUNDS


def test_min_bound_keeps_replicas_when_empty() -> None:
    policy = dataclasses.replace(POLICY, min_replicas=2)
    assert _decide(0, 0, policy=policy).replicas == 2
    assert _decide(0, 5, policy=policy, now=10_000).replicas == 2


def test_scale_up_is_immediate() -> None:
    state = scaling.State(recommendations=(scaling.Recommendation(at=990, replicas=1),))
    assert _decide(900, 1, state=state).replicas == 9


def test_scale_down_waits_for_the_stabilization_window() -> None:
    policy = dataclasses.replace(POLICY, scale_down_stabilization_seconds=60)
    state = scaling.State()
    high = scaling.decide(policy, scaling.Observation(800, 0, 8), state, now=0)
    assert high.replicas == 8
    held = scaling.decide(policy, scaling.Observation(200, 0, 8), high.state, now=30)
    assert held.replicas == 8
    assert held.limit is scaling.Limit.STABILIZING
    assert "stabilization" in held.reason
    after = scaling.decide(policy, scaling.Observation(200, 0, 8), held.state, now=61)
    assert after.replicas == 2


def test_cooldown_before_scale_to_zero_and_window_bypassed() -> None:
    policy = dataclasses.replace(POLICY, cooldown_seconds=120, scale_down_stabilization_seconds=600)
    busy = scaling.decide(policy, scaling.Observation(300, 0, 3), scaling.State(), now=0)
    empty = scaling.decide(policy, scaling.Observation(0, 0, 3), busy.state, now=10)
    assert empty.replicas == 3  # window (600 s) still remembers 3
    assert empty.state.empty_since == 10
    later = scaling.decide(policy, scaling.Observation(0, 0, 3), empty.state, now=129)
    assert later.replicas == 3
    assert later.recommendation == 1
    assert later.limit is scaling.Limit.STABILIZING
    zero = scaling.decide(policy, scaling.Observation(0, 0, 3), later.state, now=130)
    assert zero.replicas == 0
    assert zero.limit is scaling.Limit.IDLE
    assert "cooldown" in zero.reason


def test_a_message_resets_the_cooldown() -> None:
    policy = dataclasses.replace(POLICY, cooldown_seconds=120, scale_down_stabilization_seconds=0)
    empty = scaling.decide(policy, scaling.Observation(0, 0, 1), scaling.State(), now=0)
    busy = scaling.decide(policy, scaling.Observation(0, 1, 1), empty.state, now=100)
    assert busy.state.empty_since is None
    again = scaling.decide(policy, scaling.Observation(0, 0, 1), busy.state, now=200)
    assert again.replicas == 1
    assert again.limit is scaling.Limit.COOLDOWN


def test_in_flight_alone_keeps_workers_from_zero() -> None:
    policy = dataclasses.replace(POLICY, cooldown_seconds=0)
    decision = _decide(0, 2, policy=policy, in_flight=1)
    assert decision.replicas == 1
    assert decision.state.empty_since is None


def test_downstream_cap_from_measured_throughput() -> None:
    policy = dataclasses.replace(POLICY, sink_rate_limit=100)
    decision = _decide(1_200, 2, policy=policy, sink=scaling.SinkReport(per_replica_throughput=16))
    assert decision.replicas == 7  # ceil(100 / 16 - 0.1)
    assert decision.limit is scaling.Limit.SINK_CAP
    assert "capped at 7 by sink rate" in decision.reason
    assert "measured" in decision.reason


def test_downstream_cap_from_configuration_when_not_measured() -> None:
    policy = dataclasses.replace(POLICY, sink_rate_limit=50, sink_max_concurrency=10, sink_timeout_seconds=2)
    decision = _decide(5_000, 1, policy=policy)
    assert decision.replicas == 10  # 50 req/s ÷ (10 / 2 s)
    assert "configured" in decision.reason


def test_noisy_measurement_just_under_the_share_does_not_add_a_replica() -> None:
    policy = dataclasses.replace(POLICY, sink_rate_limit=100)
    # Each replica can do about 25 req/s (a quarter of the fleet limit); measured a bit low.
    sink = scaling.SinkReport(per_replica_throughput=24.8)
    assert _decide(5_000, 4, policy=policy, sink=sink).replicas == 4


def test_cap_sheds_excess_replicas_without_waiting_for_the_window() -> None:
    policy = dataclasses.replace(POLICY, sink_rate_limit=40)
    state = scaling.State(recommendations=(scaling.Recommendation(at=990, replicas=20),))
    decision = _decide(
        5_000, 20, policy=policy, state=state, sink=scaling.SinkReport(per_replica_throughput=8)
    )
    assert decision.replicas == 5
    assert decision.limit is scaling.Limit.SINK_CAP


def test_no_cap_without_a_rate_limit() -> None:
    sink = scaling.SinkReport(per_replica_throughput=1000)
    assert _decide(2_000, 1, sink=sink).replicas == 20


def test_throttled_sink_holds_instead_of_scaling_up() -> None:
    decision = _decide(1_500, 3, sink=scaling.SinkReport(throttled=True))
    assert decision.replicas == 3
    assert decision.limit is scaling.Limit.THROTTLED
    assert "throttled" in decision.reason


def test_throttled_sink_still_allows_scale_down() -> None:
    policy = dataclasses.replace(POLICY, scale_down_stabilization_seconds=0)
    assert _decide(100, 5, policy=policy, sink=scaling.SinkReport(throttled=True)).replicas == 1


def test_pinned_replicas_win() -> None:
    policy = dataclasses.replace(POLICY, pinned_replicas=0)
    decision = _decide(10_000, 4, policy=policy)
    assert decision.replicas == 0
    assert decision.limit is scaling.Limit.PINNED


def test_policy_from_spec() -> None:
    consumer = spec.parse_spec(
        {
            "queue": {"url": "https://sqs.us-east-1.amazonaws.com/1/q"},
            "sink": {"type": "webhook", "url": "http://x", "rateLimit": {"requestsPerSecond": 40}},
            "scaling": {"minReplicas": 1, "maxReplicas": 7, "cooldownSeconds": 9},
        }
    )
    policy = scaling.Policy.from_spec(consumer)
    assert (policy.min_replicas, policy.max_replicas, policy.cooldown_seconds) == (1, 7, 9)
    assert policy.sink_rate_limit == 40
    assert policy.pinned_replicas is None


def test_backoff_grows_and_is_bounded() -> None:
    assert scaling.next_poll_delay(15, 0) == 15
    assert scaling.next_poll_delay(15, 1) == 30
    assert scaling.next_poll_delay(15, 3) == 120
    assert scaling.next_poll_delay(15, 50) == scaling.MAX_BACKOFF_SECONDS
    assert scaling.next_poll_delay(600, 2) == 600


# --- properties -------------------------------------------------------------------------------

policies = st.builds(
    scaling.Policy,
    min_replicas=st.integers(0, 5),
    max_replicas=st.integers(5, 50),
    target_backlog_per_replica=st.integers(1, 500),
    activation_backlog=st.integers(0, 50),
    scale_down_stabilization_seconds=st.sampled_from([0.0, 15.0, 300.0]),
    cooldown_seconds=st.sampled_from([0.0, 60.0, 300.0]),
    sink_rate_limit=st.one_of(st.none(), st.floats(0.5, 1_000)),
    sink_max_concurrency=st.integers(1, 64),
    sink_timeout_seconds=st.floats(0.1, 30),
)
sinks = st.one_of(
    st.none(),
    st.builds(
        scaling.SinkReport,
        throttled=st.booleans(),
        per_replica_throughput=st.one_of(st.none(), st.floats(0, 500)),
    ),
)
states = st.builds(
    scaling.State,
    empty_since=st.one_of(st.none(), st.floats(0, 1_000)),
    recommendations=st.lists(
        st.builds(scaling.Recommendation, at=st.floats(0, 1_000), replicas=st.integers(0, 60)), max_size=6
    ).map(tuple),
)
NOW = 1_000.0


@hypothesis.given(
    policy=policies,
    state=states,
    sink=sinks,
    current=st.integers(0, 60),
    backlogs=st.tuples(st.integers(0, 100_000), st.integers(0, 100_000)),
)
def test_monotone_in_backlog(
    policy: scaling.Policy,
    state: scaling.State,
    sink: scaling.SinkReport | None,
    current: int,
    backlogs: tuple[int, int],
) -> None:
    low, high = sorted(backlogs)
    first = scaling.decide(policy, scaling.Observation(low, 0, current, sink=sink), state, NOW)
    second = scaling.decide(policy, scaling.Observation(high, 0, current, sink=sink), state, NOW)
    assert first.replicas <= second.replicas


@hypothesis.given(
    policy=policies, state=states, sink=sinks, current=st.integers(0, 60), backlog=st.integers(0, 100_000)
)
def test_respects_bounds(
    policy: scaling.Policy, state: scaling.State, sink: scaling.SinkReport | None, current: int, backlog: int
) -> None:
    decision = scaling.decide(policy, scaling.Observation(backlog, 0, current, sink=sink), state, NOW)
    assert decision.replicas <= policy.max_replicas
    assert decision.replicas >= policy.min_replicas
    if decision.replicas == 0:
        assert backlog == 0 or current == 0


@hypothesis.given(
    policy=policies, state=states, sink=sinks, current=st.integers(0, 60), backlog=st.integers(0, 100_000)
)
def test_never_exceeds_the_downstream_cap_unless_min_says_so(
    policy: scaling.Policy, state: scaling.State, sink: scaling.SinkReport | None, current: int, backlog: int
) -> None:
    decision = scaling.decide(policy, scaling.Observation(backlog, 0, current, sink=sink), state, NOW)
    cap = scaling.downstream_cap(policy, sink)
    if cap is not None:
        assert decision.replicas <= max(cap[0], policy.min_replicas)


@hypothesis.given(policy=policies, state=states, current=st.integers(1, 60), backlog=st.integers(0, 100_000))
def test_throttled_never_scales_up_past_current(
    policy: scaling.Policy, state: scaling.State, current: int, backlog: int
) -> None:
    sink = scaling.SinkReport(throttled=True)
    decision = scaling.decide(policy, scaling.Observation(backlog, 0, current, sink=sink), state, NOW)
    assert decision.replicas <= max(current, policy.min_replicas)


@hypothesis.given(
    policy=policies,
    current=st.integers(1, 60),
    backlogs=st.lists(st.integers(0, 20_000), min_size=2, max_size=12),
    step=st.floats(1, 60),
)
def test_scale_down_never_below_the_window_maximum(
    policy: scaling.Policy, current: int, backlogs: list[int], step: float
) -> None:
    """Stabilization: a drop is never below any recommendation made inside the window."""
    state = scaling.State()
    now = 0.0
    history: list[tuple[float, int]] = []
    for backlog in backlogs:
        decision = scaling.decide(policy, scaling.Observation(backlog, 0, current), state, now)
        history.append((now, decision.recommendation))
        shaped_elsewhere = decision.limit in (scaling.Limit.IDLE, scaling.Limit.SINK_CAP)
        if decision.replicas < current and not shaped_elsewhere:
            window = policy.scale_down_stabilization_seconds
            in_window = [r for at, r in history if at > now - window or at == now]
            assert decision.replicas >= min(max(in_window), current)
        state, current, now = decision.state, decision.replicas, now + step


@hypothesis.given(
    policy=policies, backlog_before=st.integers(1, 10_000), waits=st.lists(st.floats(0, 400), max_size=6)
)
def test_zero_only_after_an_empty_cooldown(
    policy: scaling.Policy, backlog_before: int, waits: list[float]
) -> None:
    policy = dataclasses.replace(policy, min_replicas=0)
    start = scaling.decide(policy, scaling.Observation(backlog_before, 0, 3), scaling.State(), 0.0)
    state, current, now = start.state, start.replicas, 0.0
    for wait in waits:
        now += wait
        decision = scaling.decide(policy, scaling.Observation(0, 0, current), state, now)
        if decision.replicas == 0 and current > 0:
            assert now >= policy.cooldown_seconds
        state, current = decision.state, decision.replicas


@pytest.mark.parametrize("current", [0, 1, 7])
def test_state_window_is_pruned(current: int) -> None:
    policy = dataclasses.replace(POLICY, scale_down_stabilization_seconds=100)
    old = scaling.State(recommendations=tuple(scaling.Recommendation(at=t, replicas=9) for t in range(50)))
    decision = scaling.decide(policy, scaling.Observation(10, 0, current), old, now=1_000)
    assert [r.at for r in decision.state.recommendations] == [1_000]


def test_cap_remembers_the_last_measurement_while_replicas_start() -> None:
    policy = dataclasses.replace(POLICY, sink_rate_limit=40, sink_max_concurrency=4, sink_timeout_seconds=10)
    measured = _decide(5_000, 3, policy=policy, sink=scaling.SinkReport(per_replica_throughput=8))
    assert measured.replicas == 5
    starting = _decide(5_000, 0, policy=policy, state=measured.state, sink=None)
    assert starting.replicas == 5  # not the configured worst case (100)
    assert starting.state.per_replica_throughput == 8


def test_remember_holds_the_window_while_blind() -> None:
    policy = dataclasses.replace(POLICY, scale_down_stabilization_seconds=100)
    state = scaling.remember(scaling.State(), 6, now=950, window_seconds=100)
    state = scaling.remember(state, 6, now=1_000, window_seconds=100)
    decision = _decide(50, 6, policy=policy, state=state, now=1_020)
    assert decision.replicas == 6  # readings are back, but the drop waits out the window
    pruned = scaling.remember(state, 6, now=1_051, window_seconds=100)
    assert [r.at for r in pruned.recommendations] == [1_000, 1_051]


# --- delayed messages: they keep the fleet alive and wake it, they do not size it ----------------


def test_delayed_messages_wake_a_fleet_at_zero() -> None:
    observation = scaling.Observation(visible=0, in_flight=0, current_replicas=0, delayed=5)
    decision = scaling.decide(POLICY, observation, scaling.State(), 1_000.0)
    assert decision.replicas == 1
    assert "5 delayed" in decision.reason


def test_delayed_messages_keep_a_fleet_from_zero_after_the_cooldown() -> None:
    policy = dataclasses.replace(POLICY, cooldown_seconds=60, scale_down_stabilization_seconds=0)
    state = scaling.State(empty_since=0.0)
    observation = scaling.Observation(visible=0, in_flight=0, current_replicas=1, delayed=3)
    decision = scaling.decide(policy, observation, state, now=1_000.0)
    assert decision.replicas == 1
    assert decision.state.empty_since is None  # the cooldown starts again once they are gone


def test_delayed_messages_do_not_size_the_fleet() -> None:
    # A queue-level delivery delay: thousands wait in the delay, the visible backlog is small.
    observation = scaling.Observation(visible=150, in_flight=0, current_replicas=1, delayed=6_000)
    assert scaling.decide(POLICY, observation, scaling.State(), 1_000.0).replicas == 2


@hypothesis.given(
    policy=policies,
    state=states,
    sink=sinks,
    current=st.integers(1, 60),
    depth=st.tuples(st.integers(0, 500), st.integers(0, 500), st.integers(0, 500)),
)
def test_never_to_zero_while_the_queue_holds_a_message(
    policy: scaling.Policy,
    state: scaling.State,
    sink: scaling.SinkReport | None,
    current: int,
    depth: tuple[int, int, int],
) -> None:
    visible, in_flight, delayed = depth
    hypothesis.assume(visible + in_flight + delayed > 0)
    observation = scaling.Observation(visible, in_flight, current, delayed=delayed, sink=sink)
    policy = dataclasses.replace(policy, min_replicas=0)
    assert scaling.decide(policy, observation, state, NOW).replicas > 0


@hypothesis.given(policy=policies, sink=sinks, current=st.integers(1, 60), last_backlog=st.integers(1, 500))
def test_never_to_zero_right_after_a_reading_with_messages(
    policy: scaling.Policy, sink: scaling.SinkReport | None, current: int, last_backlog: int
) -> None:
    """The cooldown counts from the first empty reading after one with messages, never earlier."""
    policy = dataclasses.replace(policy, min_replicas=0)
    hypothesis.assume(policy.cooldown_seconds > 0)
    busy = scaling.decide(
        policy, scaling.Observation(last_backlog, 0, current, sink=sink), scaling.State(), 0.0
    )
    empty = scaling.decide(policy, scaling.Observation(0, 0, max(busy.replicas, 1)), busy.state, NOW)
    assert empty.replicas > 0
