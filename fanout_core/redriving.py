"""Reading and redriving a dead-letter queue over SQS: the I/O around ``deadletters`` and ``pacing``.

Shared by the ``fanout dlq`` commands (``fanout_cli.dlq``) and the operator's declarative
redrive, so both move messages by one set of rules::

    peek(...)          receive every message (up to a limit) with a short hold, then make them
                       all visible again at once; nothing is deleted. Each peek adds one to
                       the messages' receive counts (SQS counts every receive), so a
                       dead-letter queue with a redrive policy of its own moves them closer
                       to that policy's maxReceiveCount.
    Redrive.run()      receive → decide (deadletters.GroupGate) → copy to the source queue
                       (SendMessageBatch) → delete the copied ones from the dead-letter queue
                       (DeleteMessageBatch), paced by pacing.Pacer; what stays is made
                       visible again at the end. The run is over when a count finds nothing
                       in flight but this run's own live holds (a killed run's come back
                       when they run out: it waits for them, up to a bound) and a receive
                       after that count brings nothing new.

Copy, then delete: a crash between the two leaves the message in both queues and the next
run copies it again. On a FIFO source queue the copy carries the dead letter's message id
as deduplication id, so SQS drops the second copy (within its five-minute window); on a
standard queue the event arrives twice and the worker's idempotency store (the event id
comes from the payload) delivers it once. Never is a message deleted that was not copied.

Progress is reported as values (``redrive_reports.Progress``, then ``redrive_reports.Report``);
the caller draws a progress bar, writes ``status``, or counts metrics. botocore's errors are translated
where they enter (:func:`call`), read by ``fanout_core.awsclients.failure_of``, into :class:`RedriveError`,
whose message is one line saying what is missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol

from fanout_core import awsclients, awserrors, deadletters, pacing, redrive_reports

BATCH = 10
PEEK_HOLD_SECONDS = 60
QUIET_RECEIVES = 2
"""Receives in a row that bring nothing new before a queue counts as read through."""


class SqsApi(Protocol):
    """The SQS operations used here (an aiobotocore SQS client has them all)."""

    def receive_message(self, **kwargs: Any) -> Awaitable[dict[str, Any]]: ...
    def send_message_batch(self, **kwargs: Any) -> Awaitable[dict[str, Any]]: ...
    def delete_message_batch(self, **kwargs: Any) -> Awaitable[dict[str, Any]]: ...
    def change_message_visibility_batch(self, **kwargs: Any) -> Awaitable[dict[str, Any]]: ...
    def get_queue_attributes(self, **kwargs: Any) -> Awaitable[dict[str, Any]]: ...


class RedriveError(Exception):
    """An SQS call failed; the message is one line naming the queue, the call and the fix."""

    def __init__(self, message: str, *, kind: awserrors.Kind) -> None:
        super().__init__(message)
        self.kind = kind


def queue_name(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[-1] or url


def is_fifo(url: str) -> bool:
    return url.rstrip("/").endswith(".fifo")


def _describe(failure: awsclients.Failure, action: str, url: str) -> str:
    queue = queue_name(url)
    kind, code = failure.kind, failure.code or f"HTTP {failure.status}"
    if kind is awserrors.Kind.NOT_FOUND:
        return f"queue {queue} does not exist ({url})"
    if kind is awserrors.Kind.DENIED:
        return f"not allowed to call sqs:{action} on {queue} ({code}): grant it to this identity"
    if kind is awserrors.Kind.CREDENTIALS and not failure.answered:
        return (
            f"no AWS credentials found, or only part of them ({failure.detail}): set"
            " AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE or a role"
        )
    if kind is awserrors.Kind.CREDENTIALS:
        return f"AWS refused the credentials ({code}): refresh them and run again"
    if kind is awserrors.Kind.THROTTLED:
        return f"SQS throttled {action} on {queue} ({code}): run again in a moment"
    if kind is awserrors.Kind.UNAVAILABLE:
        return f"SQS {action} on {queue} failed ({code or 'no answer'}): check the endpoint and run again"
    return f"SQS refused {action} on {queue} ({code})"


async def call(
    action: str, url: str, operation: Callable[..., Awaitable[dict[str, Any]]], **kwargs: Any
) -> dict[str, Any]:
    """Await one SQS operation on ``url``; its failures become :class:`RedriveError`.

    ``action`` is the IAM action the call needs (``SendMessageBatch`` is authorized as
    ``SendMessage``), so a denial names what to grant.
    """
    try:
        return await operation(QueueUrl=url, **kwargs)
    except awsclients.ERRORS as error:
        failure = awsclients.failure_of(error)
        raise RedriveError(_describe(failure, action, url), kind=failure.kind) from error


@dataclasses.dataclass(frozen=True)
class QueueCounts:
    visible: int
    in_flight: int
    retention_seconds: int | None = None


async def counts(client: SqsApi, url: str) -> QueueCounts:
    """Visible and in-flight messages (approximate, as SQS reports them), and the retention."""
    reply = await call(
        "GetQueueAttributes",
        url,
        client.get_queue_attributes,
        AttributeNames=[
            "ApproximateNumberOfMessages",
            "ApproximateNumberOfMessagesNotVisible",
            "MessageRetentionPeriod",
        ],
    )
    attributes: Mapping[str, str] = reply.get("Attributes", {})

    def number(name: str) -> int | None:
        value = str(attributes.get(name, ""))
        return int(value) if value.isdigit() else None

    return QueueCounts(
        visible=number("ApproximateNumberOfMessages") or 0,
        in_flight=number("ApproximateNumberOfMessagesNotVisible") or 0,
        retention_seconds=number("MessageRetentionPeriod"),
    )


async def _receive(
    client: SqsApi, url: str, *, count: int, wait: int, visibility: int
) -> list[dict[str, Any]]:
    reply = await call(
        "ReceiveMessage",
        url,
        client.receive_message,
        MaxNumberOfMessages=max(1, min(BATCH, count)),
        WaitTimeSeconds=wait,
        VisibilityTimeout=visibility,
        MessageAttributeNames=["All"],
        MessageSystemAttributeNames=["All"],
    )
    messages: list[dict[str, Any]] = reply.get("Messages", [])
    return messages


async def release(client: SqsApi, url: str, receipts: Sequence[str]) -> None:
    """Make received messages visible again at once. Best effort: a message whose release
    fails comes back by itself when its hold runs out."""
    for start in range(0, len(receipts), BATCH):
        entries = [
            {"Id": str(index), "ReceiptHandle": receipt, "VisibilityTimeout": 0}
            for index, receipt in enumerate(receipts[start : start + BATCH])
        ]
        with contextlib.suppress(RedriveError):
            await call(
                "ChangeMessageVisibility", url, client.change_message_visibility_batch, Entries=entries
            )


@dataclasses.dataclass(frozen=True)
class Peek:
    """What a peek saw."""

    letters: list[deadletters.DeadLetter]
    complete: bool
    """False when ``limit`` stopped the peek before the queue was read through."""
    counts: QueueCounts
    """The queue's counts before the peek."""


async def peek(
    client: SqsApi,
    url: str,
    identify: deadletters.Identify,
    *,
    limit: int,
    hold_seconds: int = PEEK_HOLD_SECONDS,
) -> Peek:
    """Every message of ``url`` up to ``limit``, then all made visible again; see the module
    docstring. A FIFO queue shows at most the messages of a group that one receive returns
    (SQS hides the rest of a group while any of it is received)."""
    before = await counts(client, url)
    seen: dict[str, deadletters.DeadLetter] = {}
    receipts: list[str] = []
    quiet = 0
    try:
        while len(seen) < limit and quiet < QUIET_RECEIVES:
            messages = await _receive(
                client, url, count=limit - len(seen), wait=1 if quiet else 0, visibility=hold_seconds
            )
            new = 0
            for message in messages:
                receipts.append(str(message.get("ReceiptHandle", "")))
                letter = deadletters.parse(message, identify)
                if letter.message_id not in seen:
                    seen[letter.message_id] = letter
                    new += 1
            quiet = 0 if new else quiet + 1
    finally:
        await asyncio.shield(release(client, url, receipts))
    return Peek(letters=list(seen.values()), complete=len(seen) < limit, counts=before)


# --- redrive -------------------------------------------------------------------------


SAMPLE_SIZE = 20


@dataclasses.dataclass(frozen=True)
class Hold:
    """A dead letter this run keeps hidden (it stays), and until when it surely is."""

    receipt: str
    """The latest receipt handle: what makes it visible again at the end."""
    until: float
    """Clock time its hold surely runs to (the receive that returned it started earlier)."""


class Redrive:
    """One redrive from ``dead_letter_url`` to ``source_url``; :meth:`run` once.

    ``visibility_seconds`` is how long a received message stays hidden while it is being
    copied (and how long a killed run's messages stay hidden before a rerun sees them);
    ``in_flight_wait_seconds`` how long the end of the run waits for messages someone else
    holds (default: that visibility plus a few seconds).
    """

    def __init__(
        self,
        client: SqsApi,
        *,
        dead_letter_url: str,
        source_url: str,
        selection: deadletters.Selection,
        rate: pacing.RateChoice,
        identify: deadletters.Identify,
        dry_run: bool = False,
        visibility_seconds: int = 30,
        in_flight_wait_seconds: float | None = None,
        on_progress: Callable[[redrive_reports.Progress], None] | None = None,
        stop: asyncio.Event | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_ms: Callable[[], int] = lambda: int(time.time() * 1000),
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._client = client
        self._dlq = dead_letter_url
        self._source = source_url
        self._selection = selection
        self._rate = rate
        self._identify = identify
        self._dry_run = dry_run
        self._visibility = visibility_seconds
        self._in_flight_wait = (
            in_flight_wait_seconds if in_flight_wait_seconds is not None else visibility_seconds + 5.0
        )
        self._on_progress = on_progress
        self._stop = stop or asyncio.Event()
        self._clock = clock
        self._wall_ms = wall_ms
        self._sleep = sleep
        self._gate = deadletters.GroupGate(selection, fifo=is_fifo(dead_letter_url))
        self._pacer = pacing.Pacer(rate, clock())
        self._started = clock()
        self._held: dict[str, Hold] = {}  # message id → its hold; made visible at the end
        self._received_at = clock()  # when the latest receive started
        self._moved_by_class: dict[str, int] = {}
        self._sample: list[deadletters.DeadLetter] = []
        self._moved = self._skipped = self._stayed = self._failed = self._not_deleted = 0
        self._estimated_total = 0

    async def run(self) -> redrive_reports.Report:
        start = await counts(self._client, self._dlq)
        if not self._dry_run:
            await counts(self._client, self._source)  # fail early, naming the source queue
        self._estimated_total = start.visible
        unseen = 0
        try:
            unseen = await self._loop()
        finally:
            await asyncio.shield(
                release(self._client, self._dlq, [hold.receipt for hold in self._held.values()])
            )
        self._report_progress()
        return redrive_reports.Report(
            dead_letter_queue=self._dlq,
            source_queue=self._source,
            selection=self._selection,
            rate=self._rate,
            dry_run=self._dry_run,
            moved=self._moved,
            moved_by_class=dict(self._moved_by_class),
            skipped=self._skipped,
            held=self._stayed,
            failed=self._failed,
            not_deleted=self._not_deleted,
            unseen_in_flight=unseen,
            interrupted=self._stop.is_set(),
            elapsed_seconds=self._clock() - self._started,
            sample=list(self._sample),
        )

    # -- the loop ----------------------------------------------------------------------

    async def _loop(self) -> int:
        """Until the queue is read through (or stopped); the foreign in-flight count left.

        Read through means: a count found nothing in flight but this run's own holds, and a
        receive *after* that count brought nothing new. The order matters: a hold (a killed
        run's) can run out at any moment, and a message whose hold ran out after the last
        receive but before the count is neither received nor in flight; only a receive after
        the count sees it.
        """
        quiet = 0
        quiet_since: float | None = None
        counted_clear = False
        while not self._stop.is_set():
            now = self._clock()
            if not self._dry_run and self._pacer.backlog_due(now):
                backlog = await counts(self._client, self._source)
                self._pacer.observe_backlog(backlog.visible, now)
            allowance = BATCH if self._dry_run else self._pacer.allowance(now)
            if allowance == 0:
                self._report_progress()
                await self._pause(min(self._pacer.wait(now), 1.0))
                continue
            self._received_at = self._clock()
            messages = await _receive(
                self._client, self._dlq, count=allowance, wait=1 if quiet else 0, visibility=self._visibility
            )
            if await self._handle(messages):
                quiet, quiet_since, counted_clear = 0, None, False
                self._report_progress()
                continue
            if counted_clear:
                return 0
            quiet += 1
            if quiet < QUIET_RECEIVES:
                continue
            # Nothing new. Messages someone else holds (a killed run's hold) come back when
            # their visibility runs out: wait for them, up to a bound; then receive once more.
            quiet_since = quiet_since if quiet_since is not None else self._clock()
            foreign = await self._foreign_in_flight()
            if foreign <= 0:
                counted_clear = True
                continue
            if self._clock() - quiet_since >= self._in_flight_wait:
                return foreign
            self._report_progress()
            await self._pause(1.0)
        return 0

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._stop.wait()

    async def _foreign_in_flight(self) -> int:
        """In flight in the dead-letter queue, less what this run surely holds itself.

        A hold of this run that ran out is not in flight any more: subtracting it would hide
        someone else's. One that may have run out counts as foreign (the run waits a little
        longer and receives it back as already seen, held anew).
        """
        now_counts = await counts(self._client, self._dlq)
        answered_at = self._clock()  # SQS counted at some moment before this
        own = sum(1 for hold in self._held.values() if hold.until > answered_at)
        return max(0, now_counts.in_flight - own)

    def _hold(self, letter: deadletters.DeadLetter) -> None:
        self._held[letter.message_id] = Hold(letter.receipt_handle, self._received_at + self._visibility)

    async def _handle(self, messages: list[dict[str, Any]]) -> bool:
        """Decide and execute one received batch; whether it brought anything new."""
        now_ms = self._wall_ms()
        to_move: list[deadletters.DeadLetter] = []
        to_delete_again: list[str] = []
        new = False
        for message in messages:
            letter = deadletters.parse(message, self._identify)
            verdict = self._gate.decide(letter, now_ms)
            if verdict is deadletters.Verdict.SEEN:
                if letter.message_id in self._held:
                    self._hold(letter)
                elif not self._dry_run:
                    # Copied earlier in this run, but its delete failed: delete it now.
                    to_delete_again.append(letter.receipt_handle)
                continue
            new = True
            if verdict is deadletters.Verdict.MOVE:
                to_move.append(letter)
                continue
            self._hold(letter)
            if verdict is deadletters.Verdict.SKIP:
                self._skipped += 1
            else:
                self._stayed += 1
        if to_delete_again:
            deleted = await self._delete(to_delete_again)
            self._not_deleted -= deleted
        if to_move:
            await self._move(to_move)
        return new

    async def _move(self, letters: list[deadletters.DeadLetter]) -> None:
        if self._dry_run:
            for letter in letters:
                self._hold(letter)
                self._count_moved(letter)
                if len(self._sample) < SAMPLE_SIZE:
                    self._sample.append(letter)
            return
        source_fifo = is_fifo(self._source)
        redriven_at = self._wall_ms()
        copies = [
            deadletters.copy_of(letter, source_fifo=source_fifo, redriven_at_ms=redriven_at)
            for letter in letters
        ]
        reply = await call(
            "SendMessage",
            self._source,
            self._client.send_message_batch,
            Entries=[copy.entry(str(index)) for index, copy in enumerate(copies)],
        )
        self._pacer.spend(len(letters), self._clock())
        refused = {
            int(failure["Id"]) for failure in reply.get("Failed", []) if str(failure.get("Id", "")).isdigit()
        }
        copied: list[deadletters.DeadLetter] = []
        for index, letter in enumerate(letters):
            if index in refused:
                self._failed += 1
                self._gate.undo(letter)
                self._hold(letter)
            else:
                copied.append(letter)
        deleted = await self._delete([letter.receipt_handle for letter in copied])
        self._not_deleted += len(copied) - deleted
        for letter in copied:
            self._count_moved(letter)

    async def _delete(self, receipts: Sequence[str]) -> int:
        """Delete from the dead-letter queue; how many went."""
        deleted = 0
        for start in range(0, len(receipts), BATCH):
            chunk = receipts[start : start + BATCH]
            reply = await call(
                "DeleteMessage",
                self._dlq,
                self._client.delete_message_batch,
                Entries=[{"Id": str(index), "ReceiptHandle": receipt} for index, receipt in enumerate(chunk)],
            )
            deleted += len(chunk) - len(reply.get("Failed", []))
        return deleted

    def _count_moved(self, letter: deadletters.DeadLetter) -> None:
        self._moved += 1
        self._moved_by_class[letter.reason_class] = self._moved_by_class.get(letter.reason_class, 0) + 1

    def _report_progress(self) -> None:
        if self._on_progress is None:
            return
        self._on_progress(
            redrive_reports.Progress(
                moved=self._moved,
                skipped=self._skipped,
                held=self._stayed,
                failed=self._failed,
                estimated_total=self._estimated_total,
                elapsed_seconds=self._clock() - self._started,
                rate=self._rate.rate,
                paused=self._pacer.paused,
                dry_run=self._dry_run,
            )
        )
