"""Per-key lanes: which held message may be delivered next. Pure: no I/O, time passed in.

``processing`` adds every decoded message to the lane of its ordering key and asks
:meth:`Lanes.start_ready` which messages may start; when a delivery ends it reports
how it finished with :meth:`Lanes.finish`. The rules, in one place:

* One message per lane at a time: two events of one conversation are never in the
  sink together. Different lanes run in parallel (the caller caps how many).
* Standard queues: a lane starts its pending messages in ``order`` (event time, then
  arrival). A failed (retried) message *blocks* its lane: later arrivals are held
  until the failed message comes back (same message id or event id — it then takes its
  event-time place among them: an earlier event that came meanwhile goes before it) or
  until it is *overdue*, whichever is first. Overdue means two things: the
  time it is due back plus a grace has passed, and the worker has since had its chance
  to receive it — ``receives_to_overdue`` receives that began after it was due came
  back short without it (:meth:`Lanes.received`; a full receive says nothing of a
  message waiting behind a backlog). With several replicas a retried message
  often comes back to another replica, and the lane must not wait for it longer than it
  can plausibly take to come back here; but a worker that is not receiving (its
  in-flight budget full of slow deliveries, a loaded machine, a slow SQS) has not had
  that chance, and time alone would let a later event pass the failed one. Two escapes
  keep a lane from waiting on receives that cannot come: the hold limit, and a *stalled*
  worker (the caller says so: nothing runs, nothing can start and no receive can begin,
  every place in hand taken by blocked lanes), where time alone decides again. Dead-
  lettered messages do not block.
* FIFO queues: a lane is a message group and runs in ``order`` — the caller passes the
  message's ``SentTimestamp`` and, as ``suborder``, its ``SequenceNumber`` (SQS's own
  order within a group, which agrees with the send time; the send time comes first
  because an SQS double, moto, draws its sequence numbers at random) — so receives that
  hand a group's messages over out of order still deliver them in the group's order.

  SQS implementations read the group lock differently: real SQS locks a group while any
  of its messages is in flight; LocalStack serves a group's visible messages while an
  earlier one is invisible after a visibility change; moto serves the *last* of several
  re-visible messages of a group first, can hand a locked group to a second concurrent
  long poll, and keeps a group locked while any of its messages is in flight with us.
  Order here rests on none of them. A FIFO lane keeps the messages of its group that it
  gave back to the queue and expects to see again — *expected* messages — and never
  starts a message that comes after one of them:

  - a failed message ends its lane's run: it is expected back (for its hold), and the
    pending messages leave the lane (the caller returns them to the queue at once) and
    are expected back too;
  - until the failed message is *due* (its retry delay), a message of the group that
    arrives — unexpected, or one of those just handed back (LocalStack serves them at once)
    — is refused: :meth:`Lanes.add` returns the seconds until the failed one is due, and
    the caller returns it invisible until just after that;
  - a message SQS delivered before (``redelivered``) that arrives at a lane with nothing
    of its group in hand may have predecessors still invisible (a crashed replica's, or
    a double that serves a group's tail first): it is refused (``add`` returns 0: return
    it at once) so the group is read again, in order;
  - a message that arrives while earlier ones are expected is refused too: held in flight,
    it would keep a double's group lock closed against them. At once the first time (moto
    reads a group again only once nothing of it is in flight), then after 1 s and 2 s
    (LocalStack serves a message sent back at once straight back); after
    :data:`MAX_REFUSALS` it is held in the lane and waits, so no message goes back and
    forth for long (each receive counts toward the queue's redrive policy). Refusals until
    a failed message is due happen once per failure, and failures are attempts, so they
    are bounded too;
  - a refused message is expected back for ``reread_hold_seconds`` after its delay, and
    for as long after the lane's last activity (while the lane holds messages of its group,
    SQS serves none of the others); an expectation that runs out (the message went to
    another replica) stops holding the lane up;
  - a message accepted into a lane with nothing running waits a moment before it starts
    (``settle_seconds``; ``redelivered_settle_seconds`` for a redelivered one), so a
    message of its group that a concurrent receive brought sorts in front of it: moto
    hands a group's messages to two concurrent long polls tens of milliseconds apart. The
    caller sets ``settle_seconds`` to 0 with a single poller (real SQS never does this).

Items are opaque to this module (the caller's message records); it only reads the
identifiers passed beside them.

Cost: starting and finishing a message touch its own lane only. The lanes that wait for a
time (a hold, a settle, an expectation) are indexed apart, so the look for expired waits
at each start and the dispatcher's next wake-up scan those, not every lane in hand (with
``queue.maxInFlight`` messages of as many conversations held, a scan of all of them cost
more per delivery than the delivery's own bookkeeping).
"""

from __future__ import annotations

import dataclasses
import enum
import heapq
import itertools
import math
from collections.abc import Hashable, Iterator
from typing import Generic, TypeVar

from workers import retrying

T = TypeVar("T")

Order = tuple[float, int]
"""(order, suborder): event time on standard queues; send time and sequence number on FIFO."""

REFUSAL_MEMORY = 10_000
"""FIFO messages remembered with how often they were sent back (the oldest forgotten first)."""
MAX_REFUSALS = 3
"""How often a FIFO message may be sent back because earlier ones are expected; then it waits."""


class Finish(enum.Enum):
    """How a started message finished, as far as its lane is concerned."""

    DONE = "done"  # delivered, filtered out or a duplicate: the lane moves on
    FAILED = "failed"  # will come back later (retry): the lane blocks (standard) or expects it (FIFO)
    DEAD = "dead"  # dead-lettered or given up: the lane moves on


@dataclasses.dataclass(order=True)
class _Pending(Generic[T]):
    order: tuple[float, int, int]
    """(order, suborder, arrival)."""
    item: T = dataclasses.field(compare=False)
    identities: frozenset[Hashable] = dataclasses.field(compare=False)


@dataclasses.dataclass(frozen=True, slots=True)
class _Expected:
    """A FIFO message the lane gave back and waits to see again."""

    order: Order
    until: float


@dataclasses.dataclass
class _Lane(Generic[T]):
    pending: list[_Pending[T]] = dataclasses.field(default_factory=list)  # a heap
    running: bool = False
    # standard queues: the failed message the lane waits for; when it is overdue by time
    # (due back plus a grace); when it is due back; how many receives that began after
    # that came back without it; and when the wait ends whatever happened (the hold limit)
    blocked_by: frozenset[Hashable] = frozenset()
    blocked_until: float | None = None
    blocked_due: float = 0.0
    blocked_receives: int = 0
    blocked_cap: float = math.inf
    # FIFO queues
    expected: dict[frozenset[Hashable], _Expected] = dataclasses.field(default_factory=dict)
    refuse_until: float | None = None
    """Until then (the failed message is due) unexpected arrivals are refused, invisible."""
    settle_until: float | None = None

    def prune(self, now: float, *, receives_to_overdue: int = 0, stalled: bool = False) -> None:
        if self.blocked_until is not None and (
            self.blocked_cap <= now
            or (self.blocked_until <= now and (stalled or self.blocked_receives >= receives_to_overdue))
        ):
            self.unblock()
        if self.refuse_until is not None and self.refuse_until <= now:
            self.refuse_until = None
        if self.settle_until is not None and self.settle_until <= now:
            self.settle_until = None
        if self.expected:
            for name, entry in list(self.expected.items()):
                if entry.until <= now:
                    del self.expected[name]

    def unblock(self) -> None:
        self.blocked_by, self.blocked_until = frozenset(), None
        self.blocked_due, self.blocked_receives, self.blocked_cap = 0.0, 0, math.inf

    def keep_expecting(self, until: float) -> None:
        """While the lane holds messages of its group in flight, SQS serves none of the
        expected ones: their expectations must not run out meanwhile."""
        for name, entry in self.expected.items():
            if entry.until < until:
                self.expected[name] = _Expected(entry.order, until)

    def first_expected(self) -> Order | None:
        return min((entry.order for entry in self.expected.values()), default=None)

    def may_start(self) -> bool:
        """Whether the head of ``pending`` may start now (call :meth:`prune` first)."""
        if not self.pending or self.running or self.blocked_by or self.settle_until is not None:
            return False
        first = self.first_expected()
        return first is None or self.pending[0].order[:2] < first

    @property
    def waits(self) -> bool:
        """Whether the lane waits for a time: a hold, a settle or an expectation (cheap:
        :class:`Lanes` asks after every change)."""
        return self.blocked_until is not None or self.settle_until is not None or bool(self.expected)

    def deadline(self, *, receives_to_overdue: int = 0, stalled: bool = False) -> float | None:
        """When waiting may end by itself: a hold, a settle or an expectation runs out. A hold
        still waiting for receives ends by time only at its cap (a receive wakes the caller)."""
        if not self.waits:
            return None
        hold = self.blocked_until
        if hold is not None and not stalled and self.blocked_receives < receives_to_overdue:
            hold = self.blocked_cap
        times = [hold, self.settle_until, *(entry.until for entry in self.expected.values())]
        return min((moment for moment in times if moment is not None), default=None)

    @property
    def idle(self) -> bool:
        return not (self.pending or self.running or self.blocked_by or self.expected or self.refuse_until)


@dataclasses.dataclass(frozen=True)
class Started(Generic[T]):
    key: Hashable
    item: T


class Lanes(Generic[T]):
    """The lanes of one worker."""

    def __init__(
        self,
        *,
        fifo: bool,
        hold_limit_seconds: float,
        reread_hold_seconds: float = 10.0,
        settle_seconds: float = 0.0,
        redelivered_settle_seconds: float = 0.5,
        receives_to_overdue: int = 0,
    ) -> None:
        """``receives_to_overdue`` (standard queues): receives, begun after a failed message
        was due back, that must come back without it before its lane moves on; the caller
        reports them with :meth:`received`. 0: the hold's time alone decides."""
        self.fifo = fifo
        self.hold_limit_seconds = hold_limit_seconds
        self.receives_to_overdue = receives_to_overdue
        self._stalled = False
        self.reread_hold_seconds = min(reread_hold_seconds, hold_limit_seconds)
        self.settle_seconds = settle_seconds
        self.redelivered_settle_seconds = max(settle_seconds, redelivered_settle_seconds)
        self._lanes: dict[Hashable, _Lane[T]] = {}
        self._ready: dict[Hashable, None] = {}  # insertion-ordered set: fair round robin
        self._timed: dict[Hashable, None] = {}  # the lanes with a deadline, in the order they got one
        self._seq = itertools.count()
        self._refused: dict[Hashable, int] = {}  # FIFO: identity -> times sent back, oldest first

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

        ``identities`` name the message (its SQS message id and event id) so that a lane
        recognises a message it waits for when it comes back. ``order`` is the event time
        on standard queues and the send time on FIFO queues, ``suborder`` the
        ``SequenceNumber`` (ties keep arrival order). ``redelivered``: SQS says it
        delivered this message before (``ApproximateReceiveCount`` > 1).
        """
        lane = self._lanes.get(key)
        if lane is None:
            lane = self._lanes[key] = _Lane()
        position: Order = (order, suborder)
        if lane.blocked_by and identities & lane.blocked_by:
            # The failed message is back (even as its hold ends): the lane is free, and the
            # message takes its event-time place — behind an earlier event of the key that
            # arrived while it was away (a standard queue hands events over in any order).
            lane.unblock()
        self._prune(lane, now)
        if self.fifo:
            refusal = self._fifo_admission(lane, identities, position, now, redelivered)
            if refusal is not None:
                self._index(key, lane)
                self._forget_if_idle(key, lane)
                return refusal
            settle = self.redelivered_settle_seconds if redelivered else self.settle_seconds
            if settle > 0 and not lane.running and not lane.pending:
                # Let a message of its group that a concurrent receive holds sort in first.
                lane.settle_until = max(lane.settle_until or now, now + settle)
        heapq.heappush(lane.pending, _Pending((*position, next(self._seq)), item, identities))
        lane.keep_expecting(now + self.reread_hold_seconds)
        self._mark_if_ready(key, lane)
        return None

    def _fifo_admission(
        self, lane: _Lane[T], identities: frozenset[Hashable], order: Order, now: float, redelivered: bool
    ) -> float | None:
        """None to hold the message; else refuse it, invisible for the seconds returned."""
        back = [name for name in lane.expected if name & identities]
        failed_one = any(lane.expected[name].order[0] == -math.inf for name in back)
        first = lane.first_expected()
        if lane.refuse_until is not None and not failed_one:
            # Before the failed message is due, even its group-mates handed back go back again
            # (held in flight, they would keep the group locked against it). Bounded: once
            # per failure, and each failure is an attempt.
            delay = lane.refuse_until - now
        elif back:
            for name in back:
                del lane.expected[name]
            return None  # expected back: it takes its place
        elif (first is not None and first < order) or (redelivered and lane.idle):
            refusals = max((self._refused.get(identity, 0) for identity in identities), default=0)
            if refusals >= MAX_REFUSALS:
                return None  # sent back often enough: it waits in the lane now
            # At once the first time (moto re-reads a group only once nothing of it is in
            # flight); then a little later (LocalStack serves it straight back otherwise).
            delay = 0.0 if refusals == 0 else retrying.exponential_delay(refusals, base=1.0, cap=60.0)
            for identity in identities:
                self._refused.pop(identity, None)
                self._refused[identity] = refusals + 1
            while len(self._refused) > REFUSAL_MEMORY:
                del self._refused[next(iter(self._refused))]
        else:
            return None
        for name in back:
            del lane.expected[name]
        lane.expected[identities] = _Expected(order, now + delay + self.reread_hold_seconds)
        return delay

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
        finish: Finish,
        *,
        identities: frozenset[Hashable],
        now: float,
        hold_seconds: float | None = None,
        due_seconds: float | None = None,
    ) -> list[T]:
        """Record how the running message of ``key`` ended.

        ``hold_seconds`` bounds how long a failure holds the lane (never beyond the hold
        limit): the caller knows when the failed message is due back. ``due_seconds``
        (FIFO): when it is due, the end of the window in which unexpected arrivals are
        refused. Returns the messages that must go back to the queue at once (FIFO
        failure), in group order, which leave the lane.
        """
        lane = self._lanes[key]
        lane.running = False
        self._prune(lane, now)
        lane.keep_expecting(now + self.reread_hold_seconds)
        released: list[T] = []
        if finish is Finish.FAILED:
            until = now + min(
                self.hold_limit_seconds if hold_seconds is None else hold_seconds, self.hold_limit_seconds
            )
            if self.fifo:
                ordered = sorted(lane.pending)
                lane.pending.clear()
                # The failed message was the head of its group: nothing may pass it.
                lane.expected[identities] = _Expected((-math.inf, 0), until)
                for entry in ordered:
                    lane.expected[entry.identities] = _Expected(
                        entry.order[:2], now + self.reread_hold_seconds
                    )
                released = [entry.item for entry in ordered]
                if due_seconds:
                    lane.refuse_until = now + min(due_seconds, self.hold_limit_seconds)
            else:
                lane.blocked_by, lane.blocked_until = identities, until
                lane.blocked_due = now + (due_seconds or 0.0)
                lane.blocked_receives = 0
                lane.blocked_cap = now + self.hold_limit_seconds
        self._mark_if_ready(key, lane)
        self._forget_if_idle(key, lane)
        return released

    def received(self, began: float, now: float, *, full: bool = False) -> bool:
        """A receive that began at ``began`` came back short (fewer messages than it asked
        for, even none): each failed message due back by then has had one more chance to come
        back here. Whether any had (a lane's wait may have ended). A ``full`` receive proves
        nothing: the queue had more to give, and a message visible again may wait behind a
        backlog (LocalStack puts it at the back; SQS promises no order)."""
        if full:
            return False
        counted = False
        for key in list(self._timed):
            lane = self._lanes[key]
            if lane.blocked_by and lane.blocked_due <= began:
                counted = True
                lane.blocked_receives += 1
                self._prune(lane, now)
                self._mark_if_ready(key, lane)
                self._forget_if_idle(key, lane)
        return counted

    def set_stalled(self, stalled: bool, now: float) -> None:
        """The caller's word on whether the worker is stalled: nothing runs, nothing can start
        and no receive can begin. While it is, a failed message's hold ends by time alone."""
        if stalled == self._stalled:
            return
        self._stalled = stalled
        if stalled:
            self._unblock_expired(now)

    def next_deadline(self) -> float | None:
        """The earliest time a waiting lane with pending messages may start by itself."""
        deadlines = [
            deadline
            for key in self._timed
            if (lane := self._lanes[key]).pending
            and not lane.running
            and (deadline := self._deadline(lane)) is not None
        ]
        return min(deadlines, default=None)

    @property
    def waiting_count(self) -> int:
        """Messages held in lanes, not started."""
        return sum(len(lane.pending) for lane in self._lanes.values())

    @property
    def startable(self) -> bool:
        """Whether some lane may start a message now."""
        return bool(self._ready)

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

    def awaits(self, key: Hashable, identities: frozenset[Hashable]) -> bool:
        """Whether the lane of ``key`` waits for this message (failed, given back or refused):
        a caller taking in a whole receive hands such messages over first, so the rest of
        their group in the same receive finds them in the lane and sorts in around them."""
        lane = self._lanes.get(key)
        if lane is None:
            return False
        return bool(identities & lane.blocked_by) or any(name & identities for name in lane.expected)

    def blocked_count(self) -> int:
        """Messages held in lanes that wait for a message that is away (failed, given back
        or refused): they cannot start before it is back, whatever the sink can send."""
        # A lane that waits for a message away waits for a time too: only ``_timed`` can hold it.
        return sum(
            len(lane.pending) for key in self._timed if (lane := self._lanes[key]).blocked_by or lane.expected
        )

    def is_blocked(self, key: Hashable) -> bool:
        lane = self._lanes.get(key)
        return bool(lane and (lane.blocked_by or lane.expected))

    @property
    def running_count(self) -> int:
        return sum(1 for lane in self._lanes.values() if lane.running)

    def __len__(self) -> int:
        """Lanes holding or running something (or waiting for a message to come back)."""
        return len(self._lanes)

    # -- internals -------------------------------------------------------------------------

    def _mark_if_ready(self, key: Hashable, lane: _Lane[T]) -> None:
        if lane.may_start():
            self._ready[key] = None
        else:
            self._ready.pop(key, None)
        self._index(key, lane)

    def _index(self, key: Hashable, lane: _Lane[T]) -> None:
        """Keep ``_timed`` exact: called after every change to a lane's waits (a lane's
        deadline only moves when ``add``, ``finish`` or a prune changes it)."""
        if lane.waits:
            self._timed[key] = None
        else:
            self._timed.pop(key, None)

    def _prune(self, lane: _Lane[T], now: float) -> None:
        lane.prune(now, receives_to_overdue=self.receives_to_overdue, stalled=self._stalled)

    def _deadline(self, lane: _Lane[T]) -> float | None:
        return lane.deadline(receives_to_overdue=self.receives_to_overdue, stalled=self._stalled)

    def _unblock_expired(self, now: float) -> None:
        for key in list(self._timed):
            lane = self._lanes[key]
            deadline = self._deadline(lane)
            if deadline is not None and deadline <= now:
                self._prune(lane, now)
                self._mark_if_ready(key, lane)
                self._forget_if_idle(key, lane)

    def _forget_if_idle(self, key: Hashable, lane: _Lane[T]) -> None:
        if lane.idle:
            self._lanes.pop(key, None)
            self._ready.pop(key, None)
            self._timed.pop(key, None)
