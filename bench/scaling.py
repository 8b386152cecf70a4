"""Replay a day of contact-center traffic through two autoscaling policies and compare them.

    .venv/bin/python bench/scaling.py [--hours 24] [--seed 7]

One simulator, two policies on the same trace and the same fleet model:

- ``fanout``: the operator's own ``fanout_operator.scaling.decide`` with the spec's defaults
  (target 100 messages per replica, polling 15 s, stabilization 300 s, cooldown 300 s) and the
  sink's rate limit; and the same with KEDA's target (5) to isolate what the sink cap does;
- ``KEDA defaults``: the aws-sqs-queue scaler (queueLength 5, visible + in-flight,
  pollingInterval 30 s, cooldownPeriod 300 s, activation 0) driving an HPA with its default
  behaviour (sync 15 s, tolerance 10 %, scale up by max(100 %, 4 pods) per 15 s, scale down
  through a 300 s window at up to 100 % per 15 s, max 100 replicas).

Traffic: 6 events/s on average with 18/s peak hours, Poisson-like noise, and a 20-minute
incident at 10x the average (60/s). Fleet: each replica sends up to 8 req/s (4 concurrent
requests of 0.5 s), new pods take 20 s to become ready, and the downstream API grants the whole
fleet 40 req/s — the fleet cannot deliver faster than that whatever its size.

Printed per policy: replica-minutes (what the fleet costs), peak replicas, worst backlog age
(how late the oldest event got), minutes spent above the replica count the sink can use, and
events delivered; then the ratios against KEDA measured in this same run.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import math
import random
from typing import Protocol

from fanout_operator import scaling

DAY_SECONDS = 86_400


@dataclasses.dataclass(frozen=True)
class Fleet:
    per_replica_rate: float = 8.0
    sink_rate_limit: float = 40.0
    latency_seconds: float = 0.5
    startup_seconds: int = 20

    @property
    def useful_replicas(self) -> int:
        return math.ceil(self.sink_rate_limit / self.per_replica_rate)


@dataclasses.dataclass(frozen=True)
class Observation:
    visible: int
    in_flight: int
    replicas: int
    ready: int


class Policy(Protocol):
    name: str

    def step(self, now: int, observation: Observation) -> int | None:
        """Called every simulated second; returns a new replica count or None."""


# --- traffic ----------------------------------------------------------------------------------

# Relative hourly load: quiet nights, morning ramp, two peak blocks (10-12h, 14-16h).
_SHAPE = [0.25] * 7 + [0.5, 0.9, 1.3, 0.0, 0.0, 1.4, 1.5, 0.0, 0.0, 1.2, 0.8, 0.6] + [0.4] * 5
_PEAK_HOURS = (10, 11, 14, 15)


def hourly_rates(average: float = 6.0, peak_ratio: float = 3.0) -> list[float]:
    """24 hourly rates whose mean is ``average`` and whose peak hours are ``peak_ratio`` x it."""
    shape = list(_SHAPE)
    others = sum(shape)
    # peak P with P / mean = peak_ratio, mean = (4P + others) / 24.
    peak = peak_ratio * others / (24 - 4 * peak_ratio)
    for hour in _PEAK_HOURS:
        shape[hour] = peak
    mean = sum(shape) / 24
    return [average * value / mean for value in shape]


def day_trace(
    *,
    seed: int = 7,
    seconds: int = DAY_SECONDS,
    average: float = 6.0,
    incident_factor: float = 10.0,
    incident_start: int = 16 * 3600 + 30 * 60,
    incident_seconds: int = 20 * 60,
) -> list[int]:
    """Events arriving in each second of the trace (seeded, so every run replays the same day)."""
    rng = random.Random(seed)
    rates = hourly_rates(average)
    arrivals: list[int] = []
    wobble = 1.0
    for second in range(seconds):
        if second % 60 == 0:  # minute-scale drift around the hourly level
            wobble = min(1.3, max(0.7, wobble + rng.uniform(-0.1, 0.1)))
        rate = rates[(second // 3600) % 24] * wobble
        if incident_start <= second % DAY_SECONDS < incident_start + incident_seconds:
            rate = average * incident_factor
        whole = int(rate)
        arrivals.append(whole + (1 if rng.random() < rate - whole else 0))
    return arrivals


def short_trace(seed: int = 7) -> list[int]:
    """An hour: quiet, a peak, a 10x incident, quiet again (for tests)."""
    quiet = [2] * 600
    peak = [18] * 900
    incident = [60] * 600
    rng = random.Random(seed)
    tail = [rng.choice((0, 1, 2)) for _ in range(1_500)]
    return quiet + peak + incident + tail


# --- policies ---------------------------------------------------------------------------------


class FanoutPolicy:
    """The operator's scaling function, polled like the operator polls it."""

    def __init__(self, fleet: Fleet, *, target: int = 100, interval: int = 15, name: str = "") -> None:
        self.name = name or f"fanout (target {target}, poll {interval}s)"
        self._interval = interval
        self._fleet = fleet
        self._policy = scaling.Policy(
            min_replicas=0,
            max_replicas=100,
            target_backlog_per_replica=target,
            activation_backlog=1,
            scale_down_stabilization_seconds=300,
            cooldown_seconds=300,
            sink_rate_limit=fleet.sink_rate_limit,
            sink_max_concurrency=4,
            sink_timeout_seconds=10,
        )
        self._state = scaling.State()

    def step(self, now: int, observation: Observation) -> int | None:
        if now % self._interval:
            return None
        # Ready workers report their capacity (concurrency / mean latency) on /metrics.
        measured = self._fleet.per_replica_rate if observation.ready else None
        sink = scaling.SinkReport(throttled=False, per_replica_throughput=measured)
        decision = scaling.decide(
            self._policy,
            scaling.Observation(observation.visible, observation.in_flight, observation.replicas, sink=sink),
            self._state,
            float(now),
        )
        self._state = decision.state
        return decision.replicas


class KedaDefaultPolicy:
    """KEDA aws-sqs-queue scaler with default settings driving an HPA with default behaviour."""

    name = "KEDA defaults (queueLength 5, poll 30s, cooldown 300s, HPA default)"
    QUEUE_LENGTH = 5
    POLLING = 30
    COOLDOWN = 300
    HPA_SYNC = 15
    TOLERANCE = 0.1
    MAX_REPLICAS = 100
    DOWN_WINDOW = 300

    def __init__(self) -> None:
        self._last_active: int | None = None
        self._history: collections.deque[tuple[int, int]] = collections.deque()

    def step(self, now: int, observation: Observation) -> int | None:
        metric = observation.visible + observation.in_flight
        current = observation.replicas
        if now % self.POLLING == 0:
            if metric > 0:
                self._last_active = now
                if current == 0:
                    return 1  # KEDA activates the target, the HPA takes over from 1
            elif current > 0 and (self._last_active is None or now - self._last_active >= self.COOLDOWN):
                self._history.clear()
                return 0
        if current == 0 or now % self.HPA_SYNC:
            return None
        ratio = metric / (self.QUEUE_LENGTH * current)
        recommendation = (
            current if abs(ratio - 1.0) <= self.TOLERANCE else math.ceil(metric / self.QUEUE_LENGTH)
        )
        recommendation = min(max(recommendation, 1), self.MAX_REPLICAS)
        self._history.append((now, recommendation))
        while self._history and self._history[0][0] <= now - self.DOWN_WINDOW:
            self._history.popleft()
        if recommendation > current:
            return min(recommendation, max(2 * current, current + 4))
        # Scale down only to the highest recommendation of the window, never up from here.
        stabilized = max(r for _, r in self._history)
        return stabilized if stabilized < current else None


# --- the simulator ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Result:
    name: str
    replica_minutes: float
    peak_replicas: int
    worst_backlog_age: float
    minutes_over_sink_cap: float
    delivered: int
    arrived: int


def simulate(arrivals: list[int], policy: Policy, fleet: Fleet = Fleet()) -> Result:
    queue: collections.deque[list[float]] = collections.deque()  # [arrival second, events]
    backlog = 0.0
    ready_at: list[int] = []  # one entry per replica: when it becomes ready
    replica_seconds = 0
    over_cap_seconds = 0
    peak = 0
    worst_age = 0.0
    delivered = 0.0
    served = 0.0
    for now, count in enumerate(arrivals):
        if count:
            queue.append([float(now), float(count)])
            backlog += count
        ready = sum(1 for at in ready_at if at <= now)
        capacity = min(ready * fleet.per_replica_rate, fleet.sink_rate_limit)
        served = min(capacity, backlog)
        remaining = served
        while remaining > 1e-9 and queue:
            take = min(remaining, queue[0][1])
            queue[0][1] -= take
            remaining -= take
            if queue[0][1] <= 1e-9:
                queue.popleft()
        backlog -= served
        delivered += served
        if queue and backlog >= 1:
            worst_age = max(worst_age, now - queue[0][0])
        # Little's law: what is being delivered right now is received but not yet deleted.
        in_flight = served * fleet.latency_seconds
        observation = Observation(
            visible=round(backlog), in_flight=round(in_flight), replicas=len(ready_at), ready=ready
        )
        wanted = policy.step(now, observation)
        if wanted is not None and wanted != len(ready_at):
            if wanted > len(ready_at):
                ready_at.extend([now + fleet.startup_seconds] * (wanted - len(ready_at)))
            else:
                ready_at.sort()  # drop the newest (least ready) first
                del ready_at[wanted:]
        replica_seconds += len(ready_at)
        over_cap_seconds += len(ready_at) > fleet.useful_replicas
        peak = max(peak, len(ready_at))
    return Result(
        name=policy.name,
        replica_minutes=replica_seconds / 60,
        peak_replicas=peak,
        worst_backlog_age=worst_age,
        minutes_over_sink_cap=over_cap_seconds / 60,
        delivered=round(delivered),
        arrived=sum(arrivals),
    )


def compare(arrivals: list[int], fleet: Fleet = Fleet()) -> list[Result]:
    """KEDA first (the baseline), then the fanout policy with its defaults and with KEDA's target."""
    return [
        simulate(arrivals, KedaDefaultPolicy(), fleet),
        simulate(arrivals, FanoutPolicy(fleet), fleet),
        simulate(arrivals, FanoutPolicy(fleet, target=5), fleet),
    ]


def report(results: list[Result], fleet: Fleet = Fleet()) -> str:
    baseline = results[0]
    lines = [
        f"fleet: {fleet.per_replica_rate:g} req/s per replica, sink limit {fleet.sink_rate_limit:g} req/s "
        f"(useful replicas: {fleet.useful_replicas}), pod start {fleet.startup_seconds}s",
        f"{'policy':<70} {'replica-min':>11} {'peak':>5} {'worst age s':>11} {'min>cap':>8}"
        f" {'delivered':>10}",
    ]
    for result in results:
        lines.append(
            f"{result.name:<70} {result.replica_minutes:>11.0f} {result.peak_replicas:>5} "
            f"{result.worst_backlog_age:>11.0f} {result.minutes_over_sink_cap:>8.0f} "
            f"{result.delivered:>6}/{result.arrived}"
        )
    for result in results[1:]:
        cost = result.replica_minutes / baseline.replica_minutes if baseline.replica_minutes else math.nan
        age = (
            result.worst_backlog_age / baseline.worst_backlog_age if baseline.worst_backlog_age else math.nan
        )
        lines.append(f"{result.name}: replica-minutes x{cost:.2f}, worst backlog age x{age:.2f} vs KEDA")
    return "\n".join(lines)


def main() -> None:
    options = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    options.add_argument("--hours", type=float, default=24.0)
    options.add_argument("--seed", type=int, default=7)
    args = options.parse_args()
    arrivals = day_trace(seed=args.seed, seconds=int(args.hours * 3600))
    print(f"trace: {len(arrivals)} s, {sum(arrivals)} events, mean {sum(arrivals) / len(arrivals):.1f}/s")
    print(report(compare(arrivals)))


if __name__ == "__main__":
    main()
