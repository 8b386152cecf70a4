"""The retry schedule: backoff after a failed attempt, Retry-After, when to give up; no I/O.

``processing`` asks these questions after a retryable failure: has the message used up
``spec.retry.maxAttempts`` (:func:`attempts_exhausted`)? if not, how long should it stay
invisible (:func:`backoff_delay`, or the downstream's own answer parsed by
:func:`retry_after_delay`)? Settling then sets that visibility on the message, so a
retry costs nothing while it waits: SQS holds it.

The attempt number is the event's count of failed deliveries, kept in the idempotency
store beside its claim (so it survives restarts, and with DynamoDB replicas) — not SQS's
``ApproximateReceiveCount``, which also counts the receives that were not attempts: a
throttled event, a refused credential, an open circuit, a shutdown. Whether the queue's own
redrive policy would cut the retries short is one rule shared with the operator and
``fanout validate``: :func:`fanout_core.findings.redrive_conflict`.

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

from fanout_core import backoff, spec

SQS_MAX_VISIBILITY_SECONDS = float(spec.SQS_MAX_VISIBILITY_SECONDS)

_DELTA_SECONDS = re.compile(r"^[0-9]{1,12}(?:\.[0-9]{1,9})?$")


def backoff_ceiling(receive_count: int, policy: spec.RetrySpec) -> float:
    """The exponential step for this attempt, capped: the most :func:`backoff_delay` returns."""
    cap = min(policy.max_delay_seconds, SQS_MAX_VISIBILITY_SECONDS)
    return backoff.exponential(receive_count, base=policy.base_delay_seconds, cap=cap)


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
    # Written so that fraction 1 gives the step itself, even for the tiniest floats.
    return step - (1.0 - fraction) * (step / 2)


exponential_delay = backoff.exponential
"""``base * 2**(failures-1)``, capped: the pause after the ``failures``-th failure in a row
of something that is not a message (an SQS call, a crashed task, a store write); the shared
core's :func:`fanout_core.backoff.exponential`, under the name the worker's modules call."""


VISIBILITY_CAP_MARGIN_SECONDS = 30.0
"""Kept between a visibility we set and SQS's 12 hours from the receive: our clock and SQS's
do not start at the same instant."""


def visibility_timeout(delay: float, *, held_for: float = 0.0) -> int:
    """A delay as a ``VisibilityTimeout``: the one rounding rule for every visibility we set.

    Whole seconds, rounded up (a message never comes back before its delay), and never past
    what SQS still allows for a message received ``held_for`` seconds ago: 12 hours from its
    receive, less :data:`VISIBILITY_CAP_MARGIN_SECONDS`, rounded down. Never negative.
    """
    room = math.floor(SQS_MAX_VISIBILITY_SECONDS - max(held_for, 0.0) - VISIBILITY_CAP_MARGIN_SECONDS)
    if math.isnan(delay) or delay <= 0:
        return 0
    wanted = math.ceil(delay) if math.isfinite(delay) else room
    return max(0, min(wanted, room))


def attempts_exhausted(attempts: int, policy: spec.RetrySpec) -> bool:
    """True when the attempt that just failed was the last one ``policy`` allows.

    ``attempts`` counts the event's failed deliveries (the idempotency store keeps the
    count): with ``maxAttempts: 5`` the fifth failed delivery dead-letters the message.
    Throttling, a refused credential, an open circuit and shutdowns are not attempts.
    """
    return attempts >= policy.max_attempts


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
