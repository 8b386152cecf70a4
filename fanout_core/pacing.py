"""How fast a redrive puts dead letters back: the default rate, and a pacer on an injected clock.

``fanout_core.redriving`` asks :func:`choose_rate` once and then a :class:`Pacer` before
every batch; both are pure (numbers and a clock value in, a decision out), so the rules are
unit- and property-tested without a queue.

Why the default is what it is. A redriven message goes back to the *source queue*, not to the
downstream: the workers deliver it through the same fleet-wide limiter (``sink.rateLimit``)
as live traffic, so the downstream is never driven above its limit whatever the redrive
rate. What the redrive rate decides is how much of that limit the catch-up takes from live
events: 50,000 messages put back at once sit in front of the live events for as long as the
fleet needs to deliver them (at 100 requests/s, eight minutes of every live event waiting),
make the operator scale the fleet to its cap, and a SIEM that just came back is met by a
full-speed burst. So:

* ``--rate`` given: that.
* the fleet's live delivery rate known (the operator reads it off the workers' ``/metrics``):
  what the limit leaves room for, ``0.9 x limit - live`` (10% headroom for live bursts), at
  least a tenth of the limit so a busy fleet still catches up.
* not known (the ``fanout`` tool has the manifest and SQS, not the pods): half the limit.
  Genesys traffic peaks at a few times its daily average, so a fixed half leaves live
  traffic its peak and still drains a 50,000-message DLQ at 100 requests/s in under
  17 minutes.
* no ``sink.rateLimit``: 10 messages/s, and the summary says to pass ``--rate``.

And whatever the rate, a backlog guard watches the source queue (the one figure SQS gives
without CloudWatch): while more messages wait there than the fleet delivers in
:data:`GUARD_SECONDS` at the limit, the fleet is behind — live traffic or our own catch-up
is queueing — and the redrive pauses until the backlog is down to half of that.
"""

from __future__ import annotations

import dataclasses
import math

HEADROOM = 0.9
FLOOR_SHARE = 0.1
UNMEASURED_SHARE = 0.5
UNLIMITED_RATE = 10.0
GUARD_SECONDS = 30.0
GUARD_INTERVAL_SECONDS = 5.0
MAX_BURST = 10  # SQS's batch size


@dataclasses.dataclass(frozen=True)
class RateChoice:
    """Messages per second, and why (printed with the redrive's summary)."""

    rate: float
    why: str
    backlog_limit: int | None
    """Pause while the source queue holds more than this many visible messages (None: never)."""


def _num(value: float) -> str:
    return f"{value:.1f}".rstrip("0").rstrip(".") if value != int(value) else str(int(value))


def choose_rate(
    *, explicit: float | None, rate_limit: float | None, live_rate: float | None = None
) -> RateChoice:
    """The redrive's rate; see the module docstring for why."""
    guard = max(1, math.ceil(rate_limit * GUARD_SECONDS)) if rate_limit is not None else None
    if explicit is not None:
        if explicit <= 0:
            raise ValueError("rate must be positive")
        return RateChoice(explicit, f"{_num(explicit)}/s as asked", guard)
    if rate_limit is None:
        return RateChoice(
            UNLIMITED_RATE, f"{_num(UNLIMITED_RATE)}/s: the sink has no rateLimit (pass --rate)", None
        )
    if live_rate is None:
        rate = rate_limit * UNMEASURED_SHARE
        return RateChoice(
            rate,
            f"{_num(rate)}/s: half of sink.rateLimit {_num(rate_limit)}/s, the rest for live traffic",
            guard,
        )
    room = rate_limit * HEADROOM - max(0.0, live_rate)
    rate = max(rate_limit * FLOOR_SHARE, room)
    return RateChoice(
        rate,
        f"{_num(rate)}/s: sink.rateLimit {_num(rate_limit)}/s x {HEADROOM} - live {_num(live_rate)}/s"
        + (" (floor: a tenth of the limit)" if room < rate_limit * FLOOR_SHARE else ""),
        guard,
    )


class Pacer:
    """A token bucket at ``rate`` (burst: one second's worth, at most a batch) plus the backlog
    guard. Every method takes ``now`` (monotonic seconds); nothing here reads a clock."""

    def __init__(self, choice: RateChoice, now: float) -> None:
        self.rate = choice.rate
        self.burst = max(1, min(MAX_BURST, math.ceil(choice.rate)))
        self._tokens = float(self.burst)
        self._last = now
        self._backlog_limit = choice.backlog_limit
        self._paused = False
        self._next_check = now

    def _refill(self, now: float) -> None:
        if now > self._last:
            self._tokens = min(float(self.burst), self._tokens + (now - self._last) * self.rate)
            self._last = now

    def allowance(self, now: float) -> int:
        """Messages that may be sent now (0 while paused by the guard)."""
        if self._paused:
            return 0
        self._refill(now)
        return int(self._tokens + 1e-9)

    def wait(self, now: float) -> float:
        """Seconds until one more message may be sent (the guard's next look while paused)."""
        if self._paused:
            return max(0.0, self._next_check - now)
        self._refill(now)
        return max(0.0, (1.0 - self._tokens) / self.rate)

    def spend(self, count: int, now: float) -> None:
        self._refill(now)
        self._tokens -= count

    # -- the backlog guard -------------------------------------------------------------

    def backlog_due(self, now: float) -> bool:
        """Whether the source queue's backlog should be read now."""
        return self._backlog_limit is not None and now >= self._next_check

    def observe_backlog(self, visible: int, now: float) -> None:
        """The source queue's visible messages; pauses above the limit, resumes below half."""
        self._next_check = now + GUARD_INTERVAL_SECONDS
        if self._backlog_limit is None:
            return
        if visible > self._backlog_limit:
            self._paused = True
        elif visible <= self._backlog_limit // 2:
            if self._paused:
                self._last = now  # no credit for the paused time
            self._paused = False

    @property
    def paused(self) -> bool:
        return self._paused
