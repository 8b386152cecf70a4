"""When to call ``PublishBatch``, with which entries, and when to turn requests away.

``publishing.Publisher`` asks these questions every time something changes (an event
arrives, a call returns, a timer fires) and does what they answer:

* :func:`admits` — is there room for a request's events among those waiting for SNS?
  No: the request is answered 503 + Retry-After at once (saturated), so a burst costs the
  gateway memory it has, and Genesys its usual retry.
* :func:`decide` — send now, or wait how long? Adaptive:

  - while calls are in flight, arrivals wait for one of them to come back and leave
    together — ten at once whenever ten have gathered, up to ``maxConcurrentCalls`` calls
    at a time. The slower SNS answers, the fuller the next call. A stall guard bounds that
    wait: an event that has waited ``linger`` for calls still out (an SNS call that hangs)
    gets a call of its own;
  - when no call is in flight, whatever waits leaves at once — unless the recent arrival
    rate (:class:`ArrivalRate`) is high enough to fill a whole call of ten within the
    ``batch_window`` (``publishing.batchWindowMilliseconds``, default
    :data:`DEFAULT_BATCH_WINDOW_SECONDS`: 500 events/s and more at 20 ms) *and* says the
    missing entries will arrive before the oldest waiting one has waited the window. Then
    the call is held until it is full or the window is over, never longer. Below that rate
    nothing is held (a lone request pays no batching delay, as before), so only the load at
    which calls' cost matters pays the wait, and it pays at most the window. This is what
    Lambda's batching window and Kafka's ``linger.ms`` do, but only when the load makes
    it pay.

  Why hold at all: against an SNS that answers in a few milliseconds (moto given a core,
  the real SNS nearby), a call is back before the next requests arrive, and without the
  window calls left with 3.6 events at 600 requests/s; a ``PublishBatch`` call costs the
  gateway about as much to build, sign and parse as two requests (~1.1 ms of CPU against
  ~0.55 ms), and costs SNS (moto: about 4.5 ms of CPU per call and 0.6 ms per entry) far
  more per call than per entry, so fuller calls are where the CPU goes down, on both sides.
* :func:`take` — how many of the waiting entries go into the next call: at most ten, and
  at most 256 KiB together (SNS's limit for a whole batch).

Pure: sizes, counts and times in, decisions out; no clock of its own (the rate estimate is
given the time of each arrival and of each look).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

from fanout_core import offloading

MAX_ENTRIES = 10
MAX_BATCH_BYTES = offloading.MESSAGE_LIMIT_BYTES
DEFAULT_BATCH_WINDOW_SECONDS = 0.02
"""The longest a call is held to fill when no call is in flight (and only when the arrival rate
fills ten entries within it: at least 500 events/s). Short against Genesys' patience and the
front door's p99 aim (50 ms), long enough at 600 events/s (ten arrive in ~17 ms)."""
RATE_TIME_CONSTANT_SECONDS = 0.1
"""How far back :class:`ArrivalRate` looks, roughly: long enough for a steady estimate at the
rates that matter (60 events at 600/s), short enough that a load that stops stops holding
calls within a few tenths of a second."""


@dataclasses.dataclass(frozen=True, slots=True)
class Decision:
    """Send now, or look again after ``wait_seconds`` (None: only when something changes)."""

    send: bool
    wait_seconds: float | None = None


class ArrivalRate:
    """Events per second recently: an exponentially decaying count (each event adds
    ``1 / time_constant``, the sum decays by ``e`` every ``time_constant``), whose expected value
    is the arrival rate. Two floats and one ``exp`` per look: cheap enough per request."""

    __slots__ = ("_at", "_level", "_time_constant")

    def __init__(self, time_constant: float = RATE_TIME_CONSTANT_SECONDS) -> None:
        if time_constant <= 0:
            raise ValueError("time_constant must be positive")
        self._time_constant = time_constant
        self._level = 0.0
        self._at = 0.0

    def add(self, now: float, count: int = 1) -> None:
        """``count`` events arrived at ``now``."""
        self._level = self.per_second(now) + count / self._time_constant
        self._at = now

    def per_second(self, now: float) -> float:
        """The estimate at ``now`` (decayed since the last arrival)."""
        if self._level == 0.0:
            return 0.0
        elapsed = now - self._at
        return self._level if elapsed <= 0 else self._level * math.exp(-elapsed / self._time_constant)


def admits(waiting: int, incoming: int, limit: int) -> bool:
    """True when ``incoming`` more events fit among the ``waiting`` ones."""
    return waiting + incoming <= limit


def decide(
    *,
    waiting: int,
    oldest_age: float,
    in_flight: int,
    max_in_flight: int,
    linger: float,
    arrival_rate: float = 0.0,
    batch_window: float = 0.0,
) -> Decision:
    """Whether to start a PublishBatch call now: ``waiting`` entries (the oldest waited
    ``oldest_age`` seconds), ``in_flight`` calls out of at most ``max_in_flight``; ``linger``:
    the longest an entry waits for calls in flight before it gets a call of its own;
    ``arrival_rate``: events per second recently; ``batch_window``: the longest a call is held
    to fill when none is in flight (0: never held)."""
    if waiting == 0 or in_flight >= max_in_flight:
        return Decision(send=False)
    if waiting >= MAX_ENTRIES:
        return Decision(send=True)
    if in_flight == 0:
        if fills_within(waiting, oldest_age, arrival_rate, batch_window):
            return Decision(send=False, wait_seconds=batch_window - oldest_age)
        return Decision(send=True)
    if oldest_age >= linger:
        return Decision(send=True)
    return Decision(send=False, wait_seconds=linger - oldest_age)


def fills_within(waiting: int, oldest_age: float, arrival_rate: float, batch_window: float) -> bool:
    """Whether holding pays: the rate fills a whole call within the window, and the entries
    missing from this one are due before its oldest has waited the window."""
    if arrival_rate * batch_window < MAX_ENTRIES:
        return False
    return oldest_age + (MAX_ENTRIES - waiting) / arrival_rate < batch_window


def take(sizes: Sequence[int]) -> int:
    """How many entries from the head of ``sizes`` (message + attribute bytes) go into one
    call: at most :data:`MAX_ENTRIES`, at most :data:`MAX_BATCH_BYTES` together, and always
    at least one when any wait (each entry alone is within the limit)."""
    total = 0
    count = 0
    for size in sizes[:MAX_ENTRIES]:
        if count and total + size > MAX_BATCH_BYTES:
            break
        total += size
        count += 1
    return count
