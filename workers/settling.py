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
import collections
import contextlib
import dataclasses
import enum
import heapq
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from fanout_core import awsclients
from workers import events, messages, retrying, sqs, supervision, telemetry

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


@dataclasses.dataclass(eq=False, slots=True)
class _Holding:
    """A message in our hands, and what the settler knows of it (its state, its visibility)."""

    message: messages.Message
    received_at: float  # monotonic
    visible_until: float  # monotonic
    state: State = State.HELD


class SupportsRelease(Protocol):
    """Where a settled message's room goes back: the pollers' in-flight budget (``polling.Budget``)."""

    def release(self, count: int) -> None: ...


@dataclasses.dataclass(frozen=True, eq=False)
class _Entry:
    holding: _Holding
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


@dataclasses.dataclass
class _Sent:
    """What became of a batch: entries that finally failed (with the last error code), and
    entries whose receipt handle had expired (counted apart, never retried)."""

    failed: dict[_Entry, str] = dataclasses.field(default_factory=dict)
    expired: set[_Entry] = dataclasses.field(default_factory=set)

    def succeeded(self, entry: _Entry) -> bool:
        return entry not in self.failed and entry not in self.expired

    def failure_counts(self) -> dict[str, int]:
        return dict(collections.Counter(self.failed.values()))


class Settler:
    """Settles the messages of one source queue; one per worker."""

    def __init__(
        self,
        *,
        client: sqs.SqsApi,
        queue_url: events.QueueUrl,
        visibility_timeout: int,
        dead_letter_url: events.QueueUrl | None,
        budget: SupportsRelease,
        telemetry: telemetry.WorkerTelemetry,
        health: supervision.Health | None = None,
        linger: float = 0.05,
        clock: Callable[[], float] = time.monotonic,
        on_deleted: Callable[[list[messages.Message]], None] | None = None,
    ) -> None:
        self._client = client
        self._queue_url = queue_url
        self._visibility = visibility_timeout
        self._dead_letter_url = dead_letter_url
        self._budget = budget
        self._telemetry = telemetry
        self._clock = clock
        self._on_deleted = on_deleted  # payloads: delete the S3 objects of deleted messages
        # By receipt handle, which names one receive (every SQS, moto too, gives each receive
        # its own): two receives of one message are settled apart, and a message taken in
        # later with its payload resolved (a new Message of the same receive) is the same.
        self._held: dict[events.ReceiptHandle, _Holding] = {}  # in arrival order
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

    def track(self, message: messages.Message) -> None:
        """Take ``message`` in hand: heartbeated and counted until one action settles it."""
        now = self._clock()
        self._held[message.receipt_handle] = _Holding(
            message, received_at=now, visible_until=now + self._visibility
        )
        self._telemetry.set_in_flight(len(self._held))

    @property
    def in_flight(self) -> int:
        return len(self._held)

    @property
    def settling(self) -> int:
        """Held messages whose settling action is queued or under way (done with, for the sink)."""
        return sum(1 for holding in self._held.values() if holding.state is State.SETTLING)

    @property
    def away(self) -> int:
        """Messages this worker put back invisible for a while (a retry, a hand-back with a
        delay) that are not due yet: in flight for SQS, held by nobody (``workers.fleet``)."""
        now = self._clock()
        while self._away and self._away[0] <= now:
            heapq.heappop(self._away)
        return len(self._away)

    # -- actions ---------------------------------------------------------------------------
    # Each takes a message tracked before; the first action settles it, any later one (or one
    # on a message not in hand) is ignored.

    def delete(self, message: messages.Message) -> None:
        holding = self._begin(message)
        if holding is not None:
            self._deletes.put(_Entry(holding))

    def retry_later(self, message: messages.Message, delay_seconds: float) -> None:
        holding = self._begin(message)
        if holding is not None:
            self._put_back(holding, delay_seconds)

    def give_back(self, given: Sequence[messages.Message], *, delay_seconds: float = 0.0) -> None:
        """Make messages visible again, now or after ``delay_seconds``; SQS redelivers them."""
        count = 0
        for message in given:
            holding = self._begin(message)
            if holding is not None:
                self._put_back(holding, delay_seconds)
                count += 1
        if count:
            self._telemetry.returned(count)

    async def dead_letter(
        self,
        message: messages.Message,
        event: events.Event | None,
        *,
        reason_class: events.ReasonClass,
        reason: str,
        backoff: float,
    ) -> bool:
        """Move the message to the dead-letter queue with its reason, then delete it.

        ``event`` is what the message decoded to (None for a poison message). Without a
        dead-letter queue the message is made visible again after ``backoff`` and the source
        queue's redrive policy decides. If the dead-letter queue cannot be written, the
        message is retried after ``backoff`` (nothing is deleted that was not copied) and the
        answer is False: it is not gone, and its conversation (FIFO: its group) must wait for
        it. True: it is out of our hands for good.
        """
        holding = self._held.get(message.receipt_handle)
        if holding is None or holding.state is not State.HELD:
            return True
        if self._dead_letter_url is None:
            self._telemetry.dead_lettered(message, event, reason_class, reason)
            self.retry_later(message, backoff)
            return True
        holding.state = State.SETTLING
        try:
            await sqs.call(
                self._client.send_message,
                **dead_letter_request(
                    message,
                    event,
                    dead_letter_url=self._dead_letter_url,
                    source_queue_url=self._queue_url,
                    reason_class=reason_class,
                    reason=reason,
                ),
            )
        except sqs.SqsError as error:
            log.warning("dead-letter queue write failed (%s); message retried later", error)
            holding.state = State.HELD
            self.retry_later(message, backoff)
            return False
        # The delete first: nothing after the copy may stand between it and the delete.
        self._deletes.put(_Entry(holding))
        self._telemetry.dead_lettered(message, event, reason_class, reason)
        return True

    def dead_lettered_before(self, message: messages.Message, *, backoff: float) -> None:
        """A message this worker (or another replica) already copied to the dead-letter
        queue, back because its delete was lost: delete it without a second copy (or,
        without a dead-letter queue, leave it to the redrive policy without counting it
        again)."""
        if self._dead_letter_url is None:
            self.retry_later(message, backoff)
        else:
            self.delete(message)

    async def flush(self) -> None:
        await self._deletes.flush()
        await self._changes.flush()

    # -- internals -------------------------------------------------------------------------

    def _begin(self, message: messages.Message) -> _Holding | None:
        holding = self._held.get(message.receipt_handle)
        if holding is None or holding.state is not State.HELD:
            return None
        holding.state = State.SETTLING
        return holding

    def _done(self, holdings: Sequence[_Holding]) -> None:
        for holding in holdings:
            if holding.state is not State.SETTLED:
                holding.state = State.SETTLED
                if self._held.get(holding.message.receipt_handle) is holding:
                    del self._held[holding.message.receipt_handle]
                    self._budget.release(1)
        self._telemetry.set_in_flight(len(self._held))

    def _put_back(self, holding: _Holding, delay_seconds: float) -> None:
        visibility = self._cap(holding, delay_seconds)
        self._changes.put(_Entry(holding, visibility=visibility))
        if visibility > 0:
            heapq.heappush(self._away, self._clock() + visibility)

    def _cap(self, holding: _Holding, seconds: float) -> int:
        """``seconds`` as a VisibilityTimeout within what SQS still allows: 12 hours from the
        receive, not from now."""
        return retrying.visibility_timeout(seconds, held_for=self._clock() - holding.received_at)

    async def _send_deletes(self, batch: list[_Entry]) -> None:
        sent = await self._send_batch(
            batch,
            self._client.delete_message_batch,
            lambda index, entry: {"Id": str(index), "ReceiptHandle": entry.holding.message.receipt_handle},
        )
        done = [entry.holding.message for entry in batch if sent.succeeded(entry)]
        self._telemetry.deleted(len(done))
        for code, count in sent.failure_counts().items():
            self._telemetry.delete_failed(count, code)
        if self._on_deleted is not None and done:
            self._on_deleted(done)
        self._done([entry.holding for entry in batch])

    async def _send_changes(self, batch: list[_Entry]) -> None:
        sent = await self._send_batch(
            batch,
            self._client.change_message_visibility_batch,
            lambda index, entry: {
                "Id": str(index),
                "ReceiptHandle": entry.holding.message.receipt_handle,
                "VisibilityTimeout": entry.visibility,
            },
        )
        for code, count in sent.failure_counts().items():
            self._telemetry.visibility_failed(count, code)
        now = self._clock()
        extended = 0
        for entry in batch:
            if not entry.heartbeat:
                continue
            if entry in sent.failed:
                # Not extended: due again at the next beat, while the old timeout still runs.
                entry.holding.visible_until = now
            elif entry in sent.expired:
                # Another receive holds the message now: nothing to extend, nothing to retry.
                entry.holding.visible_until = now + (entry.visibility or 0)
            else:
                entry.holding.visible_until = now + (entry.visibility or 0)
                extended += 1
        if extended:
            self._telemetry.visibility_extended(extended)
        self._done([entry.holding for entry in batch if not entry.heartbeat])

    async def _send_batch(
        self,
        batch: list[_Entry],
        operation: Callable[..., Awaitable[dict[str, Any]]],
        make_entry: Callable[[int, _Entry], dict[str, Any]],
    ) -> _Sent:
        """Send one batch, retrying what may succeed later (the call, or single entries)."""
        sent = _Sent()
        pending = dict(enumerate(batch))
        code = "Unknown"
        for attempt in range(1, _ATTEMPTS_PER_CALL + 1):
            if attempt > 1:
                await asyncio.sleep(retrying.exponential_delay(attempt - 1, base=0.2, cap=2.0))
            try:
                reply = await sqs.call(
                    operation,
                    QueueUrl=self._queue_url,
                    Entries=[make_entry(index, entry) for index, entry in pending.items()],
                )
            except sqs.SqsError as error:
                log.warning("%s failed (attempt %d): %s", operation.__name__, attempt, error)
                code = error.code or str(error.kind)
                if not error.retryable:
                    break
                continue
            retry: dict[int, _Entry] = {}
            for failure in reply.get("Failed", []):
                entry = pending.get(int(failure["Id"]))
                if entry is None:
                    continue
                read = awsclients.entry_failure(failure)
                code = read.code
                if sqs.is_expired_receipt(code):
                    self._telemetry.receipt_expired(1)
                    sent.expired.add(entry)
                elif read.retryable:
                    retry[int(failure["Id"])] = entry
                else:
                    sent.failed[entry] = code
            pending = retry
            if not pending:
                return sent
        for entry in pending.values():
            sent.failed[entry] = code
        return sent

    async def _heartbeat_forever(self) -> None:
        interval = max(0.5, min(self._visibility / 3, 10.0))
        margin = max(1.0, self._visibility / 2)
        while True:
            await asyncio.sleep(interval)
            now = self._clock()
            for holding in list(self._held.values()):
                if holding.state is State.HELD and holding.visible_until - now < margin:
                    extension = self._cap(holding, self._visibility)
                    if extension > holding.visible_until - now:
                        self._changes.put(_Entry(holding, visibility=extension, heartbeat=True))
                        # Do not queue it again before this one is answered.
                        holding.visible_until = now + margin + interval


def dead_letter_request(
    message: messages.Message,
    event: events.Event | None,
    *,
    dead_letter_url: events.QueueUrl,
    source_queue_url: events.QueueUrl,
    reason_class: events.ReasonClass,
    reason: str,
) -> dict[str, Any]:
    """The SendMessage request that copies ``message`` to the dead-letter queue.

    The body is unchanged. The reason travels in message attributes (SQS allows ten;
    ours come first, the original attributes fill the rest). A FIFO dead-letter queue
    gets a group id (the original group, else the ordering key of ``event``) and the source
    message id as deduplication id, so a repeated write within five minutes is dropped.
    """
    attributes: dict[str, dict[str, str | bytes]] = {
        "fanout.reason": {"DataType": "String", "StringValue": reason[:_MAX_DLQ_REASON] or "-"},
        "fanout.reason-class": {"DataType": "String", "StringValue": str(reason_class)},
        "fanout.attempts": {"DataType": "Number", "StringValue": str(message.receive_count)},
        "fanout.source-queue": {"DataType": "String", "StringValue": source_queue_url},
    }
    for name, value in message.attributes.items():
        if len(attributes) >= 10:
            break
        if name not in attributes:
            attributes[name] = value.as_request()
    request: dict[str, Any] = {
        "QueueUrl": dead_letter_url,
        "MessageBody": message.body,
        "MessageAttributes": attributes,
    }
    if dead_letter_url.rstrip("/").endswith(".fifo"):
        key = event.ordering_key if event is not None else None
        request["MessageGroupId"] = message.group_id or key or "fanout-dead-letter"
        request["MessageDeduplicationId"] = message.message_id[:128]
    return request
