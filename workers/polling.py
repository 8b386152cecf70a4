"""The long-poll loop: receive only what we can finish, only while the sink takes work.

``running`` starts ``spec.queue.pollers`` :class:`Poller` tasks sharing one
:class:`Budget`. Before each ``ReceiveMessage`` a poller

1. waits while the sink is not accepting (paused by Retry-After, circuit open): the
   messages wait in SQS, where they are safe, instead of in our memory;
2. reserves room in the in-flight budget (received, not yet settled) and asks for no
   more than that, so the worker never holds more than it can send soon;
3. after a receive that came back short (the queue is about empty), rests a moment while
   another poller waits on the queue (:class:`Turns`): fuller receives, fewer calls.

The budget follows what the sink can send (:func:`budget_target`): about
``HORIZON_SECONDS`` of its capacity — its slice of the fleet's rate, or what its
concurrency allows at the answers' latency, whichever is less — plus what waits in
lanes for a message that is away, never more than ``queue.maxInFlight``, which is an upper
bound, not a setting to get right. A replica that held ``maxInFlight`` messages its
limiter would let it send over many seconds kept them from the replicas with room to send
them: in ``bench/fleet.py`` three replicas holding 200 each used 0.52 of the grant. The
slice is the fleet's rate divided by the replica count, not the replica's current pace:
what a replica holds is what its share of the fleet's rate is measured by
(:mod:`workers.fleet`), and a budget that followed the pace would feed the share back into
itself (with reads a second late the shares swung and the fleet was refused a tenth of its
requests, in ``tests/test_pacing.py``'s fleet).

Messages whose body is an S3 pointer (an event too large for SQS) are resolved first
(``payloads``), so the processor takes in the real event. Received messages are tracked by
the settler (which heartbeats them and frees their budget when they are settled) and handed
to the processor. An empty receive costs the long poll only. Receive errors never end the
loop: they mark the worker unready and back off.

When S3 cannot serve a pointer's object now (``payloads.PayloadUnavailable``: throttled,
unavailable, access denied), the message waits:

* standard queue: it goes back to the queue after a backoff; the rest of the receive is
  taken in (a standard queue promises no order across receives; the lanes put a
  conversation in event-time order as far as they can see it);
* FIFO queue: the message and the later messages of its group from the same receive stay
  in our hands (heartbeated) and the read is retried in place, for up to
  :data:`_IN_PLACE_LIMIT_SECONDS`; then they are taken in together, in group order. No
  schedule of handing a group back keeps it in order on every SQS reading (moto serves the
  last of several re-visible messages of a group first, LocalStack serves a group's visible
  messages while its head is invisible); a group kept in flight is in order on all of them.
  Only past the limit does the group go back: the head after a backoff, the rest a second
  later.

On shutdown (:meth:`Poller.stop`) a receive under way is let finish, for up to
``STOP_WAIT_SECONDS``, and what it brings goes straight back to the queue: cancelled, it
would still have taken its messages out of the queue for a whole visibility timeout
(60 s by default), unseen — the tail of a backlog waited for them after every SIGTERM
in ``bench/fleet_changes.py``. A receive still under way after that is a long poll on an
empty queue, and is cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

from fanout_core import spec as spec_model
from workers import messages, payloads, retrying, sqs, telemetry
from workers.sinks import base

log = logging.getLogger(__name__)

_MAX_ERROR_BACKOFF = 30.0
_PAYLOAD_RETRY_SECONDS = 10.0
_MAX_PAYLOAD_RETRY_SECONDS = 300.0
_IN_PLACE_LIMIT_SECONDS = 60.0
"""FIFO: how long a group whose large payload S3 cannot serve waits in our hands."""
_IN_PLACE_BASE_SECONDS = 1.0
_IN_PLACE_CAP_SECONDS = 15.0
HORIZON_SECONDS = 1.0
"""How much of the sink's capacity a replica holds: received messages wait at most about
this long for their turn (plus the SQS round trip)."""
_RECHECK_SECONDS = 0.1
"""While full, how often a poller looks whether the target grew (the sink sped up)."""
STOP_WAIT_SECONDS = 2.0
"""On shutdown, how long a receive under way may still take (SQS answers at once when it
has messages; one that takes longer was waiting on an empty queue)."""


def budget_target(capacity: float | None, held_back: int, *, ceiling: int) -> int:
    """Messages a replica may hold: ``HORIZON_SECONDS`` of ``capacity`` (messages per second
    the sink makes room for, :meth:`workers.sinks.base.Sink.capacity`; None: unknown, take
    the ceiling) plus ``held_back`` (held, but not waiting for the sink: being deleted, or
    waiting for a message of their lane that is away), within [1, ceiling]."""
    if capacity is None:
        return ceiling
    return max(1, min(ceiling, math.ceil(capacity * HORIZON_SECONDS - 1e-9) + held_back))


class Tracker(Protocol):
    """What a poller needs of the settler: take a received message in hand, or send it back."""

    def track(self, message: messages.Message) -> None: ...
    def retry_later(self, message: messages.Message, delay_seconds: float) -> None: ...
    def give_back(self, given: Sequence[messages.Message], *, delay_seconds: float = 0.0) -> None: ...


class Budget:
    """A bounded count of messages in our hands; pollers reserve before they receive.

    ``target`` (optional) is consulted at each reservation: the limit is
    ``min(limit, target())``. Without it the limit is fixed.
    """

    def __init__(self, limit: int, target: Callable[[], int] | None = None) -> None:
        self.limit = limit
        self._target = target
        self._used = 0
        self._room = asyncio.Event()
        self._room.set()

    @property
    def current_limit(self) -> int:
        if self._target is None:
            return self.limit
        return max(1, min(self.limit, self._target()))

    async def reserve(self, most: int) -> int:
        """Wait for room, then reserve up to ``most`` places; return how many."""
        while self._used >= (limit := self.current_limit):
            self._room.clear()
            if self._target is None:
                await self._room.wait()
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._room.wait(), _RECHECK_SECONDS)
        granted = min(most, limit - self._used)
        self._used += granted
        return granted

    def release(self, count: int) -> None:
        if count <= 0:
            return
        self._used = max(0, self._used - count)
        self._room.set()


class Turns:
    """How the pollers of one worker share a queue that runs short.

    A receive that brings fewer messages than it asked for says the queue is about empty.
    One long poll waiting on it then serves the next message as soon as SQS has one; a
    second poller polling at once too only splits what arrives into smaller receives (at
    light load two pollers took ~5 messages per receive where one took ~7, and each
    ReceiveMessage costs as much CPU as several deliveries, and is billed). So the poller
    whose receive came back short rests — for :data:`REST_SECONDS` at most, and only while
    another poller is receiving, so a poller always waits on the queue — and comes back at
    once when any receive comes back full: a backlog, where every poller is needed.
    """

    REST_SECONDS: float = 0.05

    def __init__(self) -> None:
        self._receiving = 0
        self._backlog = asyncio.Event()

    @contextlib.contextmanager
    def receiving(self) -> Iterator[None]:
        """Around one ReceiveMessage call."""
        self._receiving += 1
        try:
            yield
        finally:
            self._receiving -= 1

    def full(self) -> None:
        """A receive came back with all it asked for: wake the resting pollers."""
        self._backlog.set()

    async def rest(self) -> None:
        """After a short receive: wait a moment, unless no other poller is receiving."""
        if self._receiving == 0:
            return
        self._backlog.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.REST_SECONDS):
                await self._backlog.wait()


class Poller:
    """One long-poll loop over the source queue."""

    def __init__(
        self,
        *,
        client: sqs.SqsApi,
        queue: spec_model.QueueSpec,
        budget: Budget,
        sink: base.Sink,
        settler: Tracker,
        submit: Callable[[list[messages.Message]], None],
        telemetry: telemetry.WorkerTelemetry,
        on_health: Callable[[bool], None],
        resolver: payloads.Resolver | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_receive: Callable[[float, bool], None] = lambda began, full: None,
        turns: Turns | None = None,
    ) -> None:
        """``on_receive`` hears of every receive that came back (even empty), with the
        ``clock`` time it began and whether it brought all it asked for: how ``ordering``
        knows a failed message had its chance."""
        self._client = client
        self._turns = turns or Turns()
        self._queue = queue
        self._budget = budget
        self._sink = sink
        self._settler = settler
        self._submit = submit
        self._telemetry = telemetry
        self._on_health = on_health
        self._resolver = resolver
        self._clock = clock
        self._on_receive = on_receive
        # FIFO groups waiting in place for S3, by a serial: their messages and their task.
        self._holding: dict[int, tuple[list[messages.Message], asyncio.Task[None]]] = {}
        self._serials = itertools.count()
        self._stopping = False
        self._receiving = False

    def stop(self) -> bool:
        """Receive no more; True when a receive is under way (the caller waits for it, and what
        it brings goes back to the queue at once)."""
        self._stopping = True
        return self._receiving

    async def run(self) -> None:
        try:
            await self._poll()
        finally:
            # Stopped (drain) or crashed: what waits in place for S3 goes back to the queue now.
            for group, task in self._holding.values():
                task.cancel()
                self._settler.give_back(group)
            self._holding.clear()

    async def _poll(self) -> None:
        failures = 0
        while not self._stopping:
            await self._sink.wait_accepting()
            granted = await self._budget.reserve(self._queue.max_messages)
            began = self._clock()
            try:
                self._receiving = True
                with self._turns.receiving():
                    received = await self._receive(granted)
            except sqs.SqsError as error:
                self._budget.release(granted)
                failures += 1
                self._on_health(False)
                delay = retrying.exponential_delay(failures, base=1.0, cap=_MAX_ERROR_BACKOFF)
                log.warning("receive failed (%s); next try in %.1fs", error, delay)
                await asyncio.sleep(delay)
                continue
            except BaseException:
                self._budget.release(granted)
                raise
            finally:
                self._receiving = False
            failures = 0
            self._on_health(True)
            count = len(received)
            self._budget.release(granted - count)
            if self._stopping:
                for message in received:
                    self._settler.track(message)
                self._settler.give_back(received)
                return
            if self._resolver is not None and received:
                received = await self._resolve(received)
            for message in received:
                self._settler.track(message)
            if received:
                self._submit(received)
            self._on_receive(began, count >= granted)
            if count >= granted:
                self._turns.full()
            elif count:
                await self._turns.rest()

    async def _resolve(self, received: list[messages.Message]) -> list[messages.Message]:
        """S3 pointers resolved before intake; what S3 cannot serve now waits (module doc)."""
        assert self._resolver is not None
        resolved = await self._resolver.resolve(received)
        if not resolved.unavailable:
            return resolved.ready
        split = _split(received, resolved, fifo=self._queue.is_fifo)
        for message, error in split.back:
            self._settler.track(message)
            self._back_later([message], error)
        for group, error in split.held:
            log.warning("large payload not readable now (%s); its FIFO group waits in place", error)
            for message in group:
                self._settler.track(message)
            serial = next(self._serials)
            task = asyncio.create_task(self._wait_in_place(serial, group), name="payload-wait")
            self._holding[serial] = (group, task)
        return split.taken

    async def _wait_in_place(self, serial: int, group: list[messages.Message]) -> None:
        """Read a held FIFO group's objects again until S3 serves them all, then take the
        group in, in order; past :data:`_IN_PLACE_LIMIT_SECONDS` hand it back instead."""
        assert self._resolver is not None
        started = self._clock()
        for failures in itertools.count(1):
            pause = retrying.exponential_delay(
                failures, base=_IN_PLACE_BASE_SECONDS, cap=_IN_PLACE_CAP_SECONDS
            )
            await asyncio.sleep(pause)
            resolved = await self._resolver.resolve(group, in_turn=False)
            if not resolved.unavailable:
                del self._holding[serial]
                # The same receives (the settler holds them by receipt handle), payloads resolved.
                self._submit(resolved.ready)
                return
            if self._clock() - started >= _IN_PLACE_LIMIT_SECONDS:
                del self._holding[serial]
                [(_, error), *_] = resolved.unavailable
                self._back_later(group, error)
                return

    def _back_later(self, group: Sequence[messages.Message], error: payloads.PayloadUnavailable) -> None:
        """Back to the queue: the first after a backoff, the rest (its group) a second later."""
        head, *rest = group
        delay = retrying.exponential_delay(
            head.receive_count, base=_PAYLOAD_RETRY_SECONDS, cap=_MAX_PAYLOAD_RETRY_SECONDS
        )
        log.warning("large payload not readable now (%s); message back in %.0fs", error, delay)
        self._settler.retry_later(head, delay)
        if rest:
            self._settler.give_back(rest, delay_seconds=delay + 1)

    async def _receive(self, count: int) -> list[messages.Message]:
        with self._telemetry.receive_span() as span:
            reply = await sqs.call(
                self._client.receive_message,
                QueueUrl=self._queue.url,
                MaxNumberOfMessages=count,
                WaitTimeSeconds=self._queue.wait_time_seconds,
                VisibilityTimeout=self._queue.visibility_timeout_seconds,
                MessageSystemAttributeNames=["All"],
                MessageAttributeNames=["All"],
            )
            received = _parse(reply.get("Messages", []))
            self._telemetry.record_batch(span, received)
            self._telemetry.received(len(received))
            return received


def _parse(reply: list[dict[str, Any]]) -> list[messages.Message]:
    """The messages of one reply; an entry SQS could not have sent is logged and skipped."""
    parsed: list[messages.Message] = []
    for entry in reply:
        try:
            parsed.append(messages.parse(entry))
        except messages.MalformedMessage as error:
            log.error("received message skipped: %s", error)
    return parsed


@dataclasses.dataclass(frozen=True, slots=True)
class _Split:
    """A receive with unreadable payloads, split by what happens to each message."""

    taken: list[messages.Message]
    """Taken in now."""
    held: list[tuple[list[messages.Message], payloads.PayloadUnavailable]]
    """FIFO groups held in place, each from its first unreadable message on, in receive
    order (SQS's order within a group), with why that one could not be read."""
    back: list[tuple[messages.Message, payloads.PayloadUnavailable]]
    """Back to the queue after a backoff (standard queues, or a message without a group)."""


def _split(received: Sequence[messages.Message], resolved: payloads.Resolved, *, fifo: bool) -> _Split:
    """Which messages of a receive (``received``, as received) wait for S3, and how.

    Receive order, not ``SequenceNumber``: an SQS double (moto) draws sequence numbers at
    random, and every SQS returns a group's messages of one receive in the group's order."""
    unreadable = {message.receipt_handle: error for message, error in resolved.unavailable}
    readable = {message.receipt_handle: message for message in resolved.ready}
    held: dict[str, tuple[list[messages.Message], payloads.PayloadUnavailable]] = {}
    taken: list[messages.Message] = []
    back: list[tuple[messages.Message, payloads.PayloadUnavailable]] = []
    for message in received:
        group = message.group_id if fifo else None
        error = unreadable.get(message.receipt_handle)
        if error is not None:
            if group is None:
                back.append((message, error))
            else:
                held.setdefault(group, ([], error))[0].append(message)
        elif group is not None and group in held:
            held[group][0].append(readable.get(message.receipt_handle, message))
        else:
            taken.append(readable.get(message.receipt_handle, message))
    return _Split(taken, list(held.values()), back)
