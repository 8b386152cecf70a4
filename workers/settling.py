"""Everything that ends a message's stay with us: deletes, visibility changes, dead-letters.

``polling`` hands every received message to :meth:`Settler.track`; from then on the
message counts against the in-flight budget until exactly one settling action has
been carried out for it:

* :meth:`Settler.delete` — done (delivered, filtered, duplicate); batched
  ``DeleteMessageBatch``, flushed at 10 entries or after a short linger;
* :meth:`Settler.retry_later` — make it visible again after a delay (backoff or
  Retry-After); batched ``ChangeMessageVisibilityBatch``;
* :meth:`Settler.give_back` — visible again now (shutdown), or after a given delay (a
  FIFO group handed back behind its failed head);
* :meth:`Settler.dead_letter` — ``SendMessage`` to the dead-letter queue with the
  reason in message attributes, then delete; without a dead-letter queue the message
  is left to the source queue's redrive policy (made visible after a backoff). It says
  whether the message is gone for good: a failed copy keeps it (retried later), and the
  caller must not let its conversation or group move on. The caller records each copy
  in the idempotency store, so a redelivered message that was already copied is only
  deleted (:meth:`Settler.dead_lettered_before`), never copied twice.

Meanwhile the heartbeat extends the visibility of every tracked message before it
expires, never beyond SQS's 12-hour cap. Failures of these calls never crash the
worker: an expired receipt handle is counted and logged; anything else is retried a
few times and then left to the visibility timeout, which loses nothing. The batchers and
the heartbeat run under :func:`workers.supervision.supervise`; :meth:`Settler.aclose`
waits a bounded time for the last batches, so a dead endpoint cannot hold up a shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import heapq
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol

from workers import events, retrying, sqs, supervision, telemetry

log = logging.getLogger(__name__)

BATCH_MAX = 10
VISIBILITY_CAP_SECONDS = 43_200
_CAP_SAFETY_SECONDS = 30.0
_ATTEMPTS_PER_CALL = 3
_MAX_DLQ_REASON = 1000
CLOSE_TIMEOUT_SECONDS = 5.0
"""How long :meth:`Settler.aclose` waits for the last deletes and visibility changes."""


class State(enum.Enum):
    HELD = "held"  # ours: heartbeated, counts against the budget
    SETTLING = "settling"  # an action is queued or under way; still counts
    SETTLED = "settled"  # gone from our hands


@dataclasses.dataclass(eq=False)
class Received:
    """One received SQS message while it is in our hands."""

    message: Mapping[str, Any]
    message_id: events.MessageId
    receipt_handle: events.ReceiptHandle
    receive_count: int
    received_at: float  # monotonic
    visible_until: float  # monotonic
    group_id: str | None
    sequence_number: int | None = None
    """FIFO only: the group's order, whatever order the messages arrive in."""
    event: events.Event | None = None
    state: State = State.HELD

    @property
    def sent_timestamp_ms(self) -> int | None:
        raw = self.message.get("Attributes", {}).get("SentTimestamp")
        return int(raw) if raw and str(raw).isdigit() else None

    @classmethod
    def from_message(cls, message: Mapping[str, Any], *, now: float, visibility: float) -> Received:
        attributes = message.get("Attributes", {})
        count = str(attributes.get("ApproximateReceiveCount", "1"))
        sequence = str(attributes.get("SequenceNumber", ""))
        return cls(
            message=message,
            message_id=events.MessageId(str(message["MessageId"])),
            receipt_handle=events.ReceiptHandle(str(message["ReceiptHandle"])),
            receive_count=int(count) if count.isdigit() else 1,
            received_at=now,
            visible_until=now + visibility,
            group_id=attributes.get("MessageGroupId"),
            sequence_number=int(sequence) if sequence.isdigit() else None,
        )


class Budget(Protocol):
    def release(self, count: int) -> None: ...


@dataclasses.dataclass(frozen=True)
class _Entry:
    record: Received
    visibility: int | None = None  # None = delete
    heartbeat: bool = False


class _Batcher:
    """Collects entries and sends them in batches of ten, or after ``linger`` seconds."""

    def __init__(self, send: Callable[[list[_Entry]], Awaitable[None]], linger: float) -> None:
        self._send = send
        self._linger = linger
        self._queue: asyncio.Queue[_Entry] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    def put(self, entry: _Entry) -> None:
        self._queue.put_nowait(entry)

    def start(self, health: supervision.Health) -> None:
        self._task = asyncio.create_task(
            supervision.supervise("settling-batcher", self._run, health=health), name="settling-batcher"
        )

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            try:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._linger):
                        while len(batch) < BATCH_MAX:
                            batch.append(await self._queue.get())
                while len(batch) < BATCH_MAX and not self._queue.empty():
                    batch.append(self._queue.get_nowait())
                await self._send(batch)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug must not stop settling; the messages reappear on their own
                log.exception("settling batch failed")
            finally:
                for _ in batch:
                    self._queue.task_done()

    async def flush(self) -> None:
        """Wait until everything queued so far has been sent."""
        await self._queue.join()

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


class Settler:
    """Settles the messages of one source queue; one per worker."""

    def __init__(
        self,
        *,
        client: sqs.SqsApi,
        queue_url: events.QueueUrl,
        visibility_timeout: int,
        dead_letter_url: events.QueueUrl | None,
        budget: Budget,
        telemetry: telemetry.WorkerTelemetry,
        health: supervision.Health | None = None,
        linger: float = 0.05,
        clock: Callable[[], float] = time.monotonic,
        on_deleted: Callable[[list[Mapping[str, Any]]], None] | None = None,
    ) -> None:
        self._client = client
        self._queue_url = queue_url
        self._visibility = visibility_timeout
        self._dead_letter_url = dead_letter_url
        self._budget = budget
        self._telemetry = telemetry
        self._clock = clock
        self._on_deleted = on_deleted  # payloads: delete the S3 objects of deleted messages
        self._held: dict[Received, None] = {}  # insertion-ordered set, by identity
        self._away: list[float] = []  # a heap: when messages made invisible for a while are due
        self._deletes = _Batcher(self._send_deletes, linger)
        self._changes = _Batcher(self._send_changes, linger)
        self._heartbeat: asyncio.Task[None] | None = None
        self._health = health or supervision.Health()

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        self._deletes.start(self._health)
        self._changes.start(self._health)
        self._heartbeat = asyncio.create_task(
            supervision.supervise("visibility-heartbeat", self._heartbeat_forever, health=self._health),
            name="visibility-heartbeat",
        )

    async def aclose(self, timeout: float = CLOSE_TIMEOUT_SECONDS) -> None:
        """Flush every queued action (for at most ``timeout`` seconds), then stop.

        Called after the in-flight work has ended. What cannot be sent in time is left to
        the visibility timeout: those messages reappear, which loses nothing.
        """
        try:
            async with asyncio.timeout(timeout):
                await self.flush()
        except TimeoutError:
            log.warning("settling did not finish before shutdown; the rest reappears after its visibility")
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
        await self._deletes.aclose()
        await self._changes.aclose()

    # -- tracking --------------------------------------------------------------------------

    def track(self, message: Mapping[str, Any]) -> Received:
        record = Received.from_message(message, now=self._clock(), visibility=self._visibility)
        self._held[record] = None
        self._telemetry.set_in_flight(len(self._held))
        return record

    @property
    def in_flight(self) -> int:
        return len(self._held)

    @property
    def settling(self) -> int:
        """Held messages whose settling action is queued or under way (done with, for the sink)."""
        return sum(1 for record in self._held if record.state is State.SETTLING)

    @property
    def away(self) -> int:
        """Messages this worker put back invisible for a while (a retry, a hand-back with a
        delay) that are not due yet: in flight for SQS, held by nobody (``workers.fleet``)."""
        now = self._clock()
        while self._away and self._away[0] <= now:
            heapq.heappop(self._away)
        return len(self._away)

    # -- actions ---------------------------------------------------------------------------

    def delete(self, record: Received) -> None:
        if self._begin(record):
            self._deletes.put(_Entry(record))

    def retry_later(self, record: Received, delay_seconds: float) -> None:
        if self._begin(record):
            self._put_back(record, delay_seconds)

    def give_back(self, records: Sequence[Received], *, delay_seconds: float = 0.0) -> None:
        """Make messages visible again, now or after ``delay_seconds``; SQS redelivers them."""
        given = [record for record in records if self._begin(record)]
        for record in given:
            self._put_back(record, delay_seconds)
        if given:
            self._telemetry.returned(len(given))

    @property
    def has_dead_letter_queue(self) -> bool:
        return self._dead_letter_url is not None

    async def dead_letter(
        self, record: Received, *, reason_class: telemetry.ReasonClass, reason: str, backoff: float
    ) -> bool:
        """Move the message to the dead-letter queue with its reason, then delete it.

        Without a dead-letter queue the message is made visible again after ``backoff``
        and the source queue's redrive policy decides. If the dead-letter queue cannot
        be written, the message is retried after ``backoff`` (nothing is deleted that was
        not copied) and the answer is False: it is not gone, and its conversation (FIFO:
        its group) must wait for it. True: it is out of our hands for good.
        """
        if record.state is not State.HELD:
            return True
        if self._dead_letter_url is None:
            self._telemetry.dead_lettered(record.message, record.event, reason_class, reason)
            self.retry_later(record, backoff)
            return True
        record.state = State.SETTLING
        try:
            await sqs.call(
                self._client.send_message,
                **dead_letter_request(
                    record,
                    dead_letter_url=self._dead_letter_url,
                    source_queue_url=self._queue_url,
                    reason_class=reason_class,
                    reason=reason,
                ),
            )
        except sqs.SqsError as error:
            log.warning("dead-letter queue write failed (%s); message retried later", error)
            record.state = State.HELD
            self.retry_later(record, backoff)
            return False
        # The delete first: nothing after the copy may stand between it and the delete.
        self._deletes.put(_Entry(record))
        self._telemetry.dead_lettered(record.message, record.event, reason_class, reason)
        return True

    def dead_lettered_before(self, record: Received, *, backoff: float) -> None:
        """A message this worker (or another replica) already copied to the dead-letter
        queue, back because its delete was lost: delete it without a second copy (or,
        without a dead-letter queue, leave it to the redrive policy without counting it
        again)."""
        if self._dead_letter_url is None:
            self.retry_later(record, backoff)
        else:
            self.delete(record)

    async def flush(self) -> None:
        await self._deletes.flush()
        await self._changes.flush()

    # -- internals -------------------------------------------------------------------------

    def _begin(self, record: Received) -> bool:
        if record.state is not State.HELD:
            return False
        record.state = State.SETTLING
        return True

    def _done(self, records: Sequence[Received]) -> None:
        for record in records:
            if record.state is not State.SETTLED:
                record.state = State.SETTLED
                if record in self._held:
                    del self._held[record]
                    self._budget.release(1)
        self._telemetry.set_in_flight(len(self._held))

    def _put_back(self, record: Received, delay_seconds: float) -> None:
        visibility = self._cap(record, delay_seconds)
        self._changes.put(_Entry(record, visibility=visibility))
        if visibility > 0:
            heapq.heappush(self._away, self._clock() + visibility)

    def _cap(self, record: Received, seconds: float) -> int:
        """``seconds`` as a VisibilityTimeout (rounded up) within what SQS still allows:
        12 hours from the receive, not from now."""
        held_for = self._clock() - record.received_at
        room = VISIBILITY_CAP_SECONDS - held_for - _CAP_SAFETY_SECONDS
        return max(0, min(retrying.visibility_seconds(seconds), int(room)))

    async def _send_deletes(self, batch: list[_Entry]) -> None:
        failed = await self._send_batch(
            batch,
            self._client.delete_message_batch,
            lambda index, entry: {"Id": str(index), "ReceiptHandle": entry.record.receipt_handle},
        )
        done = [entry.record for entry in batch if entry not in failed]
        self._telemetry.deleted(len(done))
        if self._on_deleted is not None and done:
            self._on_deleted([record.message for record in done])
        self._done([entry.record for entry in batch])

    async def _send_changes(self, batch: list[_Entry]) -> None:
        failed = await self._send_batch(
            batch,
            self._client.change_message_visibility_batch,
            lambda index, entry: {
                "Id": str(index),
                "ReceiptHandle": entry.record.receipt_handle,
                "VisibilityTimeout": entry.visibility,
            },
        )
        now = self._clock()
        extended = 0
        for entry in batch:
            if not entry.heartbeat:
                continue
            if entry in failed:
                # Not extended: due again at the next beat, while the old timeout still runs.
                entry.record.visible_until = now
            else:
                entry.record.visible_until = now + (entry.visibility or 0)
                extended += 1
        if extended:
            self._telemetry.visibility_extended(extended)
        self._done([entry.record for entry in batch if not entry.heartbeat])

    async def _send_batch(
        self,
        batch: list[_Entry],
        operation: Callable[..., Awaitable[dict[str, Any]]],
        make_entry: Callable[[int, _Entry], dict[str, Any]],
    ) -> list[_Entry]:
        """Send one batch, retrying retryable per-entry failures; return what finally failed."""
        pending = dict(enumerate(batch))
        for attempt in range(_ATTEMPTS_PER_CALL):
            try:
                reply = await sqs.call(
                    operation,
                    QueueUrl=self._queue_url,
                    Entries=[make_entry(index, entry) for index, entry in pending.items()],
                )
            except sqs.SqsError as error:
                log.warning("%s failed (attempt %d): %s", operation.__name__, attempt + 1, error)
                if not error.retryable:
                    break
                await asyncio.sleep(retrying.exponential_delay(attempt + 1, base=0.2, cap=2.0))
                continue
            retry: dict[int, _Entry] = {}
            for failure in reply.get("Failed", []):
                index = int(failure["Id"])
                code = str(failure.get("Code", "Unknown"))
                if sqs.is_expired_receipt(code):
                    self._telemetry.receipt_expired(1)
                elif not failure.get("SenderFault", False) and index in pending:
                    retry[index] = pending[index]
                    continue
                else:
                    self._telemetry.delete_failed(1, code)
            pending = retry
            if not pending:
                return []
            await asyncio.sleep(retrying.exponential_delay(attempt + 1, base=0.2, cap=2.0))
        return list(pending.values())

    async def _heartbeat_forever(self) -> None:
        interval = max(0.5, min(self._visibility / 3, 10.0))
        margin = max(1.0, self._visibility / 2)
        while True:
            await asyncio.sleep(interval)
            now = self._clock()
            for record in list(self._held):
                if record.state is State.HELD and record.visible_until - now < margin:
                    extension = self._cap(record, self._visibility)
                    if extension > record.visible_until - now:
                        self._changes.put(_Entry(record, visibility=extension, heartbeat=True))
                        # Do not queue it again before this one is answered.
                        record.visible_until = now + margin + interval


def dead_letter_request(
    record: Received,
    *,
    dead_letter_url: events.QueueUrl,
    source_queue_url: events.QueueUrl,
    reason_class: telemetry.ReasonClass,
    reason: str,
) -> dict[str, Any]:
    """The SendMessage request that copies ``record`` to the dead-letter queue.

    The body is unchanged. The reason travels in message attributes (SQS allows ten;
    ours come first, the original attributes fill the rest). A FIFO dead-letter queue
    gets a group id (the original group, else the ordering key) and the source message
    id as deduplication id, so a repeated write within five minutes is dropped.
    """
    attributes: dict[str, dict[str, str]] = {
        "fanout.reason": {"DataType": "String", "StringValue": reason[:_MAX_DLQ_REASON] or "-"},
        "fanout.reason-class": {"DataType": "String", "StringValue": str(reason_class)},
        "fanout.attempts": {"DataType": "Number", "StringValue": str(record.receive_count)},
        "fanout.source-queue": {"DataType": "String", "StringValue": source_queue_url},
    }
    original = record.message.get("MessageAttributes", {})
    for name, value in original.items():
        if len(attributes) >= 10:
            break
        if name in attributes or not isinstance(value, Mapping):
            continue
        kept = {key: value[key] for key in ("DataType", "StringValue", "BinaryValue") if key in value}
        if "DataType" in kept and ("StringValue" in kept or "BinaryValue" in kept):
            attributes[name] = kept
    request: dict[str, Any] = {
        "QueueUrl": dead_letter_url,
        "MessageBody": record.message.get("Body", ""),
        "MessageAttributes": attributes,
    }
    if dead_letter_url.rstrip("/").endswith(".fifo"):
        key = record.event.ordering_key if record.event is not None else None
        request["MessageGroupId"] = record.group_id or key or "fanout-dead-letter"
        request["MessageDeduplicationId"] = record.message_id[:128]
    return request
