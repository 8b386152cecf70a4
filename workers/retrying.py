"""The retry schedule: backoff after a failed attempt, Retry-After, when to give up; no I/O.

``processing`` asks these questions after a retryable failure: has the message used up
``spec.retry.maxAttempts`` (:func:`attempts_exhausted`)? if not, how long should it stay
invisible (:func:`backoff_delay`, or the downstream's own answer parsed by
:func:`retry_after_delay`)? Settling then sets that visibility on the message, so a
retry costs nothing while it waits: SQS holds it.

The attempt number is SQS's ``ApproximateReceiveCount`` — the count survives worker
restarts and replicas, which an in-process counter would not.

One retry never goes through SQS: a throttle that asks for a second or two
(:func:`wait_in_place`) is waited out where the event is, in its lane. Through SQS it
would come back after its delay plus a receive, most likely to another replica, while
the later events of its conversation wait here for it (bench/fleet.py: the last
throttled events of a backlog stretched its tail by seconds).

Jitter is "equal jitter": the delay is drawn from ``[step/2, step]`` where ``step`` is
the capped exponential ``base * 2**(attempt-1)``. Full jitter (``[0, step]``) spreads
retries a little wider but may draw a delay near zero, and a near-zero visibility means
the message comes straight back and hits the downstream that just failed; these delays
exist to protect that downstream, so half of each step is kept as a floor.
"""

from __future__ import annotations

import datetime
import email.utils
import math
import random as random_module
import re
from collections.abc import Callable

from fanout_core import spec

SQS_MAX_VISIBILITY_SECONDS = float(spec.SQS_MAX_VISIBILITY_SECONDS)

_DELTA_SECONDS = re.compile(r"^[0-9]{1,12}(?:\.[0-9]{1,9})?$")
IN_PLACE_SECONDS = 2.0
"""The longest Retry-After a throttled event waits out in place."""
IN_PLACE_TRIES = 3
"""How many throttles in a row one event waits out in place before it goes back to SQS."""


def wait_in_place(throttled: bool, delay: float | None, tries: int) -> float | None:
    """Seconds to wait before sending an event again right here after its ``tries``-th
    throttle in a row, or None: retry through SQS as usual."""
    if not throttled or delay is None or not 0 < delay <= IN_PLACE_SECONDS or tries > IN_PLACE_TRIES:
        return None
    return delay


def backoff_ceiling(receive_count: int, policy: spec.RetrySpec) -> float:
    """The exponential step for this attempt, capped: the most :func:`backoff_delay` returns."""
    cap = min(policy.max_delay_seconds, SQS_MAX_VISIBILITY_SECONDS)
    doublings = max(receive_count, 1) - 1
    try:
        step = math.ldexp(policy.base_delay_seconds, doublings)
    except OverflowError:  # far past the cap
        return cap
    return min(step, cap)


def backoff_delay(
    receive_count: int,
    policy: spec.RetrySpec,
    *,
    random: Callable[[], float] = random_module.random,
) -> float:
    """Seconds to keep a message invisible after its ``receive_count``-th attempt failed.

    Equal jitter over the capped exponential step: ``step/2 + random()*step/2``. Greater
    than zero whenever ``base_delay_seconds`` is, never above ``max_delay_seconds`` nor
    the SQS visibility cap (12 h).
    """
    step = backoff_ceiling(receive_count, policy)
    fraction = min(max(random(), 0.0), 1.0)
    return step / 2 + fraction * step / 2


def visibility_seconds(delay: float) -> int:
    """A delay as a ``VisibilityTimeout`` value: whole seconds, rounded up, within 0-12 h."""
    if not math.isfinite(delay):
        return int(SQS_MAX_VISIBILITY_SECONDS) if delay > 0 else 0
    return int(min(max(math.ceil(delay), 0), SQS_MAX_VISIBILITY_SECONDS))


def attempts_exhausted(receive_count: int, policy: spec.RetrySpec) -> bool:
    """True when the attempt that just failed was the last one ``policy`` allows.

    ``receive_count`` is the failed message's ``ApproximateReceiveCount``: with
    ``maxAttempts: 5`` the fifth failed receive dead-letters the message.
    """
    return receive_count >= policy.max_attempts


def retry_after_delay(value: str | None, *, now: datetime.datetime | float) -> float | None:
    """Seconds to wait from an HTTP ``Retry-After`` header; None when absent or garbage.

    Accepts delta-seconds (``"120"``, a decimal tolerated) and an HTTP-date
    (``"Fri, 14 Mar 2025 15:09:26 GMT"``, measured from ``now``: an aware datetime or
    epoch seconds). A date in the past means 0. The result is capped at 12 h, the longest
    a message can be kept invisible, so no answer can park a message for ever.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    if _DELTA_SECONDS.match(text):
        return min(float(text), SQS_MAX_VISIBILITY_SECONDS)
    moment = _http_date(text)
    if moment is None:
        return None
    seconds = moment.timestamp() - _epoch_seconds(now)
    return min(max(seconds, 0.0), SQS_MAX_VISIBILITY_SECONDS)


def _http_date(text: str) -> datetime.datetime | None:
    try:
        moment = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if moment.tzinfo is None:  # "-0000": RFC 5322's "UTC, origin unknown"
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment


def _epoch_seconds(now: datetime.datetime | float) -> float:
    if isinstance(now, datetime.datetime):
        if now.tzinfo is None:
            now = now.replace(tzinfo=datetime.UTC)
        return now.timestamp()
    return float(now)
