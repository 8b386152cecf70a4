"""One message's way from "received" to "settled", and the dispatcher that runs the lanes.

``polling`` calls :meth:`Processor.submit` for every received message. The processor

1. decodes it (``envelopes``) — a poison body is dead-lettered with its reason;
2. filters it (``filtering``) — a skipped event is acknowledged and counted;
3. holds it in the lane of its ordering key (``ordering``);
4. when the lane lets it start and a delivery slot is free (``spec.sink.maxConcurrency``),
   claims it in the idempotency store (``dedupe``), delivers it (the sink) and settles
   it (``settling``) according to the answer:

   ====================  ===========================================================
   Delivered             complete the claim, delete the message
   already COMPLETED     a duplicate: delete it, deliver nothing
   Retry                 release the claim; visibility = Retry-After or backoff;
                         after ``retry.maxAttempts`` receives: dead-letter
   Permanent / poison    dead-letter with the reason
   ====================  ===========================================================

On shutdown (:meth:`Processor.drain`) nothing new starts, messages not started yet go
back to the queue at once, and running deliveries get the grace period to finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import time
from collections.abc import Callable, Coroutine, Hashable, Mapping
from typing import Any

from fanout_core import spec as spec_model
from workers import dedupe, envelopes, events, filtering, ordering, retrying, settling, telemetry
from workers.sinks import base

log = logging.getLogger(__name__)

_COMPLETE_ATTEMPTS = 3
_IN_PROGRESS_RETRY_SECONDS = 5.0
_MIN_REDELIVERY_GRACE_SECONDS = 5.0


def sqs_message_attributes(message: Mapping[str, Any]) -> dict[str, str]:
    """String message attributes of an SQS message (binary ones are not carried)."""
    attributes: dict[str, str] = {}
    for name, value in message.get("MessageAttributes", {}).items():
        if isinstance(value, Mapping) and isinstance(value.get("StringValue"), str):
            attributes[name] = value["StringValue"]
    return attributes


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
        self._filter = filtering.EventFilter(spec.filter.event_types)
        self._lanes: ordering.Lanes[settling.Received] = ordering.Lanes(
            fifo=spec.queue.is_fifo, hold_limit_seconds=spec.ordering.hold_limit_seconds
        )
        self._lease_seconds = float(
            spec.idempotency.lease_seconds
            or max(spec.queue.visibility_timeout_seconds, 2 * spec.sink.timeout_seconds)
        )
        self._deliveries: set[asyncio.Task[None]] = set()
        self._chores: set[asyncio.Task[None]] = set()
        self._running = 0
        self._holds: dict[settling.Received, float] = {}
        # After its delay a retried message is visible again, and a long poll returns it at
        # once (it does not wait out waitTimeSeconds when a message is there): back in our
        # hands within a receive or two, unless another replica took it — in a fleet, most
        # of the time. Waiting two whole long polls (41 s by default) for a message that
        # went elsewhere stalled whole conversations at the end of a backlog.
        self._redelivery_grace = _MIN_REDELIVERY_GRACE_SECONDS
        self._wake = asyncio.Event()
        self._accepting = True

    # -- intake ----------------------------------------------------------------------------

    def submit(self, record: settling.Received) -> None:
        """Take one received message; never raises, never blocks."""
        if not self._accepting:
            self._settler.give_back([record])
            return
        try:
            event = envelopes.decode(
                record.message.get("Body", ""),
                ordering_key=self._spec.ordering.key,
                message_attributes=sqs_message_attributes(record.message),
            )
        except envelopes.PoisonMessage as poison:
            self._spawn_chore(self._dead_letter(record, telemetry.ReasonClass.POISON, poison.reason))
            return
        record.event = event
        if not self._filter.keep(event):
            self._telemetry.filtered(record.message, event)
            self._settler.delete(record)
            return
        order = event.event_time_ms if event.event_time_ms is not None else record.sent_timestamp_ms
        self._lanes.add(
            self._lane_key(record, event),
            record,
            identities=self._identities(record),
            order=float(order or 0),
            now=self._clock(),
        )
        self._wake.set()

    def _lane_key(self, record: settling.Received, event: events.Event) -> Hashable:
        # A FIFO queue already orders by message group: the group is the lane, so a failed
        # message holds back exactly what SQS itself holds back.
        if self._spec.queue.is_fifo and record.group_id:
            return ("group", record.group_id)
        if event.ordering_key is not None:
            return ("key", event.ordering_key)
        return ("message", record.message_id)

    @staticmethod
    def _identities(record: settling.Received) -> frozenset[Hashable]:
        names: set[Hashable] = {("message", record.message_id)}
        if record.event is not None:
            names.add(("event", record.event.event_id))
        return frozenset(names)

    # -- dispatching -----------------------------------------------------------------------

    async def run(self) -> None:
        """Start whatever the lanes allow whenever something changes; runs until cancelled."""
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
        result = ordering.Result.FAILED
        try:
            with self._telemetry.process_span(record.message, record.event):
                result = await self._process(record, record.event)
        except Exception as error:  # a bug in a sink or store must not lose the message
            log.exception("processing failed unexpectedly")
            result = self._retry(
                record, None, telemetry.ReasonClass.TRANSIENT, f"internal error: {type(error).__name__}"
            )
        finally:
            released = self._lanes.finish(
                key,
                result,
                identities=self._identities(record),
                now=self._clock(),
                hold_seconds=self._holds.pop(record, None),
            )
            if released:
                self._settler.give_back(released)
            self._wake.set()  # a finish can make lanes ready (or end a FIFO group)

    async def _process(self, record: settling.Received, event: events.Event) -> ordering.Result:
        started = self._clock()
        with self._telemetry.child_span(telemetry.DEDUPE):
            try:
                claim = await self._store.claim(event.event_id, lease_seconds=self._lease_seconds)
            except dedupe.StoreError as error:
                return self._retry(
                    record, None, telemetry.ReasonClass.TRANSIENT, f"idempotency store: {error}"
                )
        if claim is dedupe.ClaimState.COMPLETED:
            self._telemetry.duplicate(record.message, event)
            self._settler.delete(record)
            return ordering.Result.DONE
        if claim is dedupe.ClaimState.IN_PROGRESS:
            # Another replica (or message) is delivering this very event: look again later,
            # without spending an attempt on it.
            self._telemetry.retried(
                record.message,
                event,
                _IN_PROGRESS_RETRY_SECONDS,
                telemetry.ReasonClass.TRANSIENT,
                "in progress elsewhere",
            )
            self._settler.retry_later(record, _IN_PROGRESS_RETRY_SECONDS)
            self._holds[record] = _IN_PROGRESS_RETRY_SECONDS + self._redelivery_grace
            return ordering.Result.FAILED

        outcome = await self._deliver_riding_out_short_throttles(event)
        if isinstance(outcome, events.Delivered):
            await self._complete(event)
            self._telemetry.delivered(record.message, event, self._clock() - started)
            with self._telemetry.child_span(telemetry.ACK):
                self._settler.delete(record)
            return ordering.Result.DONE
        await self._release(event)
        if isinstance(outcome, events.Retry):
            reason_class = (
                telemetry.ReasonClass.THROTTLED if outcome.throttled else telemetry.ReasonClass.TRANSIENT
            )
            return self._retry(record, outcome.delay_seconds, reason_class, outcome.reason)
        await self._dead_letter(record, telemetry.ReasonClass.PERMANENT, outcome.reason)
        return ordering.Result.DEAD

    async def _deliver_riding_out_short_throttles(self, event: events.Event) -> events.Outcome:
        """Deliver; a throttle asking for a second or two is waited out here (its lane, its
        claim and its message kept), unless the sink stopped taking work meanwhile."""
        outcome = await self._sink.deliver(event)
        for tries in itertools.count(1):
            if not isinstance(outcome, events.Retry):
                return outcome
            wait = retrying.wait_in_place(outcome.throttled, outcome.delay_seconds, tries)
            if wait is None:
                return outcome
            await asyncio.sleep(wait)
            if not (self._accepting and self._sink.accepting):
                return outcome
            outcome = await self._sink.deliver(event)
        raise AssertionError("unreachable")  # pragma: no cover

    # -- settling decisions ----------------------------------------------------------------

    def _retry(
        self,
        record: settling.Received,
        delay: float | None,
        reason_class: telemetry.ReasonClass,
        reason: str,
    ) -> ordering.Result:
        if retrying.attempts_exhausted(record.receive_count, self._spec.retry):
            self._spawn_chore(
                self._dead_letter(
                    record,
                    telemetry.ReasonClass.EXHAUSTED,
                    f"gave up after {record.receive_count} attempts; last: {reason}",
                )
            )
            return ordering.Result.DEAD
        if delay is None:
            delay = retrying.backoff_delay(record.receive_count, self._spec.retry, random=self._jitter)
        self._telemetry.retried(record.message, record.event, delay, reason_class, reason)
        self._settler.retry_later(record, delay)
        # Its lane waits for it about as long as it takes to come back; with several replicas
        # it may well come back to another one, and the lane must not wait for that forever.
        self._holds[record] = delay + self._redelivery_grace
        return ordering.Result.FAILED

    async def _dead_letter(
        self, record: settling.Received, reason_class: telemetry.ReasonClass, reason: str
    ) -> None:
        backoff = retrying.backoff_delay(record.receive_count, self._spec.retry, random=self._jitter)
        await self._settler.dead_letter(record, reason_class=reason_class, reason=reason, backoff=backoff)

    async def _complete(self, event: events.Event) -> None:
        for attempt in range(_COMPLETE_ATTEMPTS):
            try:
                await self._store.complete(event.event_id)
                return
            except dedupe.StoreError as error:
                # Delivered but not remembered: a redelivery may deliver again (the sink's
                # Idempotency-Key still lets the downstream drop it). Try hard, then go on.
                log.warning("could not record completion (attempt %d): %s", attempt + 1, error)
                await asyncio.sleep(0.2 * 2**attempt)

    async def _release(self, event: events.Event) -> None:
        try:
            await self._store.release(event.event_id)
        except dedupe.StoreError as error:
            log.warning("could not release claim (it expires with its lease): %s", error)

    def _spawn_chore(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coroutine)
        self._chores.add(task)
        task.add_done_callback(self._chores.discard)

    # -- shutdown --------------------------------------------------------------------------

    async def drain(self, grace_seconds: float) -> None:
        """Start nothing new, give back what did not start, let running deliveries finish."""
        self._accepting = False
        self._settler.give_back(self._lanes.take_pending())
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
    def active_lanes(self) -> int:
        return len(self._lanes)

    @property
    def held_back(self) -> int:
        """Messages held that cannot start before a failed event of their lane is back."""
        return self._lanes.blocked_count()
