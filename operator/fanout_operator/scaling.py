"""How many worker replicas a FanoutConsumer should run: observations in, a decision out. Pure.

Called by ``autoscaling`` once per poll and by ``bench/scaling.py``'s simulator; no clock, no I/O:
the caller passes ``now`` and the previous :class:`State` and keeps the returned one (the operator
persists it in the resource's status, so a restart continues the windows).

The decision, in order (each step's effect is named in the reason string):

1. ``spec.replicas`` set → that number, nothing else applies (a manual pin / ``kubectl scale``).
2. backlog = visible + in flight; raw = ceil(backlog / targetBacklogPerReplica).
3. Zero is special, as in KEDA, and decided on *pending* = backlog + delayed: from zero, start
   only when pending ≥ activationBacklog; to zero, only after pending has been 0 for
   ``cooldownSeconds`` (counted from the first empty reading after one with messages); in
   between, never below one replica.
4. Clamp to [minReplicas, maxReplicas].
5. Throttle hold: when workers report the sink throttled or its circuit open, never scale up.
6. Scale up at once; scale down through the stabilization window (the highest recommendation
   over the last ``scaleDownStabilizationSeconds``, as the HPA does). Scale-to-zero after the
   cooldown bypasses the window (the cooldown already is one).
7. Downstream cap, last and absolute: the sink's fleet-wide rateLimit divided by what one
   replica can send — measured by the workers when known (their concurrency ÷ mean request
   latency), else the worst case the configuration allows (maxConcurrency requests finishing
   every timeoutSeconds). More replicas than that would only wait on the shared token bucket
   (or, for a naive fleet, hammer an API that says 429), so they are shed without waiting for
   the window. minReplicas still wins over the cap.

Delayed messages (``ApproximateNumberOfMessagesDelayed``: sent with a delivery delay, visible
within 15 minutes at most) are work that is certain to arrive, but not work a replica can do
yet. So they keep a fleet alive and wake a sleeping one (step 3: a fleet never goes to zero
while the queue holds any message, and does not flap between 0 and 1 while delayed messages wait),
but they do not size it (step 2): with a queue-level delay, the delayed count is the arrival rate
times the delay, and sizing on it would start replicas that sit idle until the messages surface,
when the visible backlog sizes the fleet anyway.
"""

from __future__ import annotations

import dataclasses
import enum
import math

from fanout_core import backoff, spec

# Tolerance when dividing the fleet rate by the measured per-replica rate: a fleet already held
# by the shared limiter measures slightly under its share (rate / n); without the tolerance the
# cap would read n + 1 and creep up one replica per poll.
CAP_TOLERANCE = 0.1
# Below this a measured per-replica rate says "idle", not "slow": fall back to the configuration.
MIN_MEASURED_RATE = 0.01
MAX_BACKOFF_SECONDS = 300.0


class Limit(enum.StrEnum):
    """What shaped the decision (the status condition's reason)."""

    PINNED = "Pinned"
    BACKLOG = "Backlog"
    ACTIVATION = "BelowActivation"
    COOLDOWN = "CoolingDown"
    IDLE = "ScaledToZero"
    BOUNDS = "Bounds"
    SINK_CAP = "CappedBySink"
    THROTTLED = "HeldSinkThrottled"
    STABILIZING = "Stabilizing"


@dataclasses.dataclass(frozen=True)
class Policy:
    """The knobs, read from a spec once per poll."""

    min_replicas: int = 0
    max_replicas: int = 20
    target_backlog_per_replica: int = 100
    activation_backlog: int = 1
    scale_down_stabilization_seconds: float = 300.0
    cooldown_seconds: float = 300.0
    sink_rate_limit: float | None = None
    sink_max_concurrency: int = 32
    sink_timeout_seconds: float = 10.0
    pinned_replicas: int | None = None

    @classmethod
    def from_spec(cls, consumer: spec.FanoutConsumerSpec) -> Policy:
        scaling = consumer.scaling
        rate = consumer.sink.rate_limit
        return cls(
            min_replicas=scaling.min_replicas,
            max_replicas=scaling.max_replicas,
            target_backlog_per_replica=scaling.target_backlog_per_replica,
            activation_backlog=scaling.activation_backlog,
            scale_down_stabilization_seconds=scaling.scale_down_stabilization_seconds,
            cooldown_seconds=scaling.cooldown_seconds,
            sink_rate_limit=rate.requests_per_second if rate is not None else None,
            sink_max_concurrency=consumer.sink.max_concurrency,
            sink_timeout_seconds=consumer.sink.timeout_seconds,
            pinned_replicas=consumer.replicas,
        )


@dataclasses.dataclass(frozen=True)
class SinkReport:
    """What the running workers say about the sink (from their /metrics).

    ``per_replica_throughput``: requests per second one replica can send when nothing else
    holds it back (measured as its concurrency limit ÷ its mean request latency).
    """

    throttled: bool = False
    per_replica_throughput: float | None = None


@dataclasses.dataclass(frozen=True)
class Observation:
    """One poll: the queue's depth and the fleet's current size."""

    visible: int
    in_flight: int
    current_replicas: int
    delayed: int = 0
    sink: SinkReport | None = None

    @property
    def backlog(self) -> int:
        """What sizes the fleet: messages a replica can work on now, or is working on."""
        return self.visible + self.in_flight

    @property
    def pending(self) -> int:
        """What keeps the fleet from zero: every message in the queue, delayed ones included."""
        return self.backlog + self.delayed


@dataclasses.dataclass(frozen=True)
class Recommendation:
    at: float
    replicas: int


@dataclasses.dataclass(frozen=True)
class State:
    """Carried from one decision to the next."""

    empty_since: float | None = None
    recommendations: tuple[Recommendation, ...] = ()
    # The last measured per-replica throughput: replicas that are starting (or none at all)
    # report nothing, and a replica's capacity does not change because it restarted.
    per_replica_throughput: float | None = None


@dataclasses.dataclass(frozen=True)
class Decision:
    replicas: int
    recommendation: int
    limit: Limit
    reason: str
    state: State


def downstream_cap(policy: Policy, sink: SinkReport | None) -> tuple[int, str] | None:
    """The most replicas the sink's fleet-wide rate can keep busy, and how that was worked out."""
    if policy.sink_rate_limit is None:
        return None
    rate = policy.sink_rate_limit
    measured = sink.per_replica_throughput if sink is not None else None
    if measured is not None and measured >= MIN_MEASURED_RATE:
        per_replica, source = measured, "measured"
    else:
        per_replica = policy.sink_max_concurrency / policy.sink_timeout_seconds
        source = "configured worst case"
    cap = max(1, math.ceil(rate / per_replica - CAP_TOLERANCE))
    return cap, f"{_num(rate)} req/s ÷ {_num(per_replica)} req/s per replica ({source})"


@dataclasses.dataclass(frozen=True)
class _Shaping:
    """A decision in the making: the recommendation, what shaped it last, and the reason so far."""

    recommendation: int
    limit: Limit
    notes: tuple[str, ...]
    to_zero: bool = False

    def shaped(self, recommendation: int, limit: Limit, note: str) -> _Shaping:
        return dataclasses.replace(
            self, recommendation=recommendation, limit=limit, notes=(*self.notes, note)
        )


def _remembered_throughput(observation: Observation, state: State) -> float | None:
    measured = observation.sink.per_replica_throughput if observation.sink is not None else None
    return (
        measured if measured is not None and measured >= MIN_MEASURED_RATE else state.per_replica_throughput
    )


def _empty_since(observation: Observation, state: State, now: float) -> float | None:
    """When the queue became empty; ``None`` while it holds messages (delayed ones included)."""
    if observation.pending > 0:
        return None
    return state.empty_since if state.empty_since is not None else now


def _recommend(policy: Policy, observation: Observation, empty_since: float | None, now: float) -> _Shaping:
    """Steps 2-4: from the backlog, with zero's special rules, within bounds."""
    backlog, pending, current = observation.backlog, observation.pending, observation.current_replicas
    raw = math.ceil(backlog / policy.target_backlog_per_replica)
    start = _Shaping(
        raw, Limit.BACKLOG, (f"backlog {backlog} / target {policy.target_backlog_per_replica} → {raw}",)
    )
    if observation.delayed:
        start = dataclasses.replace(start, notes=(*start.notes, f"{observation.delayed} delayed"))
    idle = now - empty_since if empty_since is not None else 0.0
    threshold = max(1, policy.activation_backlog)
    may_sleep = policy.min_replicas == 0
    if may_sleep and current == 0 and pending < threshold:
        if pending == 0:
            return dataclasses.replace(start, recommendation=0)
        return start.shaped(0, Limit.ACTIVATION, f"below activation {threshold}, stays at 0")
    if may_sleep and empty_since is not None and idle >= policy.cooldown_seconds:
        cooled = f"empty for {_num(idle)}s ≥ cooldown {_num(policy.cooldown_seconds)}s"
        return dataclasses.replace(start.shaped(0, Limit.IDLE, cooled), to_zero=True)
    # Between activation and cooldown a running fleet never drops below one replica.
    recommendation = min(max(raw, policy.min_replicas, 1), policy.max_replicas)
    if may_sleep and pending == 0:
        cooling = f"empty for {_num(idle)}s of {_num(policy.cooldown_seconds)}s cooldown, keeps 1"
        return start.shaped(recommendation, Limit.COOLDOWN, cooling)
    if recommendation != raw:
        bounds = f"bounded to [{policy.min_replicas}, {policy.max_replicas}] → {recommendation}"
        return start.shaped(recommendation, Limit.BOUNDS, bounds)
    return dataclasses.replace(start, recommendation=recommendation)


def _hold_while_throttled(policy: Policy, observation: Observation, shaping: _Shaping) -> _Shaping:
    """Step 5: a throttled sink or an open circuit holds the fleet instead of growing it."""
    sink, current = observation.sink, observation.current_replicas
    if sink is None or not sink.throttled or current == 0 or shaping.recommendation <= current:
        return shaping
    held = max(current, policy.min_replicas)
    if held >= shaping.recommendation:
        return shaping
    return shaping.shaped(held, Limit.THROTTLED, f"sink throttled or circuit open: holding at {held}")


def _stabilize(
    policy: Policy, current: int, state: State, shaping: _Shaping, now: float
) -> tuple[int, tuple[Recommendation, ...], _Shaping]:
    """Step 6: up at once, down no lower than the window's highest recommendation."""
    if shaping.to_zero:
        return 0, (), shaping
    window_start = now - policy.scale_down_stabilization_seconds
    kept = (
        *(r for r in state.recommendations if r.at > window_start),
        Recommendation(now, shaping.recommendation),
    )
    if shaping.recommendation >= current:
        return shaping.recommendation, kept, shaping
    highest = min(max(r.replicas for r in kept), policy.max_replicas)
    replicas = max(min(current, highest), policy.min_replicas)
    if replicas > shaping.recommendation:
        window = _num(policy.scale_down_stabilization_seconds)
        note = f"scale-down held at {replicas} by the {window}s stabilization window"
        shaping = dataclasses.replace(shaping, limit=Limit.STABILIZING, notes=(*shaping.notes, note))
    return replicas, kept, shaping


def _cap(policy: Policy, replicas: int, sink: SinkReport, shaping: _Shaping) -> tuple[int, _Shaping]:
    """Step 7: replicas the sink cannot keep busy are shed at once, window or not."""
    cap = downstream_cap(policy, sink)
    if cap is None or replicas <= max(cap[0], policy.min_replicas):
        return replicas, shaping
    capped = max(cap[0], policy.min_replicas)
    shaping = shaping.shaped(
        min(shaping.recommendation, capped), Limit.SINK_CAP, f"capped at {capped} by sink rate ({cap[1]})"
    )
    return capped, shaping


def decide(policy: Policy, observation: Observation, state: State, now: float) -> Decision:
    """The replica count for this poll, why, and the state for the next one."""
    current = observation.current_replicas
    measured = _remembered_throughput(observation, state)
    empty_since = _empty_since(observation, state, now)
    if policy.pinned_replicas is not None:
        pinned = policy.pinned_replicas
        return Decision(
            replicas=pinned,
            recommendation=pinned,
            limit=Limit.PINNED,
            reason=f"pinned by spec.replicas → {pinned}",
            state=State(empty_since=empty_since, per_replica_throughput=measured),
        )
    shaping = _hold_while_throttled(policy, observation, _recommend(policy, observation, empty_since, now))
    replicas, kept, shaping = _stabilize(policy, current, state, shaping, now)
    sink_view = dataclasses.replace(observation.sink or SinkReport(), per_replica_throughput=measured)
    replicas, shaping = _cap(policy, replicas, sink_view, shaping)
    outcome = f"replicas {current} → {replicas}" if replicas != current else f"stays at {replicas}"
    return Decision(
        replicas=replicas,
        recommendation=shaping.recommendation,
        limit=shaping.limit,
        reason=", ".join((*shaping.notes, outcome)),
        state=State(empty_since=empty_since, recommendations=kept, per_replica_throughput=measured),
    )


def remember(state: State, replicas: int, now: float, window_seconds: float) -> State:
    """Record ``replicas`` as this moment's recommendation without deciding anything.

    Used while the queue cannot be read: holding the fleet is then the recommendation, so once
    readings come back a drop still waits out the stabilization window.
    """
    kept = tuple(r for r in state.recommendations if r.at > now - window_seconds)
    return dataclasses.replace(state, recommendations=(*kept, Recommendation(at=now, replicas=replicas)))


def next_poll_delay(interval: float, consecutive_failures: int) -> float:
    """Exponential backoff after failed queue reads, never shorter than the polling interval."""
    if consecutive_failures <= 0:
        return interval
    doubled = backoff.exponential(consecutive_failures + 1, base=interval, cap=MAX_BACKOFF_SECONDS)
    return max(interval, doubled)


def _num(value: float) -> str:
    return f"{value:g}" if value == int(value) else f"{value:.1f}"
