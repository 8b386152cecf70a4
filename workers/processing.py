"""One message's way from "received" to "settled", and the dispatcher that runs the lanes.

``polling`` calls :meth:`Processor.submit` for every received message. The processor

1. decodes it (``envelopes``) — a poison body is dead-lettered with its reason, once;
2. filters it (``filtering``) — a skipped event is acknowledged and counted;
3. holds it in the lane of its ordering key (``ordering``; FIFO: its message group, in
   ``SequenceNumber`` order);
4. when the lane lets it start and a delivery slot is free (``spec.sink.maxConcurrency``),
   hands it to the sink, which *admits* it when the limiter grants it a permit: that is
   when the event is claimed in the idempotency store (``dedupe``), and from then until
   the sink answers the claim's lease is renewed;
5. settles it (``settling``) according to the answer:

   ==========================  ====================================================================
   Delivered                   complete the claim, delete the message
   already COMPLETED           a duplicate: delete it, deliver nothing
   claimed elsewhere           look again in a few seconds (not an attempt)
   Refused, throttled, or the  the sink's failure, not the event's: keep the message (heartbeated),
   circuit opened              wait until the sink takes work again, deliver again — no attempt
                               is counted and SQS's receive count does not grow
   Retry                       one failed attempt (counted in the store): visibility = Retry-After
                               or backoff (FIFO, up to a minute: wait in place, the group kept in
                               hand); after ``retry.maxAttempts`` attempts: dead-letter
   Permanent / poison          dead-letter with the reason
   ==========================  ====================================================================

A dead-letter copy is recorded in the idempotency store under the message id before the
delete, so a message whose delete is lost (a crash, an expired receipt) is deleted when it
comes back, never copied twice. A copy that fails keeps the message and blocks its lane
like a retry: a conversation (FIFO: a group) never moves on past an event that is neither
delivered nor in the dead-letter queue.

On a FIFO queue a failure hands the rest of the group back to SQS, and the group's lane
refuses or holds what arrives until the failed message is back, so the group is delivered
in order whatever the SQS implementation does with group locks (``ordering``).

:meth:`Processor.submit` never raises: whatever goes wrong with a message's intake makes it
poison. On shutdown (:meth:`Processor.drain`) nothing new starts, messages not started yet
go back to the queue at once, buffered sink batches are flushed, deliveries waiting for the
sink give their message back, and running deliveries get the grace period to finish; those
still running then are cancelled and their messages given back.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import time
from collections.abc import Callable, Coroutine, Hashable, Mapping, Sequence
from typing import Any

from fanout_core import idempotency as dedupe
from fanout_core import offloading
from fanout_core import spec as spec_model
from workers import envelopes, events, filtering, ordering, retrying, settling, telemetry
from workers.sinks import base

log = logging.getLogger(__name__)

_COMPLETE_ATTEMPTS = 3
_IN_PROGRESS_RETRY_SECONDS = 5.0
_MIN_REDELIVERY_GRACE_SECONDS = 5.0
_DEAD_LETTER_LEASE_SECONDS = 60.0
_IN_PLACE_RETRY_LIMIT_SECONDS = 60.0
"""FIFO: a failed message waits in place (its group kept in hand) for delays up to this."""
_FIFO_SETTLE_SECONDS = 0.25
"""With several pollers, how long a FIFO message waits at an idle group for a concurrent
receive's earlier message of the group (see ``ordering``)."""
_FIFO_HAND_BACK_MARGIN_SECONDS = 1.0
"""A FIFO group handed back becomes visible this long after its failed head is due."""

ReasonClass = telemetry.ReasonClass


def sqs_message_attributes(message: Mapping[str, Any]) -> dict[str, str]:
    """String message attributes of an SQS message (binary ones are not carried)."""
    attributes: dict[str, str] = {}
    raw = message.get("MessageAttributes", {})
    if not isinstance(raw, Mapping):
        return attributes
    for name, value in raw.items():
        if isinstance(value, Mapping) and isinstance(value.get("StringValue"), str):
            attributes[str(name)] = value["StringValue"]
    return attributes


@dataclasses.dataclass(frozen=True, slots=True)
class _Ending:
    """How a delivery ended, for its lane: the result and, after a failure, when the
    failed message is due back (``due``) and how long the lane waits for it (``hold``)."""

    result: ordering.Result
    hold: float | None = None
    due: float | None = None


_DONE = _Ending(ordering.Result.DONE)
_DEAD = _Ending(ordering.Result.DEAD)


class _Admission:
    """The go-ahead a sink asks for when the limiter grants the event a permit.

    Claims the event; on CLAIMED the processor renews the lease until the answer is in.
    Remembers why it said no (a duplicate, a claim held elsewhere, a store failure).
    """

    __slots__ = ("_processor", "error", "event_id", "state")

    def __init__(self, processor: Processor, event_id: events.EventId) -> None:
        self._processor = processor
        self.event_id = event_id
        self.state: dedupe.ClaimState | None = None
        self.error: dedupe.StoreError | None = None

    async def __call__(self) -> bool:
        try:
            self.state = await self._processor.claim(self.event_id)
        except dedupe.StoreError as error:
            self.error = error
            return False
        return self.state is dedupe.ClaimState.CLAIMED


class Processor:
    """Decodes, filters, orders, deduplicates, delivers and settles; one per worker."""

    def __init__(
        self,
        *,
        spec: spec_model.FanoutConsumerSpec,
        sink: base.Sink,
        store: dedupe.IdempotencyStore,
        settler: settling.Settler,
        telemetry: telemetry.WorkerTelemetry,
        clock: Callable[[], float] = time.monotonic,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self._spec = spec
        self._sink = sink
        self._store = store
        self._settler = settler
        self._telemetry = telemetry
        self._clock = clock
        self._jitter = jitter
        self._fifo = spec.queue.is_fifo
        self._filter = filtering.EventFilter(spec.filter.event_types)
        # After its delay a retried message is visible again; one or two long polls later it is
        # back in our hands, unless another replica took it.
        self._redelivery_grace = max(_MIN_REDELIVERY_GRACE_SECONDS, 2.0 * spec.queue.wait_time_seconds + 1.0)
        self._lanes: ordering.Lanes[settling.Received] = ordering.Lanes(
            fifo=self._fifo,
            hold_limit_seconds=spec.ordering.hold_limit_seconds,
            reread_hold_seconds=self._redelivery_grace,
            settle_seconds=_FIFO_SETTLE_SECONDS if spec.queue.pollers > 1 else 0.0,
        )
        self._lease_seconds = float(
            spec.idempotency.lease_seconds
            or max(spec.queue.visibility_timeout_seconds, 2 * spec.sink.timeout_seconds)
        )
        self._claims: dict[events.EventId, float] = {}  # claimed and not answered yet: renewed
        self._deliveries: set[asyncio.Task[None]] = set()
        self._chores: set[asyncio.Task[Any]] = set()
        self._running = 0
        self._wake = asyncio.Event()
        self._accepting = True
        self._draining = asyncio.Event()

    # -- intake ----------------------------------------------------------------------------

    def submit(self, records: Sequence[settling.Received]) -> None:
        """Take the messages of one receive; never raises, never blocks."""
        if self._fifo:
            # A message its lane waits for goes first: the rest of its group then sorts in behind.
            records = sorted(
                records,
                key=lambda record: (
                    not self._lanes.awaits(
                        ("group", record.group_id), frozenset({("message", record.message_id)})
                    )
                ),
            )
        for record in records:
            try:
                self._intake(record)
            except Exception as error:  # a bug in intake must not leave the message held forever
                log.exception("intake failed; dead-lettering the message")
                reason = f"could not be taken in ({type(error).__name__})"
                self._spawn_chore(self._dead_letter(record, ReasonClass.POISON, reason))

    def _intake(self, record: settling.Received) -> None:
        if not self._accepting:
            self._settler.give_back([record])
            return
        try:
            event = envelopes.decode(
                record.message.get("Body", ""),
                ordering_key=self._spec.ordering.key,
                message_attributes=sqs_message_attributes(record.message),
                resolution=offloading.resolution_of(record.message),
            )
        except envelopes.PoisonMessage as poison:
            self._spawn_chore(self._dead_letter(record, ReasonClass.POISON, poison.reason))
            return
        record.event = event
        if not self._filter.keep(event):
            self._telemetry.filtered(record.message, event)
            self._settler.delete(record)
            return
        suborder = 0
        if self._fifo:
            order, suborder = record.sent_timestamp_ms, record.sequence_number or 0
        else:
            order = event.event_time_ms if event.event_time_ms is not None else record.sent_timestamp_ms
        refused = self._lanes.add(
            self._lane_key(record, event),
            record,
            identities=self._identities(record),
            order=float("inf") if order is None else order,
            suborder=suborder,
            now=self._clock(),
            redelivered=record.receive_count > 1,
        )
        if refused is not None:
            # FIFO: back to the queue, to come again behind the group's earlier messages.
            delay = refused + _FIFO_HAND_BACK_MARGIN_SECONDS if refused > 0 else 0.0
            self._settler.give_back([record], delay_seconds=delay)
            return
        self._wake.set()

    def _lane_key(self, record: settling.Received, event: events.Event) -> Hashable:
        # A FIFO queue already orders by message group: the group is the lane, so a failed
        # message holds back exactly what SQS itself holds back.
        if self._fifo and record.group_id:
            return ("group", record.group_id)
        if event.ordering_key is not None:
            return ("key", event.ordering_key)
        return ("message", record.message_id)

    def _identities(self, record: settling.Received) -> frozenset[Hashable]:
        """What a lane recognises a message by when it comes back. Standard queues: its
        message id or its event id (a retried event may return as an SNS redelivery). FIFO:
        the message id only — a duplicate of the event is a different place in the group."""
        names: set[Hashable] = {("message", record.message_id)}
        if record.event is not None and not self._fifo:
            names.add(("event", record.event.event_id))
        return frozenset(names)

    # -- dispatching -----------------------------------------------------------------------

    async def run(self) -> None:
        """Start whatever the lanes allow whenever something changes; runs until cancelled."""
        renewing = asyncio.create_task(self._renew_claims_forever(), name="claim-renewal")
        try:
            while True:
                self._wake.clear()
                if self._accepting:
                    free = self._spec.sink.max_concurrency - self._running
                    for started in self._lanes.start_ready(self._clock(), free):
                        self._running += 1
                        task = asyncio.create_task(self._work_slot(started.key, started.item))
                        self._deliveries.add(task)
                        task.add_done_callback(self._deliveries.discard)
                self._telemetry.set_lanes(len(self._lanes))
                deadline = self._lanes.next_deadline()
                timeout = None if deadline is None else max(0.0, deadline - self._clock()) + 0.001
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(timeout):
                        await self._wake.wait()
        finally:
            renewing.cancel()

    async def _work_slot(self, key: Hashable, record: settling.Received) -> None:
        """One delivery slot: deliver, then go straight on with the next ready lane, if any.

        Starting the next lane here, rather than waking the dispatcher to start a new task,
        saves two turns of the event loop per delivery, which at 64 slots of 20 ms each is
        what separates keeping the sink busy from not.
        """
        try:
            while True:
                await self._deliver(key, record)
                if not self._accepting:
                    return
                ready = self._lanes.start_ready(self._clock(), 1)
                if not ready:
                    return
                key, record = ready[0].key, ready[0].item
        finally:
            self._running -= 1  # counted here, not in a done-callback, so the wake below sees the slot
            self._wake.set()

    async def _deliver(self, key: Hashable, record: settling.Received) -> None:
        assert record.event is not None
        ending = _Ending(ordering.Result.FAILED)
        try:
            with self._telemetry.process_span(record.message, record.event):
                ending = await self._process(record, record.event)
        except asyncio.CancelledError:
            self._settler.give_back([record])  # shutdown: not delivered, so back to the queue
            raise
        except Exception as error:  # a bug in a sink or store must not lose the message
            log.exception("processing failed unexpectedly")
            ending = await self._failed_attempt(
                record, record.event, None, ReasonClass.TRANSIENT, f"internal error: {type(error).__name__}"
            )
        finally:
            identities, now = self._identities(record), self._clock()
            released = self._lanes.finish(
                key,
                ending.result,
                identities=identities,
                now=now,
                hold_seconds=ending.hold,
                due_seconds=ending.due,
            )
            if released:
                self._settler.give_back(released)
            self._wake.set()  # a finish can make lanes ready (or end a FIFO group)

    async def _process(self, record: settling.Received, event: events.Event) -> _Ending:
        started = self._clock()
        waits = 0
        while True:
            admission = _Admission(self, event.event_id)
            try:
                outcome = await self._sink.deliver(event, admission)
            finally:
                if admission.state is dedupe.ClaimState.CLAIMED:  # ours: stop renewing it
                    self._claims.pop(event.event_id, None)
            if isinstance(outcome, events.NotSent):
                return self._not_sent(record, event, admission)
            if isinstance(outcome, events.Delivered):
                await self._complete(event)
                self._telemetry.delivered(record.message, event, self._clock() - started)
                with self._telemetry.child_span(telemetry.ACK):
                    self._settler.delete(record)
                return _DONE
            if isinstance(outcome, events.Permanent):
                await self._release(event, failed=True)
                return await self._give_up(record, ReasonClass.PERMANENT, outcome.reason)
            sink_wide = self._sink_wide(outcome)
            if sink_wide is None:
                assert isinstance(outcome, events.Retry)
                attempts = max(1, await self._release(event, failed=True))
                delay = self._in_place_delay(attempts, outcome.delay_seconds)
                if delay is None:
                    return await self._retry_or_give_up(
                        record, event, attempts, outcome.delay_seconds, ReasonClass.TRANSIENT, outcome.reason
                    )
                self._telemetry.retried(record.message, event, delay, ReasonClass.TRANSIENT, outcome.reason)
                if not await self._wait_for_sink(ReasonClass.TRANSIENT, 0, pause=delay):
                    self._settler.give_back([record])  # shutting down
                    return self._failed_ending(0.0)
                continue
            # The sink's failure, not the event's: keep the message and try again once the
            # sink takes work — no attempt counted, no trip through SQS.
            await self._release(event, failed=False)
            waits += 1
            self._telemetry.retried(record.message, event, 0.0, sink_wide, outcome.reason)
            asked = outcome.delay_seconds if isinstance(outcome, events.Retry) else None
            if not await self._wait_for_sink(sink_wide, waits, asked=asked):
                self._settler.give_back([record])  # shutting down
                return self._failed_ending(0.0)

    def _sink_wide(self, outcome: events.Outcome) -> ReasonClass | None:
        """Why ``outcome`` is the sink's failure rather than the event's, or None."""
        if isinstance(outcome, events.Refused):
            return ReasonClass.REFUSED
        if isinstance(outcome, events.Retry):
            if outcome.throttled:
                return ReasonClass.THROTTLED
            if not self._sink.accepting:  # this failure (or others) opened the circuit
                return ReasonClass.CIRCUIT_OPEN
        return None

    def _in_place_delay(self, attempts: int, delay: float | None) -> float | None:
        """FIFO: how long a failed message waits in place before its next attempt, or None to
        retry through the queue (not FIFO, attempts used up, or a long delay).

        A FIFO message retried in place keeps its whole group in our hands, in order: no
        visibility change and nothing handed back, so order does not depend on what the SQS
        implementation makes of a group whose head waits out a visibility change
        (LocalStack serves the rest of the group at once). Long delays still go through the
        queue: a group waiting minutes should not hold in-flight budget.
        """
        if not self._fifo or retrying.attempts_exhausted(attempts, self._spec.retry):
            return None
        if delay is None:
            delay = retrying.backoff_delay(attempts, self._spec.retry, random=self._jitter)
        return delay if delay <= _IN_PLACE_RETRY_LIMIT_SECONDS else None

    async def _wait_for_sink(
        self, reason: ReasonClass, waits: int, *, pause: float = 0.0, asked: float | None = None
    ) -> bool:
        """Wait until the sink takes work again; False when the worker started draining.

        A paused sink (Retry-After) or an open circuit says itself when it takes work again.
        A throttle that leaves the sink accepting — one without a Retry-After (the limiter
        slowed down), or an isolated short one (the limiter skipped a beat, see
        ``throttling``) — makes the event wait on its own: the Retry-After it was ``asked``
        for, or else a backoff, so a downstream that keeps answering 429 is never hammered by
        one event. (The backoff, ``retry.baseDelaySeconds`` and up, would hold the last
        events of a backlog for seconds after a one-second Retry-After.)
        """
        if reason is ReasonClass.THROTTLED and self._sink.accepting:
            if asked is not None and asked > 0:
                pause = asked
            else:
                pause = retrying.backoff_delay(waits, self._spec.retry, random=self._jitter)

        async def ready() -> None:
            await asyncio.sleep(pause)
            await self._sink.wait_accepting()

        waiting = asyncio.ensure_future(ready())
        draining = asyncio.ensure_future(self._draining.wait())
        try:
            await asyncio.wait({waiting, draining}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiting.cancel()
            draining.cancel()
        return not self._draining.is_set()

    def _not_sent(self, record: settling.Received, event: events.Event, admission: _Admission) -> _Ending:
        if admission.state is dedupe.ClaimState.COMPLETED:
            self._telemetry.duplicate(record.message, event)
            self._settler.delete(record)
            return _DONE
        if admission.error is not None:
            reason_class, reason = ReasonClass.STORE_UNAVAILABLE, f"idempotency store: {admission.error}"
        else:
            # Another replica (or message) is delivering this very event: look again later.
            reason_class, reason = ReasonClass.IN_PROGRESS, "in progress elsewhere"
        self._telemetry.retried(record.message, event, _IN_PROGRESS_RETRY_SECONDS, reason_class, reason)
        self._settler.retry_later(record, _IN_PROGRESS_RETRY_SECONDS)
        return self._failed_ending(_IN_PROGRESS_RETRY_SECONDS)

    # -- settling decisions ----------------------------------------------------------------

    async def _failed_attempt(
        self,
        record: settling.Received,
        event: events.Event | None,
        delay: float | None,
        reason_class: ReasonClass,
        reason: str,
    ) -> _Ending:
        """One failed delivery of ``event`` (counted now): retry after a backoff, or give up."""
        attempts = record.receive_count
        if event is not None:
            attempts = max(1, await self._release(event, failed=True))
        return await self._retry_or_give_up(record, event, attempts, delay, reason_class, reason)

    async def _retry_or_give_up(
        self,
        record: settling.Received,
        event: events.Event | None,
        attempts: int,
        delay: float | None,
        reason_class: ReasonClass,
        reason: str,
    ) -> _Ending:
        """After ``attempts`` failed deliveries: back to the queue for a backoff, or give up."""
        if retrying.attempts_exhausted(attempts, self._spec.retry):
            return await self._give_up(
                record, ReasonClass.EXHAUSTED, f"gave up after {attempts} attempts; last: {reason}"
            )
        if delay is None:
            delay = retrying.backoff_delay(attempts, self._spec.retry, random=self._jitter)
        self._telemetry.retried(record.message, event, delay, reason_class, reason)
        self._settler.retry_later(record, delay)
        return self._failed_ending(delay)

    def _failed_ending(self, delay: float) -> _Ending:
        """The failed message is due in ``delay`` seconds; its lane waits about as long as it
        takes to come back. With several replicas it may well come back to another one, and
        the lane must not wait for that forever. A FIFO lane waits twice as long: SQS serves
        nothing else of the group while its head is away, so waiting costs nothing there, and
        an SQS double that is slow to give the head back must not see its group overtaken."""
        grace = 2 * self._redelivery_grace if self._fifo else self._redelivery_grace
        return _Ending(ordering.Result.FAILED, hold=delay + grace, due=delay)

    async def _give_up(self, record: settling.Received, reason_class: ReasonClass, reason: str) -> _Ending:
        """Dead-letter; a failed copy keeps the message and its lane waits for it."""
        if await self._dead_letter(record, reason_class, reason):
            if record.event is not None:
                await self._forget(record.event)  # a redrive starts from zero attempts
            return _DEAD
        return self._failed_ending(self._backoff(record))

    async def _dead_letter(self, record: settling.Received, reason_class: ReasonClass, reason: str) -> bool:
        """Copy the message to the dead-letter queue once, whatever happens around it.

        True when the message is out of our hands for good (copied now or before, or left
        to the queue's redrive policy); False when it stays ours and comes back later.
        """
        backoff = self._backoff(record)
        marker = dedupe.dead_letter_key(record.message_id)
        try:
            claim = await self._store.claim(marker, lease_seconds=_DEAD_LETTER_LEASE_SECONDS)
        except dedupe.StoreError as error:
            log.warning("dead-letter record unavailable (%s); message retried later", error)
            self._settler.retry_later(record, backoff)
            return False
        if claim is dedupe.ClaimState.COMPLETED:
            self._settler.dead_lettered_before(record, backoff=backoff)
            return True
        if claim is dedupe.ClaimState.IN_PROGRESS:
            self._settler.retry_later(record, _IN_PROGRESS_RETRY_SECONDS)
            return False
        copied = await self._settler.dead_letter(
            record, reason_class=reason_class, reason=reason, backoff=backoff
        )
        try:
            if copied:
                await self._store.complete(marker)
            else:
                await self._store.release(marker)
        except dedupe.StoreError as error:
            log.warning("could not record the dead-letter copy: %s", error)
        return copied

    def _backoff(self, record: settling.Received) -> float:
        return retrying.backoff_delay(record.receive_count, self._spec.retry, random=self._jitter)

    # -- the idempotency store -------------------------------------------------------------

    async def claim(self, event_id: events.EventId) -> dedupe.ClaimState:
        """Claim ``event_id`` (an :class:`_Admission` calls this); renewed until answered."""
        with self._telemetry.child_span(telemetry.DEDUPE):
            state = await self._store.claim(event_id, lease_seconds=self._lease_seconds)
        if state is dedupe.ClaimState.CLAIMED:
            self._claims[event_id] = self._clock()
        return state

    async def _renew_claims_forever(self) -> None:
        """Keep the leases of events still in the sink alive: a long request or a slow
        batch never lets another replica claim an event that is being delivered."""
        # A claim is renewed once a third of its lease is gone, at the latest at half of it.
        age = self._lease_seconds / 3
        interval = max(0.1, self._lease_seconds / 6)
        while True:
            await asyncio.sleep(interval)
            due = self._clock() - age
            stale = [event_id for event_id, since in self._claims.items() if since <= due]
            if stale:
                await asyncio.gather(*(self._renew(event_id) for event_id in stale))

    async def _renew(self, event_id: events.EventId) -> None:
        try:
            renewed = await self._store.renew(event_id, lease_seconds=self._lease_seconds)
        except dedupe.StoreError as error:
            log.warning("could not renew a claim: %s", error)
            return
        if event_id not in self._claims:
            return  # answered meanwhile
        if renewed:
            self._claims[event_id] = self._clock()
        else:
            log.warning("lost the claim of an event in the sink", extra={"event_id": event_id})
            del self._claims[event_id]

    async def _complete(self, event: events.Event) -> None:
        for attempt in range(1, _COMPLETE_ATTEMPTS + 1):
            try:
                await self._store.complete(event.event_id)
                return
            except dedupe.StoreError as error:
                # Delivered but not remembered: a redelivery may deliver again (the sink's
                # Idempotency-Key still lets the downstream drop it). Try hard, then go on.
                log.warning("could not record completion (attempt %d): %s", attempt, error)
                await asyncio.sleep(retrying.exponential_delay(attempt, base=0.2, cap=1.0))

    async def _release(self, event: events.Event, *, failed: bool) -> int:
        """Give up our claim; ``failed`` counts an attempt. The attempts recorded (0 if unknown)."""
        try:
            return await self._store.release(event.event_id, failed=failed)
        except dedupe.StoreError as error:
            log.warning("could not release claim (it expires with its lease): %s", error)
            return 0

    async def _forget(self, event: events.Event) -> None:
        try:
            await self._store.forget(event.event_id)
        except dedupe.StoreError as error:
            log.warning("could not forget a dead-lettered event: %s", error)

    def _spawn_chore(self, coroutine: Coroutine[Any, Any, Any]) -> None:
        task: asyncio.Task[Any] = asyncio.create_task(coroutine)
        self._chores.add(task)
        task.add_done_callback(self._chores.discard)

    # -- shutdown --------------------------------------------------------------------------

    async def drain(self, grace_seconds: float) -> None:
        """Start nothing new, give back what did not start, let running deliveries finish."""
        self._accepting = False
        self._draining.set()
        self._settler.give_back(self._lanes.take_pending())
        try:
            await self._sink.flush()
        except Exception:
            log.exception("sink flush failed at shutdown")
        running = set(self._deliveries) | set(self._chores)
        if running:
            _, late = await asyncio.wait(running, timeout=grace_seconds)
            for task in late:
                task.cancel()
            if late:
                log.warning("%d deliveries did not finish within the grace period", len(late))
                await asyncio.wait(late, timeout=5)
        # FIFO failures during the drain release their group's messages through finish();
        # anything else still held is given back now.
        self._settler.give_back(self._lanes.take_pending())

    @property
    def held_back(self) -> int:
        """Messages held that cannot start before a message of their lane that is away is back."""
        return self._lanes.blocked_count()
