"""When to call ``PublishBatch``, with which entries, and when to turn requests away.

``publishing.Publisher`` asks these three questions every time something changes (an
event arrives, a call returns, the stall guard fires) and does what they answer:

* :func:`admits` — is there room for a request's events among those waiting for SNS?
  No: the request is answered 503 + Retry-After at once (saturated), so a burst costs the
  gateway memory it has, and Genesys its usual retry.
* :func:`decide` — send now, or wait how long? Adaptive, with no timer on the way of a
  request: when no call is in flight, whatever waits leaves at once (a lone request pays no
  batching delay); while calls are in flight, arrivals wait for one of them to come back and
  leave together — ten at once whenever ten have gathered, up to ``maxConcurrentCalls`` calls
  at a time. So the batches grow with the load and with SNS's latency, by themselves: the
  slower SNS answers, the fuller the next call, and no event waits for company once nothing
  is in flight. The one timer is a stall guard: an event that has waited ``linger`` for calls
  still out (an SNS call that hangs) gets a call of its own. Fuller calls are where the CPU
  goes down, on both sides: a ``PublishBatch`` call costs the gateway about as much to
  build, sign and parse as four of its entries, and costs SNS (moto: about 4 ms of CPU per
  call and 0.6 ms per entry) far more per call than per entry. The price of having no timer:
  against an SNS that answers in a millisecond or two, the call is back before the next
  request arrives and calls leave nearly empty (the bench's no-op endpoint at 600 requests/s:
  about three events per call), so the gateway spends more CPU per request there; against
  moto, whose calls take 10-20 ms, they leave nearly full. (The earlier rule, "linger 10 ms
  whenever a call started within the last 10 ms", sent 6.6 events per call at 600 events/s
  on either, each event first waiting up to the linger.)
* :func:`take` — how many of the waiting entries go into the next call: at most ten, and
  at most 256 KiB together (SNS's limit for a whole batch).

Pure: sizes, counts and times in, decisions out; no clock of its own.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from fanout_core import offloading

MAX_ENTRIES = 10
MAX_BATCH_BYTES = offloading.MESSAGE_LIMIT_BYTES


@dataclasses.dataclass(frozen=True, slots=True)
class Decision:
    """Send now, or look again after ``wait_seconds`` (None: only when something changes)."""

    send: bool
    wait_seconds: float | None = None


def admits(waiting: int, incoming: int, limit: int) -> bool:
    """True when ``incoming`` more events fit among the ``waiting`` ones."""
    return waiting + incoming <= limit


def decide(*, waiting: int, oldest_age: float, in_flight: int, max_in_flight: int, linger: float) -> Decision:
    """Whether to start a PublishBatch call now: ``waiting`` entries (the oldest waited
    ``oldest_age`` seconds), ``in_flight`` calls out of at most ``max_in_flight``; ``linger``:
    the longest an entry waits for calls in flight before it gets a call of its own."""
    if waiting == 0 or in_flight >= max_in_flight:
        return Decision(send=False)
    if in_flight == 0 or waiting >= MAX_ENTRIES or oldest_age >= linger:
        return Decision(send=True)
    return Decision(send=False, wait_seconds=linger - oldest_age)


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
