"""Per-key lanes: which held message may be delivered next. Pure: no I/O, time passed in.

``processing`` adds every decoded message to the lane of its ordering key and asks
:meth:`Lanes.start_ready` which messages may start; when a delivery ends it reports
the result with :meth:`Lanes.finish`. The rules, in one place:

* One message per lane at a time: two events of one conversation are never in the
  sink together. Different lanes run in parallel (the caller caps how many).
* Standard queues: a lane starts its pending messages in ``order`` (event time, then
  arrival). A failed (retried) message *blocks* its lane: later arrivals are held
  until the failed message comes back (same message id or event id — it then goes
  first) or until its hold passes, whichever is first: the hold is the time the
  message is due back plus a grace, capped by the hold limit. With several replicas
  a retried message often comes back to another replica; the lane must not wait for
  it longer than it can plausibly take to come back here. Dead-lettered messages do
  not block.
* FIFO queues: a lane is a message group and runs in arrival order. A failed message
  ends the lane: its pending messages are handed back to be returned to the queue, so
  SQS redelivers the group in order after the failed one.

Items are opaque to this module (the caller's message records); it only reads the
identifiers passed beside them.
"""

from __future__ import annotations

import dataclasses
import enum
import heapq
import itertools
from collections.abc import Hashable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class Result(enum.Enum):
    """How a started message ended, as far as its lane is concerned."""

    DONE = "done"  # delivered, filtered out or a duplicate: the lane moves on
    FAILED = "failed"  # will come back later (retry): the lane blocks (standard) or ends (FIFO)
    DEAD = "dead"  # dead-lettered or given up: the lane moves on


@dataclasses.dataclass(order=True)
class _Pending(Generic[T]):
    order: tuple[float, int]
    item: T = dataclasses.field(compare=False)
    identities: frozenset[Hashable] = dataclasses.field(compare=False)


@dataclasses.dataclass
class _Lane(Generic[T]):
    pending: list[_Pending[T]] = dataclasses.field(default_factory=list)  # a heap
    running: bool = False
    blocked_by: frozenset[Hashable] = frozenset()
    blocked_until: float | None = None


@dataclasses.dataclass(frozen=True)
class Started(Generic[T]):
    key: Hashable
    item: T


class Lanes(Generic[T]):
    """The lanes of one worker."""

    def __init__(self, *, fifo: bool, hold_limit_seconds: float) -> None:
        self.fifo = fifo
        self.hold_limit_seconds = hold_limit_seconds
        self._lanes: dict[Hashable, _Lane[T]] = {}
        self._ready: dict[Hashable, None] = {}  # insertion-ordered set: fair round robin
        self._seq = itertools.count()

    # -- feeding ---------------------------------------------------------------------------

    def add(
        self,
        key: Hashable,
        item: T,
        *,
        identities: frozenset[Hashable],
        order: float,
        now: float,
    ) -> None:
        """Hold ``item`` in the lane of ``key``.

        ``identities`` name the message (its SQS message id and event id) so that a
        blocked lane recognises its failed message when it comes back. ``order`` is the
        event time on standard queues (ignored on FIFO queues, which keep arrival order).
        """
        lane = self._lanes.setdefault(key, _Lane())
        position = float(next(self._seq)) if self.fifo else order
        if lane.blocked_by and identities & lane.blocked_by:
            # The failed message is back: it goes first and the lane is free again.
            position = float("-inf")
            lane.blocked_by, lane.blocked_until = frozenset(), None
        heapq.heappush(lane.pending, _Pending((position, next(self._seq)), item, identities))
        self._mark_if_ready(key, lane, now)

    # -- scheduling ------------------------------------------------------------------------

    def start_ready(self, now: float, limit: int) -> list[Started[T]]:
        """Start up to ``limit`` messages, one per free lane, oldest-ready lane first."""
        self._unblock_expired(now)
        started: list[Started[T]] = []
        for key in list(self._ready):
            if len(started) >= limit:
                break
            del self._ready[key]
            lane = self._lanes[key]
            entry = heapq.heappop(lane.pending)
            lane.running = True
            started.append(Started(key, entry.item))
        return started

    def finish(
        self,
        key: Hashable,
        result: Result,
        *,
        identities: frozenset[Hashable],
        now: float,
        hold_seconds: float | None = None,
    ) -> list[T]:
        """Record how the running message of ``key`` ended.

        ``hold_seconds`` bounds how long a failure blocks a standard lane (never beyond the
        hold limit): the caller knows when the failed message is due back.
        Returns the messages that must go back to the queue now (FIFO failure),
        which leave the lane.
        """
        lane = self._lanes[key]
        lane.running = False
        released: list[T] = []
        if result is Result.FAILED:
            if self.fifo:
                released = [entry.item for entry in sorted(lane.pending)]
                lane.pending.clear()
            else:
                hold = self.hold_limit_seconds if hold_seconds is None else hold_seconds
                lane.blocked_by = identities
                lane.blocked_until = now + min(hold, self.hold_limit_seconds)
        self._mark_if_ready(key, lane, now)
        self._forget_if_idle(key, lane)
        return released

    def next_deadline(self) -> float | None:
        """The earliest time a blocked lane with pending messages gives up waiting."""
        deadlines = [
            lane.blocked_until
            for lane in self._lanes.values()
            if lane.blocked_until is not None and lane.pending and not lane.running
        ]
        return min(deadlines, default=None)

    # -- draining and inspection -----------------------------------------------------------

    def take_pending(self) -> list[T]:
        """Remove and return every message not started yet (shutdown)."""
        items: list[T] = []
        for key, lane in list(self._lanes.items()):
            items.extend(entry.item for entry in sorted(lane.pending))
            lane.pending.clear()
            self._ready.pop(key, None)
            self._forget_if_idle(key, lane)
        return items

    def pending_items(self) -> Iterator[T]:
        for lane in self._lanes.values():
            for entry in lane.pending:
                yield entry.item

    def blocked_count(self) -> int:
        """Messages held in lanes that wait for a failed message to come back."""
        return sum(len(lane.pending) for lane in self._lanes.values() if lane.blocked_by)

    def is_blocked(self, key: Hashable) -> bool:
        lane = self._lanes.get(key)
        return bool(lane and lane.blocked_by)

    @property
    def running_count(self) -> int:
        return sum(1 for lane in self._lanes.values() if lane.running)

    def __len__(self) -> int:
        """Lanes holding or running something (or blocked, waiting for a failed message)."""
        return len(self._lanes)

    # -- internals -------------------------------------------------------------------------

    def _mark_if_ready(self, key: Hashable, lane: _Lane[T], now: float) -> None:
        if lane.blocked_until is not None and lane.blocked_until <= now:
            lane.blocked_by, lane.blocked_until = frozenset(), None
        if lane.pending and not lane.running and not lane.blocked_by:
            self._ready[key] = None

    def _unblock_expired(self, now: float) -> None:
        for key, lane in list(self._lanes.items()):
            if lane.blocked_until is not None and lane.blocked_until <= now:
                self._mark_if_ready(key, lane, now)
                self._forget_if_idle(key, lane)

    def _forget_if_idle(self, key: Hashable, lane: _Lane[T]) -> None:
        if not lane.pending and not lane.running and not lane.blocked_by:
            del self._lanes[key]
