"""When to call ``PublishBatch``, with which entries, and when to turn requests away.

``publishing.Publisher`` asks these three questions every time something changes (an
event arrives, a call returns, the linger timer fires) and does what they answer:

* :func:`admits` — is there room for a request's events among those waiting for SNS?
  No: the request is answered 503 + Retry-After at once (saturated), so a burst costs the
  gateway memory it has, and Genesys its usual retry.
* :func:`decide` — send now, or wait how long? A quiet gateway (no call started within
  the last ``linger``) sends at once: a lone request pays no batching delay. A busy one
  waits until ten entries are waiting or the oldest has waited ``linger`` — under load the
  calls fill up, which is where the gateway's CPU per event goes down: a ``PublishBatch``
  call costs about as much to build, sign and parse as four of its entries, so ten events in
  one call cost less than half of what they cost in ten calls. (Asking only "is a call in
  flight?" sends most events alone against a fast SNS: the call is back before the next
  request arrives.)
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


def decide(
    *,
    waiting: int,
    oldest_age: float,
    in_flight: int,
    max_in_flight: int,
    linger: float,
    since_last_call: float | None,
) -> Decision:
    """Whether to start a PublishBatch call now; ``since_last_call``: seconds since the last
    call started (None: none yet)."""
    if waiting == 0 or in_flight >= max_in_flight:
        return Decision(send=False)
    quiet = since_last_call is None or since_last_call >= linger
    if quiet or waiting >= MAX_ENTRIES or oldest_age >= linger:
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
