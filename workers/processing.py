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
5. settles it according to the answer: :func:`deciding.judge` says whose failure it was and
   what becomes of the claim, :func:`deciding.decide` what becomes of the message and of its
   lane (the decision table is there, pure); the processor carries the decision out against
   the settler (:class:`Settlement`: delete, retry later, give back, dead-letter), the
   store and the lanes.

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
from collections.abc import Callable, Coroutine, Hashable, Sequence
from typing import Any, Protocol

from fanout_core import idempotency as dedupe
from fanout_core import spec as spec_model
from workers import deciding, envelopes, events, filtering, messages, ordering, retrying, telemetry
from workers.sinks import base

log = logging.getLogger(__name__)

_COMPLETE_ATTEMPTS = 3
_DEAD_LETTER_LEASE_SECONDS = 60.0
_FIFO_SETTLE_SECONDS = 0.25
"""With several pollers, how long a FIFO message waits at an idle group for a concurrent
receive's earlier message of the group (see ``ordering``)."""
_RECEIVES_TO_OVERDUE = 2
"""Standard queues: receives, begun after a failed message was due back, that came back
without it before its lane moves on (as two long polls: one may miss a message just made
visible)."""
_FIFO_HAND_BACK_MARGIN_SECONDS = 1.0
"""A FIFO group handed back becomes visible this long after its failed head is due."""

ReasonClass = events.ReasonClass


class Settlement(Protocol):
    """What the processor needs of the settler (``settling.Settler``): one action per message."""

    def delete(self, message: messages.Message) -> None: ...
    def retry_later(self, message: messages.Message, delay_seconds: float) -> None: ...
    def give_back(self, given: Sequence[messages.Message], *, delay_seconds: float = 0.0) -> None: ...

    async def dead_letter(
        self,
        message: messages.Message,
        event: events.Event | None,
        *,
        reason_class: events.ReasonClass,
        reason: str,
        backoff: float,
    ) -> bool: ...

    def dead_lettered_before(self, message: messages.Message, *, backoff: float) -> None: ...


@dataclasses.dataclass(frozen=True, slots=True)
class _Work:
    """A decoded message waiting in its lane, or being delivered."""

    message: messages.Message
    event: events.Event


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

    @property
    def immediate(self) -> bool:
        """Whether the claim answers without I/O (the store says): see ``base.Admission``."""
        return self._processor.claims_in_process

    @property
    def claim(self) -> deciding.Claim:
        """What the claim said, for :func:`deciding.judge` (not asked: held elsewhere)."""
        if self.state is dedupe.ClaimState.CLAIMED:
            return deciding.Claim.CLAIMED
        if self.state is dedupe.ClaimState.COMPLETED:
            return deciding.Claim.COMPLETED
        if self.error is not None:
            return deciding.Claim.UNANSWERED
        return deciding.Claim.ELSEWHERE


class Processor:
    """Decodes, filters, orders, deduplicates, delivers and settles; one per worker."""

    def __init__(
        self,
        *,
        spec: spec_model.FanoutConsumerSpec,
        sink: base.Sink,
        store: dedupe.IdempotencyStore,
        settler: Settlement,
        telemetry: telemetry.WorkerTelemetry,
        clock: Callable[[], float] = time.monotonic,
        jitter: Callable[[], float] = random.random,
        in_hand_limit: Callable[[], int] | None = None,
    ) -> None:
        """``in_hand_limit``: how many messages the pollers may hold (the in-flight budget;
        default ``queue.maxInFlight``). When the lanes hold that many waiting messages, with
        nothing running and nothing able to start, no receive can begin: the worker is
        stalled, and a standard lane's hold ends by time alone (``ordering``)."""
        self._spec = spec
        self._sink = sink
        self._store = store
        self._settler = settler
        self._telemetry = telemetry
        self._clock = clock
        self._jitter = jitter
        self._fifo = spec.queue.is_fifo
        self._rules = deciding.Rules.of(spec)
        self._filter = filtering.EventFilter(spec.filter.event_types)
        self._lanes: ordering.Lanes[_Work] = ordering.Lanes(
            fifo=self._fifo,
            hold_limit_seconds=spec.ordering.hold_limit_seconds,
            reread_hold_seconds=self._rules.redelivery_grace,
            settle_seconds=_FIFO_SETTLE_SECONDS if spec.queue.pollers > 1 else 0.0,
            receives_to_overdue=0 if self._fifo else _RECEIVES_TO_OVERDUE,
        )
        self._in_hand_limit = in_hand_limit or (lambda: spec.queue.max_in_flight)
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

    def submit(self, received: Sequence[messages.Message]) -> None:
        """Take the messages of one receive; never raises, never blocks."""
        if self._fifo:
            # A message its lane waits for goes first: the rest of its group then sorts in behind.
            received = sorted(
                received,
                key=lambda message: (
                    not self._lanes.awaits(
                        ("group", message.group_id), frozenset({("message", message.message_id)})
                    )
                ),
            )
        for message in received:
            try:
                self._intake(message)
            except Exception as error:  # a bug in intake must not leave the message held forever
                log.exception("intake failed; dead-lettering the message")
                self._spawn_poison(message, f"could not be taken in ({type(error).__name__})")

    def received(self, began: float, full: bool = False) -> None:
        """A receive that began at ``began`` came back (even empty; ``full``: with all it
        asked for): a lane waiting for a failed message counts a short one as one more chance
        the message had to come back here."""
        if self._lanes.received(began, self._clock(), full=full):
            self._wake.set()

    def _intake(self, message: messages.Message) -> None:
        if not self._accepting:
            self._settler.give_back([message])
            return
        try:
            event = envelopes.decode(
                message.body,
                ordering_key=self._spec.ordering.key,
                message_attributes=message.string_attributes(),
                resolution=message.resolution,
            )
        except envelopes.PoisonMessage as poison:
            self._spawn_poison(message, poison.reason)
            return
        if not self._filter.keep(event):
            self._telemetry.filtered(message, event)
            self._settler.delete(message)
            return
        work = _Work(message, event)
        suborder = 0
        if self._fifo:
            order, suborder = message.sent_timestamp_ms, message.sequence_number or 0
        else:
            order = event.event_time_ms if event.event_time_ms is not None else message.sent_timestamp_ms
        refused = self._lanes.add(
            self._lane_key(work),
            work,
            identities=self._identities(work),
            order=float("inf") if order is None else order,
            suborder=suborder,
            now=self._clock(),
            redelivered=message.redelivered,
        )
        if refused is not None:
            # FIFO: back to the queue, to come again behind the group's earlier messages.
            delay = refused + _FIFO_HAND_BACK_MARGIN_SECONDS if refused > 0 else 0.0
            self._settler.give_back([message], delay_seconds=delay)
            return
        self._wake.set()

    def _spawn_poison(self, message: messages.Message, reason: str) -> None:
        decision = self._decide(message, deciding.poison(reason), attempts=0)
        self._spawn_chore(self._give_up(message, None, decision))

    def _lane_key(self, work: _Work) -> Hashable:
        # A FIFO queue already orders by message group: the group is the lane, so a failed
        # message holds back exactly what SQS itself holds back.
        if self._fifo and work.message.group_id:
            return ("group", work.message.group_id)
        if work.event.ordering_key is not None:
            return ("key", work.event.ordering_key)
        return ("message", work.message.message_id)

    def _identities(self, work: _Work) -> frozenset[Hashable]:
        """What a lane recognises a message by when it comes back. Standard queues: its
        message id or its event id (a retried event may return as an SNS redelivery). FIFO:
        the message id only — a duplicate of the event is a different place in the group."""
        if self._fifo:
            return frozenset({("message", work.message.message_id)})
        return frozenset({("message", work.message.message_id), ("event", work.event.event_id)})

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
                    stalled = (
                        not self._running
                        and not self._lanes.startable
                        and self._lanes.waiting_count >= self._in_hand_limit()
                    )
                    self._lanes.set_stalled(stalled, self._clock())
                    if stalled and self._lanes.startable:
                        continue  # time alone freed a lane: start it
                self._telemetry.set_lanes(len(self._lanes))
                deadline = self._lanes.next_deadline()
                timeout = None if deadline is None else max(0.0, deadline - self._clock()) + 0.001
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(timeout):
                        await self._wake.wait()
        finally:
            renewing.cancel()

    async def _work_slot(self, key: Hashable, work: _Work) -> None:
        """One delivery slot: deliver, then go straight on with the next ready lane, if any.

        Starting the next lane here, rather than waking the dispatcher to start a new task,
        saves two turns of the event loop per delivery, which at 64 slots of 20 ms each is
        what separates keeping the sink busy from not.
        """
        try:
            while True:
                await self._deliver(key, work)
                if not self._accepting:
                    return
                ready = self._lanes.start_ready(self._clock(), 1)
                if not ready:
                    return
                key, work = ready[0].key, ready[0].item
        finally:
            self._running -= 1  # counted here, not in a done-callback, so the wake below sees the slot
            self._wake.set()

    async def _deliver(self, key: Hashable, work: _Work) -> None:
        ending = deciding.LaneEnding(ordering.Finish.FAILED)
        try:
            with self._telemetry.process_span(work.message, work.event):
                ending = await self._process(work)
        except asyncio.CancelledError:
            self._settler.give_back([work.message])  # shutdown: not delivered, so back to the queue
            raise
        except Exception as error:  # a bug in a sink or store must not lose the message
            log.exception("processing failed unexpectedly")
            verdict = deciding.crashed(type(error).__name__)
            attempts = await self._settle_claim(work.event, verdict.claim)
            decision = self._decide(work.message, verdict, attempts)
            ending = await self._carry_out(work, verdict, decision, self._clock())
        finally:
            released = self._lanes.finish(
                key,
                ending.finish,
                identities=self._identities(work),
                now=self._clock(),
                hold_seconds=ending.hold,
                due_seconds=ending.due,
            )
            if released:
                self._settler.give_back([item.message for item in released])
            self._wake.set()  # a finish can make lanes ready (or end a FIFO group)

    async def _process(self, work: _Work) -> deciding.LaneEnding:
        """Deliver until the table says the message is done with (``deciding``)."""
        started = self._clock()
        waits = 0
        while True:
            verdict = await self._attempt(work.event)
            attempts = await self._settle_claim(work.event, verdict.claim)
            waits += verdict.whose is deciding.Whose.SINK
            decision = self._decide(work.message, verdict, attempts, waits=waits)
            if not decision.delivers_again:
                return await self._carry_out(work, verdict, decision, started)
            # Kept in hand: the sink's failure (no attempt, no trip through SQS), or a FIFO
            # backoff short enough to wait out with the group in hand.
            self._telemetry.retried(
                work.message, work.event, decision.delay, self._reason_class(decision), decision.reason
            )
            if not await self._wait_for_sink(decision.delay):
                self._settler.give_back([work.message])  # shutting down
                return self._rules.failed(0.0)

    async def _attempt(self, event: events.Event) -> deciding.Verdict:
        """One delivery of ``event``, judged."""
        admission = _Admission(self, event.event_id)
        try:
            outcome = await self._sink.deliver(event, admission)
        finally:
            if admission.state is dedupe.ClaimState.CLAIMED:  # ours: stop renewing it
                self._claims.pop(event.event_id, None)
        return deciding.judge(
            outcome,
            admission.claim,
            sink_accepting=self._sink.accepting,
            store_error=str(admission.error or ""),
        )

    def _decide(
        self, message: messages.Message, verdict: deciding.Verdict, attempts: int, *, waits: int = 0
    ) -> deciding.Decision:
        return deciding.decide(
            verdict,
            rules=self._rules,
            attempts=attempts,
            receive_count=message.receive_count,
            waits=waits,
            jitter=self._jitter(),
            sink_accepting=self._sink.accepting,
        )

    async def _carry_out(
        self, work: _Work, verdict: deciding.Verdict, decision: deciding.Decision, started: float
    ) -> deciding.LaneEnding:
        """Settle the message as ``decision`` says (``started``: when its delivery began);
        what its lane is told."""
        message, event = work.message, work.event
        assert decision.lane is not None
        if decision.step is deciding.Step.DELETE:
            if verdict.whose is deciding.Whose.DELIVERED:
                self._telemetry.delivered(message, event, self._clock() - started)
                with self._telemetry.child_span(telemetry.ACK):
                    self._settler.delete(message)
            else:
                self._telemetry.duplicate(message, event)
                self._settler.delete(message)
            return decision.lane
        if decision.step is deciding.Step.RETRY_LATER:
            reason_class = self._reason_class(decision)
            self._telemetry.retried(message, event, decision.delay, reason_class, decision.reason)
            self._settler.retry_later(message, decision.delay)
            return decision.lane
        return await self._give_up(message, event, decision)

    @staticmethod
    def _reason_class(decision: deciding.Decision) -> ReasonClass:
        return decision.reason_class or ReasonClass.TRANSIENT

    async def _wait_for_sink(self, pause: float) -> bool:
        """Wait ``pause``, then until the sink takes work again; False when the worker started
        draining. A paused sink (Retry-After) or an open circuit says itself when it takes
        work again."""

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

    # -- dead letters ----------------------------------------------------------------------

    async def _give_up(
        self, message: messages.Message, event: events.Event | None, decision: deciding.Decision
    ) -> deciding.LaneEnding:
        """Dead-letter; a failed copy keeps the message and its lane waits for it."""
        reason_class = decision.reason_class or ReasonClass.POISON
        if await self._dead_letter(message, event, reason_class, decision.reason, backoff=decision.delay):
            if event is not None:
                await self._forget(event)  # a redrive starts from zero attempts
            return deciding.DEAD
        return self._rules.failed(decision.delay)

    async def _dead_letter(
        self,
        message: messages.Message,
        event: events.Event | None,
        reason_class: ReasonClass,
        reason: str,
        *,
        backoff: float,
    ) -> bool:
        """Copy the message to the dead-letter queue once, whatever happens around it.

        True when the message is out of our hands for good (copied now or before, or left
        to the queue's redrive policy); False when it stays ours and comes back later.
        """
        marker = dedupe.dead_letter_key(message.message_id)
        try:
            claim = await self._store.claim(marker, lease_seconds=_DEAD_LETTER_LEASE_SECONDS)
        except dedupe.StoreError as error:
            log.warning("dead-letter record unavailable (%s); message retried later", error)
            self._settler.retry_later(message, backoff)
            return False
        if claim is dedupe.ClaimState.COMPLETED:
            self._settler.dead_lettered_before(message, backoff=backoff)
            return True
        if claim is dedupe.ClaimState.IN_PROGRESS:
            self._settler.retry_later(message, deciding.ELSEWHERE_RETRY_SECONDS)
            return False
        copied = await self._settler.dead_letter(
            message, event, reason_class=reason_class, reason=reason, backoff=backoff
        )
        try:
            if copied:
                await self._store.complete(marker)
            else:
                await self._store.release(marker)
        except dedupe.StoreError as error:
            log.warning("could not record the dead-letter copy: %s", error)
        return copied

    # -- the idempotency store -------------------------------------------------------------

    @property
    def claims_in_process(self) -> bool:
        """Whether :meth:`claim` answers without I/O (the memory store): see ``base.Admission``."""
        return self._store.answers_in_process

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

    async def _settle_claim(self, event: events.Event, action: deciding.ClaimAction) -> int:
        """Do with the event's claim what the verdict says; the failed attempts recorded when
        one was counted (0 if unknown), else 0."""
        if action is deciding.ClaimAction.COMPLETE:
            await self._complete(event)
        elif action is deciding.ClaimAction.RELEASE:
            await self._release(event, failed=False)
        elif action is deciding.ClaimAction.FAIL:
            return await self._release(event, failed=True)
        return 0

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
        self._settler.give_back([work.message for work in self._lanes.take_pending()])
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
        self._settler.give_back([work.message for work in self._lanes.take_pending()])

    @property
    def held_back(self) -> int:
        """Messages held that cannot start before a message of their lane that is away is back."""
        return self._lanes.blocked_count()
