"""The long-poll loop: receive only what we can finish, only while the sink takes work.

``running`` starts ``spec.queue.pollers`` :class:`Poller` tasks sharing one
:class:`Budget`. Before each ``ReceiveMessage`` a poller

1. waits while the sink is not accepting (paused by Retry-After, circuit open): the
   messages wait in SQS, where they are safe, instead of in our memory;
2. reserves room in the in-flight budget (received, not yet settled) and asks for no
   more than that, so the worker never holds more than it can finish or heartbeat.

Messages whose body is an S3 pointer (an event too large for SQS) are resolved first
(``payloads``), so the processor takes in the real event. Received messages are tracked by
the settler (which heartbeats them and frees their budget when they are settled) and handed
to the processor. An empty receive costs
the long poll only. Receive errors never end the loop: they mark the worker unready
and back off.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from fanout_core import spec as spec_model
from workers import messages, payloads, retrying, sqs, telemetry
from workers.sinks import base

log = logging.getLogger(__name__)

_MAX_ERROR_BACKOFF = 30.0
_PAYLOAD_RETRY_SECONDS = 10.0
_MAX_PAYLOAD_RETRY_SECONDS = 300.0


class Tracker(Protocol):
    """What a poller needs of the settler: take a received message in hand, or send it back."""

    def track(self, message: messages.Message) -> None: ...
    def retry_later(self, message: messages.Message, delay_seconds: float) -> None: ...
    def give_back(self, given: Sequence[messages.Message], *, delay_seconds: float = 0.0) -> None: ...


class Budget:
    """A bounded count of messages in our hands; pollers reserve before they receive."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._used = 0
        self._room = asyncio.Event()
        self._room.set()

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
    ) -> None:
        self._client = client
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
            failures = 0
            self._on_health(True)
            self._budget.release(granted - len(received))
            if self._resolver is not None and received:
                received = await self._resolve(received)
            for message in received:
                self._settler.track(message)
            if received:
                self._submit(received)

    async def _resolve(self, received: list[messages.Message]) -> list[messages.Message]:
        """S3 pointers resolved before intake; what S3 cannot serve now comes back later.

        On a FIFO queue a conversation's later messages of the same receive go back with it,
        a second later than it, so that none is delivered before it and SQS serves it first
        (on any SQS: it is visible while they are not).
        """
        assert self._resolver is not None
        resolved = await self._resolver.resolve(received)
        waiting: dict[str, tuple[int, float]] = {}  # group -> (first sequence number, delay)
        for message, error in resolved.unavailable:
            self._settler.track(message)
            delay = retrying.exponential_delay(
                message.receive_count, base=_PAYLOAD_RETRY_SECONDS, cap=_MAX_PAYLOAD_RETRY_SECONDS
            )
            log.warning("large payload not readable now (%s); message back in %.0fs", error, delay)
            self._settler.retry_later(message, delay)
            if message.group_id is not None and message.sequence_number is not None:
                first = waiting.get(message.group_id)
                if first is None or message.sequence_number < first[0]:
                    waiting[message.group_id] = (message.sequence_number, delay)
        if not waiting:
            return resolved.ready
        taken: list[messages.Message] = []
        for message in resolved.ready:
            group = waiting.get(message.group_id) if message.group_id is not None else None
            if (
                group is not None
                and message.sequence_number is not None
                and message.sequence_number > group[0]
            ):
                self._settler.track(message)
                self._settler.give_back([message], delay_seconds=group[1] + 1)
            else:
                taken.append(message)
        return taken

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
