"""The long-poll loop: receive only what we can finish, only while the sink takes work.

``running`` starts ``spec.queue.pollers`` :class:`Poller` tasks sharing one
:class:`Budget`. Before each ``ReceiveMessage`` a poller

1. waits while the sink is not accepting (paused by Retry-After, circuit open): the
   messages wait in SQS, where they are safe, instead of in our memory;
2. reserves room in the in-flight budget (received, not yet settled) and asks for no
   more than that, so the worker never holds more than it can finish or heartbeat;
3. after a receive that came back short (the queue is about empty), rests a moment while
   another poller waits on the queue (:class:`Turns`): fuller receives, fewer calls.

Messages whose body is an S3 pointer (an event too large for SQS) are resolved first
(``payloads``), so the processor takes in the real event. Received messages are tracked by
the settler (which heartbeats them and frees their budget when they are settled) and handed
to the processor. An empty receive costs
the long poll only. Receive errors never end the loop: they mark the worker unready
and back off.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Any

from fanout_core import spec as spec_model
from workers import payloads, settling, sqs, telemetry
from workers.sinks import base

log = logging.getLogger(__name__)

_MAX_ERROR_BACKOFF = 30.0
_PAYLOAD_RETRY_SECONDS = 10
_MAX_PAYLOAD_RETRY_SECONDS = 300


class Budget:
    """A bounded count of messages in our hands; pollers reserve before they receive."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._used = 0
        self._room = asyncio.Event()
        self._room.set()

    @property
    def used(self) -> int:
        return self._used

    async def reserve(self, most: int) -> int:
        """Wait for room, then reserve up to ``most`` places; return how many."""
        while self._used >= self.limit:
            self._room.clear()
            await self._room.wait()
        granted = min(most, self.limit - self._used)
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
        settler: settling.Settler,
        submit: Callable[[list[settling.Received]], None],
        telemetry: telemetry.WorkerTelemetry,
        on_health: Callable[[bool], None],
        resolver: payloads.Resolver | None = None,
        turns: Turns | None = None,
    ) -> None:
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

    async def run(self) -> None:
        failures = 0
        while True:
            await self._sink.wait_accepting()
            granted = await self._budget.reserve(self._queue.max_messages)
            try:
                with self._turns.receiving():
                    messages = await self._receive(granted)
            except sqs.SqsError as error:
                self._budget.release(granted)
                failures += 1
                self._on_health(False)
                delay = min(_MAX_ERROR_BACKOFF, 0.5 * 2 ** min(failures, 10))
                log.warning("receive failed (%s); next try in %.1fs", error, delay)
                await asyncio.sleep(delay)
                continue
            except BaseException:
                self._budget.release(granted)
                raise
            failures = 0
            self._on_health(True)
            received = len(messages)
            self._budget.release(granted - received)
            if self._resolver is not None and messages:
                messages = await self._resolve(messages)
            if messages:
                self._submit([self._settler.track(message) for message in messages])
            if received >= granted:
                self._turns.full()
            elif received:
                await self._turns.rest()

    async def _resolve(self, messages: list[dict[str, Any]]) -> list[Any]:
        """S3 pointers resolved before intake; what S3 cannot serve now comes back later.

        On a FIFO queue a conversation's later messages of the same receive go back with it,
        a second later than it, so that none is delivered before it and SQS serves it first
        (on any SQS: it is visible while they are not).
        """
        assert self._resolver is not None
        resolved = await self._resolver.resolve(messages)
        waiting: dict[str, tuple[int, float]] = {}  # group -> (first sequence number, delay)
        for message, error in resolved.unavailable:
            record = self._settler.track(message)
            delay = min(_MAX_PAYLOAD_RETRY_SECONDS, _PAYLOAD_RETRY_SECONDS * record.receive_count)
            log.warning("large payload not readable now (%s); message back in %ds", error, delay)
            self._settler.retry_later(record, delay)
            if record.group_id is not None and record.sequence_number is not None:
                first = waiting.get(record.group_id)
                if first is None or record.sequence_number < first[0]:
                    waiting[record.group_id] = (record.sequence_number, delay)
        if not waiting:
            return resolved.messages
        taken: list[Any] = []
        for message in resolved.messages:
            attributes = message.get("Attributes", {})
            group = waiting.get(str(attributes.get("MessageGroupId")))
            sequence = str(attributes.get("SequenceNumber", ""))
            if group is not None and sequence.isdigit() and int(sequence) > group[0]:
                self._settler.give_back([self._settler.track(message)], delay_seconds=group[1] + 1)
            else:
                taken.append(message)
        return taken

    async def _receive(self, count: int) -> list[dict[str, Any]]:
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
            messages: list[dict[str, Any]] = reply.get("Messages", [])
            self._telemetry.record_batch(span, messages)
            self._telemetry.received(len(messages))
            return messages
