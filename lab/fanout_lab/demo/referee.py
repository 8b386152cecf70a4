"""Judging one consumer at the end of the demo: figures for the report, and the invariants
that decide the exit code. Pure: what the simulators accepted, what the dead-letter queue
holds and what was published go in; a :class:`Verdict` comes out.

The invariants, each named in the output when it breaks:

* **exactly once** — every unique event the consumer should get (its SNS filter policy,
  then its ``spec.filter``) was accepted by its downstream, none twice, nothing else;
* **order** — no *ordering violation*: two events of one ordering key accepted in the
  opposite of both their event-time order and the order the source published them. The
  source itself reorders some events (as Genesys does); a standard queue's worker puts
  back in event-time order what it holds at once, a FIFO queue keeps the source's order,
  so a source-reordered pair may arrive either way — but an in-order pair must never be
  turned around (by a retry, two replicas, a lane that did not hold). Events brought back
  by a redrive are left out: they arrive after their conversation's later events by
  construction (on a standard queue as with any redrive), and the report counts them;
* **dead letters** — every poison message the consumer received is in its dead-letter
  queue with a ``fanout.reason``, and nothing else is (what was dead-lettered for a cause
  since fixed has been redriven, and counts under exactly once);
* **drained** — the source queue is empty (nothing visible, nothing in flight).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import itertools
import math
from collections.abc import Iterable, Mapping, Sequence

from fanout_lab.demo import traffic

SATURATED_SHARE = 0.5
"""Share of an interval the consumer's requests must have waited for its rate limit for the
interval to count as saturated (see :func:`goodput`)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Accepted:
    """One event the downstream accepted, in arrival order."""

    correlation_id: str
    at: float
    """``time.monotonic()`` of its arrival at the simulator."""


@dataclasses.dataclass(frozen=True, slots=True)
class DeadLetter:
    """One message found in the dead-letter queue."""

    sns_message_id: str | None
    reason_class: str | None
    reason: str | None


@dataclasses.dataclass(frozen=True, slots=True)
class Sample:
    """The consumer seen at one moment (for goodput)."""

    at: float
    backlog: int
    """Visible + in flight in the source queue."""
    requests_ok: int
    """Successful downstream requests so far."""
    outage: bool = False
    """The downstream refused everything at that moment (its limit was zero)."""
    rate_bound_seconds: float = 0.0
    """Seconds the consumer's requests had waited for its rate limit so far (per replica)."""


@dataclasses.dataclass(frozen=True)
class Expectation:
    """What one consumer must end up with."""

    events: frozenset[str]
    """Correlation ids it must deliver."""
    ordered: frozenset[str]
    """Those among them that carry the consumer's ordering key (order is checked on these)."""
    poison: frozenset[str]
    """SNS message ids of the poison messages its queue receives."""
    received: int
    """Unique events its queue receives (before the consumer's own filter)."""


@dataclasses.dataclass(frozen=True)
class Verdict:
    delivered: int
    delivered_twice: int
    missing: int
    unexpected: int
    order_violations: int
    reordered_at_source: int
    reordered_repaired: int
    dead_letters: Mapping[str, int]
    """``reason class: reason`` → count."""
    latency_p50: float | None
    latency_p99: float | None
    goodput_share: float | None
    """Successful requests per second while saturated / the downstream's limit."""
    saturated_seconds: float
    broken: tuple[str, ...]
    redriven: int = 0
    """Events delivered after a redrive brought them back from the dead-letter queue."""

    @property
    def ok(self) -> bool:
        return not self.broken


def expectation(
    day: traffic.Day,
    *,
    categories: Iterable[traffic.Category],
    keep: Iterable[str] | None,
    ordered_categories: Iterable[traffic.Category],
    poison_ids: Mapping[int, str],
) -> Expectation:
    """What a consumer subscribed to ``categories`` with ``spec.filter.eventTypes`` =
    ``keep`` (matched as the worker does, by :func:`type_matches`) must deliver."""
    wanted = set(categories)
    ordered_wanted = set(ordered_categories)
    received = [event for event in day.events.values() if event.category in wanted]
    kept = [event for event in received if keep is None or type_matches(event.event_type, keep)]
    return Expectation(
        events=frozenset(event.correlation_id for event in kept),
        ordered=frozenset(event.correlation_id for event in kept if event.category in ordered_wanted),
        poison=frozenset(poison_ids[poison.index] for poison in day.poison if poison.category in wanted),
        received=len(received),
    )


def type_matches(event_type: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(event_type, pattern) for pattern in patterns)


def judge(
    *,
    day: traffic.Day,
    expected: Expectation,
    accepted: Sequence[Accepted],
    published_at: Mapping[str, float],
    dead_letters: Sequence[DeadLetter],
    queue_left: int,
    samples: Sequence[Sample],
    rate_limit: float | None,
    saturation_backlog: int,
    redriven: frozenset[str] = frozenset(),
) -> Verdict:
    broken: list[str] = []
    first: dict[str, float] = {}
    twice = 0
    for item in accepted:
        if item.correlation_id in first:
            twice += 1
        else:
            first[item.correlation_id] = item.at
    missing = expected.events - first.keys()
    unexpected = first.keys() - expected.events
    if missing:
        broken.append(f"{len(missing)} of {len(expected.events)} events never delivered")
    if twice:
        broken.append(f"{twice} events delivered twice")
    if unexpected:
        broken.append(f"{len(unexpected)} events delivered that this consumer should not get")

    order = [cid for cid in first if cid in expected.ordered and cid not in redriven]
    violations, reordered, repaired = order_check(order, day.events)
    if violations:
        broken.append(f"{violations} ordering violations")

    reasons: dict[str, int] = {}
    found_poison: set[str] = set()
    for letter in dead_letters:
        label = f"{letter.reason_class or '-'}: {letter.reason or 'no reason'}"
        reasons[label] = reasons.get(label, 0) + 1
        if letter.sns_message_id in expected.poison and letter.reason:
            found_poison.add(letter.sns_message_id)
    if expected.poison - found_poison:
        broken.append(
            f"{len(expected.poison - found_poison)} poison messages not dead-lettered with a reason"
        )
    others = len(dead_letters) - len(found_poison)
    if others:
        broken.append(f"{others} other messages dead-lettered")
    if queue_left:
        broken.append(f"{queue_left} messages left in the queue")

    # A redriven event's latency is the incident's, not the pipeline's: left out.
    latencies = sorted(
        at - published_at[cid] for cid, at in first.items() if cid in published_at and cid not in redriven
    )
    share, saturated = goodput(samples, rate_limit, saturation_backlog)
    return Verdict(
        delivered=len(first),
        delivered_twice=twice,
        missing=len(missing),
        unexpected=len(unexpected),
        order_violations=violations,
        reordered_at_source=reordered,
        reordered_repaired=repaired,
        dead_letters=reasons,
        latency_p50=percentile(latencies, 0.50),
        latency_p99=percentile(latencies, 0.99),
        goodput_share=share,
        saturated_seconds=saturated,
        broken=tuple(broken),
        redriven=len(redriven & first.keys()),
    )


def order_check(
    accepted_order: Sequence[str], events: Mapping[str, traffic.TrafficEvent]
) -> tuple[int, int, int]:
    """(violations, pairs the source reordered, of those the ones delivered in event order).

    For every pair of one key accepted as (a, b): a violation when b is earlier than a both
    in event time and in publication; a source reordering when the two orders disagree.
    """
    by_key: dict[str, list[traffic.TrafficEvent]] = {}
    for correlation_id in accepted_order:
        event = events[correlation_id]
        by_key.setdefault(event.key, []).append(event)
    violations = reordered = repaired = 0
    for group in by_key.values():
        for index, later in enumerate(group):
            for earlier in group[:index]:  # `earlier` was accepted before `later`
                time_says_later_first = later.event_time_ms < earlier.event_time_ms
                source_says_later_first = later.sequence < earlier.sequence
                if time_says_later_first and source_says_later_first:
                    violations += 1
                elif time_says_later_first != source_says_later_first:
                    reordered += 1
                    repaired += not time_says_later_first
    return violations, reordered, repaired


def percentile(values: Sequence[float], share: float) -> float | None:
    """Nearest-rank percentile of sorted ``values``."""
    if not values:
        return None
    rank = max(1, math.ceil(share * len(values)))
    return values[rank - 1]


def goodput(samples: Sequence[Sample], rate_limit: float | None, backlog: int) -> tuple[float | None, float]:
    """(successful requests per second / limit over the saturated intervals, their seconds).

    An interval counts as saturated when the downstream's grant was what limited the
    consumer: it had at least ``backlog`` messages waiting at both ends, and its requests
    waited for its rate limit for at least :data:`SATURATED_SHARE` of the interval. A backlog
    alone does not say that: a SIEM consumer whose batches are capped by its concurrency
    (eight events in the sink at once, a dozen requests per second) holds a backlog while
    its downstream, which would take twenty requests of fifty events each per second, idles;
    counted as saturated it read 0.26 of "the limit". An interval touching an outage does
    not count either: the downstream granted nothing then.
    """
    if rate_limit is None:
        return None, 0.0
    seconds = 0.0
    requests = 0
    for before, after in itertools.pairwise(samples):
        if before.outage or after.outage:
            continue
        bound = after.rate_bound_seconds - before.rate_bound_seconds
        if (
            before.backlog >= backlog
            and after.backlog >= backlog
            and bound >= SATURATED_SHARE * (after.at - before.at)
        ):
            seconds += after.at - before.at
            requests += after.requests_ok - before.requests_ok
    if seconds < 1.0:
        return None, seconds
    return requests / seconds / rate_limit, seconds
