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
* FIFO queues: a lane is a message group and runs in ``order`` — the caller passes the
  message's ``SentTimestamp`` and, as ``suborder``, its ``SequenceNumber`` (SQS's own
  order within a group, which agrees with the send time; the send time comes first because
  an SQS double, moto, draws its sequence numbers at random) — so receives that hand a
  group's messages over out of order (two pollers, a second SQS implementation) still
  deliver them in the group's order.
  SQS implementations read the group lock differently (real SQS locks a group while any
  of its messages is in flight; LocalStack serves a group's visible messages while an
  earlier one is invisible after a visibility change; moto serves the *last* of several
  re-visible messages of a group first), so order here rests on none of them:

  - a failed message ends its lane's run: the pending messages leave the lane (the caller
    returns them to the queue at once) and the lane waits for the failed message, like a
    standard lane, for at most its hold;
  - until the failed message is *due* (its retry delay), a later message of the group that
    arrives is refused: :meth:`Lanes.add` returns the seconds until the failed one is due
    and the caller returns the message invisible until just after that;
  - after that, arrivals wait in the lane for the failed message, which goes first;
  - a message SQS delivered before, alone of its group in its receive (``redelivered``),
    that arrives at a lane with nothing of its group in hand may have predecessors still
    invisible (a crashed replica's, or an implementation that serves the group's last
    message first): it is refused once (``add`` returns 0: return it at once) so the group
    is read again, in order.
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
    order: tuple[float, int, int]
    """(order, suborder, arrival)."""
    item: T = dataclasses.field(compare=False)
    identities: frozenset[Hashable] = dataclasses.field(compare=False)


@dataclasses.dataclass
class _Lane(Generic[T]):
    pending: list[_Pending[T]] = dataclasses.field(default_factory=list)  # a heap
    running: bool = False
    blocked_by: frozenset[Hashable] = frozenset()
    blocked_until: float | None = None
    refuse_until: float | None = None
    """FIFO: until then (the failed message is due) later arrivals are refused."""

    @property
    def idle(self) -> bool:
        return not self.pending and not self.running and not self.blocked_by


REREAD_MEMORY = 10_000
"""Redelivered FIFO messages remembered as already refused once (oldest forgotten first)."""


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
        self._reread: dict[Hashable, None] = {}  # FIFO: identities refused once (insertion-ordered)

    # -- feeding ---------------------------------------------------------------------------

    def add(
        self,
        key: Hashable,
        item: T,
        *,
        identities: frozenset[Hashable],
        order: float,
        now: float,
        suborder: int = 0,
        redelivered: bool = False,
    ) -> float | None:
        """Hold ``item`` in the lane of ``key``, or refuse it (FIFO only).

        None: held. A number: refused — return ``item`` to the queue, invisible until
        that many seconds from ``now`` (0: at once); see the module doc.

        ``identities`` name the message (its SQS message id and event id) so that a
        blocked lane recognises its failed message when it comes back. ``order`` is the
        event time on standard queues and the send time on FIFO queues, ``suborder`` the
        ``SequenceNumber`` (ties keep arrival order). ``redelivered``: SQS says it
        delivered this message before (``ApproximateReceiveCount`` > 1) and it is the
        only one of its group in its receive.
        """
        lane = self._lanes.get(key)
        if lane is None:
            lane = self._lanes[key] = _Lane()
        position, secondary = order, suborder
        if lane.blocked_by and identities & lane.blocked_by:
            # The failed message is back: it goes first and the lane is free again.
            position, secondary = float("-inf"), 0
            lane.blocked_by, lane.blocked_until, lane.refuse_until = frozenset(), None, None
        elif self.fifo:
            refusal = self._fifo_refusal(lane, identities, now, redelivered)
            if refusal is not None:
                self._forget_if_idle(key, lane)
                return refusal
        heapq.heappush(lane.pending, _Pending((position, secondary, next(self._seq)), item, identities))
        self._mark_if_ready(key, lane, now)
        return None

    def _fifo_refusal(
        self, lane: _Lane[T], identities: frozenset[Hashable], now: float, redelivered: bool
    ) -> float | None:
        if lane.refuse_until is not None:
            if lane.refuse_until > now:
                return lane.refuse_until - now
            lane.refuse_until = None
        if redelivered and lane.idle and not any(identity in self._reread for identity in identities):
            for identity in identities:
                self._reread[identity] = None
            while len(self._reread) > REREAD_MEMORY:
                del self._reread[next(iter(self._reread))]
            return 0.0
        return None

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
        due_seconds: float | None = None,
    ) -> list[T]:
        """Record how the running message of ``key`` ended.

        ``hold_seconds`` bounds how long a failure blocks the lane (never beyond the hold
        limit): the caller knows when the failed message is due back. ``due_seconds``
        (FIFO): when it is due, the end of the window in which later arrivals are refused.
        Returns the messages that must go back to the queue at once (FIFO failure), in
        group order, which leave the lane.
        """
        lane = self._lanes[key]
        lane.running = False
        released: list[T] = []
        if result is Result.FAILED:
            hold = self.hold_limit_seconds if hold_seconds is None else hold_seconds
            lane.blocked_by = identities
            lane.blocked_until = now + min(hold, self.hold_limit_seconds)
            if self.fifo:
                released = [entry.item for entry in sorted(lane.pending)]
                lane.pending.clear()
                if due_seconds:
                    lane.refuse_until = now + min(due_seconds, self.hold_limit_seconds)
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
            lane.blocked_by, lane.blocked_until, lane.refuse_until = frozenset(), None, None
        if lane.pending and not lane.running and not lane.blocked_by:
            self._ready[key] = None

    def _unblock_expired(self, now: float) -> None:
        for key, lane in list(self._lanes.items()):
            if lane.blocked_until is not None and lane.blocked_until <= now:
                self._mark_if_ready(key, lane, now)
                self._forget_if_idle(key, lane)

    def _forget_if_idle(self, key: Hashable, lane: _Lane[T]) -> None:
        if lane.idle:
            self._lanes.pop(key, None)
