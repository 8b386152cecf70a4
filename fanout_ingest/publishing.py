"""Events → SNS, micro-batched: a request's events are published before it is answered.

``serving`` awaits :meth:`Publisher.publish` with a request's events; it returns once SNS
has accepted every one of them, or raises a :class:`PublishError` (the request is then
answered 503 and Genesys retries it). Inside::

    publish(events) ─► offload the large ones to S3 (the extended clients' pointer)
                    ─► waiting queue ──batching.decide/take──► PublishBatch (≤ 10, ≤ 256 KiB)
                                                                │ per entry: ok / failed
                    ◄── every event's future resolved ◄─────────┘

Concurrent requests share calls: an event that finds no call in flight leaves at once, unless
the recent arrival rate fills a call of ten within ``publishing.batchWindowMilliseconds``
(then the call is held until it is full or the window is over); while calls are in flight,
arriving events wait for one to come back and leave together, up to ten per call, a full
call of ten at once (``batching.decide``; an event that waited
``publishing.lingerMilliseconds`` for calls that do not come back gets its own). A failed
entry that SNS says may succeed later (throttling, an internal error) is retried once in the
next call. What gave up waiting (the request's deadline passed) is taken out of the queue,
so it is never published after its request was told 503.

Errors (botocore's translated where they enter, read by ``fanout_core.awsclients``)::

    PublishError (.code: str)
    ├── Saturated     more events waiting than ``limits.maxPendingEvents``
    ├── PublishFailed SNS or S3 refused or could not be reached
    ├── TimedOut      SNS did not answer within ``limits.publishTimeoutSeconds``
    └── TooLarge      an event over SNS's limit, and no ``spec.offload`` bucket (nothing was published)
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import functools
import itertools
import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from fanout_core import awsclients, awserrors, offloading
from fanout_ingest import attributes, batching, classifying, config, telemetry

log = logging.getLogger(__name__)

_ENTRY_RETRIES = 1
_NOT_ANSWERED = awsclients.Failure(awserrors.Kind.UNAVAILABLE, "NotAnswered", answered=True)
"""An entry SNS's reply lists neither as successful nor as failed: worth one more try."""


_FORM_SAFE = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-~"
_FORM_ESCAPES = {
    byte: chr(byte) if byte in _FORM_SAFE else "+" if byte == 0x20 else f"%{byte:02X}" for byte in range(256)
}


def form_encode(params: Mapping[str, Any]) -> str:
    """``urllib.parse.urlencode(params)`` (``quote_plus``, UTF-8), byte for byte, through one
    translation table instead of urllib's per-byte Python loop (about twice as fast on event
    JSON). The names (``PublishBatchRequestEntries.member.3.MessageAttributes.entry.2.Name``:
    ~190 of a full call's ~200 parameters, from a set of a few hundred) are quoted once and
    remembered: a third less time per call."""
    return "&".join([f"{_form_name(name)}={_form_quote(value)}" for name, value in params.items()])


@functools.lru_cache(maxsize=1024)
def _form_name(name: str) -> str:
    return _form_quote(name)


def _form_quote(value: Any) -> str:
    data = value if isinstance(value, bytes) else str(value).encode("utf-8")
    return data.decode("latin-1").translate(_FORM_ESCAPES)


def _encode_body_once(request: Any, **_: Any) -> None:
    if isinstance(request.data, dict):
        request.data = form_encode(request.data)


def tune_client(sns: Any) -> None:
    """Make the SNS client's ``PublishBatch`` calls cheaper: botocore form-encodes a query
    protocol body twice per call (once to sign its hash, once to send it), with urllib's
    per-byte quoting — about a third of a call's CPU for ten events; a ``before-sign`` hook
    (botocore's event system) encodes it once, into the same bytes. (Parameter validation is
    turned off where the client is made: the entries are built here, never by a user.)"""
    sns.meta.events.register("before-sign.sns.PublishBatch", _encode_body_once)


class SnsApi(Protocol):
    async def publish_batch(self, **kwargs: Any) -> dict[str, Any]: ...


class S3Api(Protocol):
    async def put_object(self, **kwargs: Any) -> dict[str, Any]: ...


class PublishError(Exception):
    """The events were not (all) published; ``code`` names why, for metrics and logs.

    Raised by :meth:`Publisher.publish`, ``published`` says which of the request's events
    SNS did accept (a batch can be published in part), in the request's order."""

    def __init__(self, message: str, *, code: str, published: Sequence[bool] = ()) -> None:
        super().__init__(message)
        self.code = code
        self.published = tuple(published)

    def for_request(self, published: Sequence[bool]) -> PublishError:
        """This error as one request's answer (one failed call's error is shared by the
        requests whose events it carried): a fresh copy saying which of its events got in."""
        copy = type(self)(str(self), code=self.code, published=published)
        copy.__cause__ = self.__cause__
        return copy


class Saturated(PublishError):
    pass


class PublishFailed(PublishError):
    pass


class TimedOut(PublishError):
    pass


class TooLarge(PublishError):
    """An event over SNS's limit and no ``spec.offload`` bucket: it can never be published."""


@dataclasses.dataclass(slots=True)
class _Waiting:
    entry: attributes.Entry
    size: int
    enqueued_at: float
    done: asyncio.Future[None]
    retries: int = 0


def translate(error: BaseException, service: str) -> PublishFailed:
    """botocore / network errors → :class:`PublishFailed` with the AWS error code (or the type),
    as ``fanout_core.awsclients.failure_of`` reads them."""
    failure = awsclients.failure_of(error)
    if failure.answered:
        code = failure.code or str(failure.status)
        return PublishFailed(f"{service}: {code} ({failure.kind})", code=code)
    return PublishFailed(f"{service}: {failure.code}", code=failure.code)


class Publisher:
    """One per gateway: the SNS topic's micro-batcher and the S3 offloader."""

    def __init__(
        self,
        *,
        sns: SnsApi,
        s3: S3Api | None,
        spec: config.FanoutIngestSpec,
        telemetry: telemetry.IngestTelemetry,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sns_client = sns
        self._s3_client = s3
        self._topic = spec.topic
        self._offload = spec.offload
        self._limits = spec.limits
        self._max_in_flight = spec.publishing.max_concurrent_calls
        self._telemetry = telemetry
        self._linger = spec.publishing.linger_milliseconds / 1000
        self._batch_window = spec.publishing.batch_window_milliseconds / 1000
        self._arrivals = batching.ArrivalRate()
        self._clock = clock
        self._waiting: collections.deque[_Waiting] = collections.deque()
        self._in_flight = 0
        self._calls: set[asyncio.Task[None]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_due = 0.0
        self._ids = itertools.count()
        self.sns_ok = True

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    # -- the request's side ----------------------------------------------------------------

    async def publish(
        self,
        events: Sequence[classifying.InboundEvent],
        *,
        source: str,
        traceparent: str | None,
        timeout: float | None = None,
    ) -> None:
        """Publish ``events``; return when SNS accepted all of them, else raise PublishError
        (its ``published`` says which did get in). ``timeout``: the longest wait, by default
        ``limits.publishTimeoutSeconds``."""
        if not batching.admits(len(self._waiting), len(events), self._limits.max_pending_events):
            raise Saturated(f"{len(self._waiting)} events waiting for SNS", code="Saturated")
        deadline = self._limits.publish_timeout_seconds if timeout is None else timeout
        futures: list[asyncio.Future[None]] = []
        try:
            async with asyncio.timeout(deadline):
                prepared = await self._prepare(events, source=source, traceparent=traceparent)
                now = self._clock()
                futures = [self._enqueue(made, size, now) for made, size in prepared]
                self._arrivals.add(now, len(futures))
                self._pump()  # once for the whole request: its events leave together
                try:
                    outcomes = await asyncio.gather(*futures, return_exceptions=True)
                finally:
                    for future in futures:
                        future.cancel()  # no-op when done; drops what still waits
        except TimeoutError:
            published = [_succeeded(future) for future in futures]
            raise TimedOut(
                f"SNS did not answer within {deadline:g}s", code="Timeout", published=published
            ) from None
        for outcome in outcomes:
            if isinstance(outcome, PublishError):
                raise outcome.for_request([_succeeded(future) for future in futures])
            if isinstance(outcome, BaseException):
                raise outcome

    async def _prepare(
        self, events: Sequence[classifying.InboundEvent], *, source: str, traceparent: str | None
    ) -> list[tuple[attributes.Entry, int]]:
        prepared: list[tuple[attributes.Entry, int] | None] = [None] * len(events)
        large: list[tuple[int, classifying.InboundEvent]] = []
        for index, event in enumerate(events):
            attrs = attributes.message_attributes(event, source=source, traceparent=traceparent)
            size = attributes.message_size(event.size, attrs)
            threshold = self._offload.threshold_bytes if self._offload else offloading.MESSAGE_LIMIT_BYTES
            if size > threshold:
                if self._offload is None or self._s3_client is None:
                    raise TooLarge(f"event of {size} bytes; SNS takes {threshold}", code="TooLarge")
                large.append((index, event))
                continue
            prepared[index] = (self._entry(event.text, attrs, event), size)
        if large:
            offloaded = await asyncio.gather(
                *(self._store(event, source=source, traceparent=traceparent) for _, event in large)
            )
            for (index, _), made in zip(large, offloaded, strict=True):
                prepared[index] = made
        return [made for made in prepared if made is not None]

    async def _store(
        self, event: classifying.InboundEvent, *, source: str, traceparent: str | None
    ) -> tuple[attributes.Entry, int]:
        """Put a large event in S3 and return the entry carrying its pointer."""
        assert self._offload is not None and self._s3_client is not None  # _prepare checked
        pointer = offloading.Pointer(self._offload.bucket, f"{self._offload.key_prefix}{uuid.uuid4()}")
        try:
            await self._s3_client.put_object(
                Bucket=pointer.bucket,
                Key=pointer.key,
                Body=event.text.encode("utf-8"),
                ContentType="application/json",
            )
        except awsclients.ERRORS as error:
            failure = translate(error, "S3")
            self._telemetry.aws_error("s3", failure.code)
            raise failure from error
        self._telemetry.offloaded(event.size)
        message = offloading.pointer_body(pointer)
        attrs = attributes.message_attributes(
            event, source=source, traceparent=traceparent, offloaded_size=event.size
        )
        return self._entry(message, attrs, event), attributes.message_size(len(message), attrs)

    def _entry(
        self, message: str, attrs: dict[str, attributes.AttributeValue], event: classifying.InboundEvent
    ) -> attributes.Entry:
        return attributes.entry(str(next(self._ids)), message, attrs, event, fifo=self._topic.is_fifo)

    def _enqueue(self, entry: attributes.Entry, size: int, now: float) -> asyncio.Future[None]:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append(_Waiting(entry, size, now, done))
        return done

    # -- the calls' side -------------------------------------------------------------------

    def _pump(self) -> None:
        """Start every call the batching rules allow now; otherwise arm the timer for when they
        may (the end of the batch window, or the stall guard), unless an earlier one is armed."""
        while True:
            while self._waiting and self._waiting[0].done.done():
                self._waiting.popleft()  # its request gave up
            now = self._clock()
            oldest = now - self._waiting[0].enqueued_at if self._waiting else 0.0
            decision = batching.decide(
                waiting=len(self._waiting),
                oldest_age=oldest,
                in_flight=self._in_flight,
                max_in_flight=self._max_in_flight,
                linger=self._linger,
                arrival_rate=self._arrivals.per_second(now),
                batch_window=self._batch_window,
            )
            if not decision.send:
                if decision.wait_seconds is not None:
                    self._arm(now, decision.wait_seconds)
                break
            head = itertools.islice(self._waiting, batching.MAX_ENTRIES)
            count = batching.take([waiting.size for waiting in head])
            batch = [self._waiting.popleft() for _ in range(count)]
            batch = [waiting for waiting in batch if not waiting.done.done()]
            if not batch:
                continue
            self._in_flight += 1
            task = asyncio.create_task(self._call(batch))
            self._calls.add(task)
            task.add_done_callback(self._calls.discard)
        self._telemetry.set_waiting(len(self._waiting))

    def _arm(self, now: float, wait_seconds: float) -> None:
        """One timer: a later one already armed gives way (a held call's window ends before a
        stall guard armed earlier would fire); an earlier one stays and looks again then."""
        due = now + wait_seconds
        if self._timer is not None:
            if self._timer_due <= due:
                return
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_later(wait_seconds, self._fire)
        self._timer_due = due

    def _fire(self) -> None:
        self._timer = None
        self._pump()

    async def _call(self, batch: list[_Waiting]) -> None:
        started = self._clock()
        try:
            reply = await self._sns_client.publish_batch(
                TopicArn=self._topic.arn,
                PublishBatchRequestEntries=[waiting.entry for waiting in batch],
            )
        except awsclients.ERRORS as error:
            failure = translate(error, "SNS")
            self.sns_ok = False
            self._telemetry.aws_error("sns", failure.code)
            log.warning("PublishBatch failed: %s", failure)
            for waiting in batch:
                _fail(waiting, failure)
            return
        except BaseException as error:  # cancelled on shutdown, or a bug: never leave a request hanging
            for waiting in batch:
                _fail(waiting, PublishFailed(f"SNS: {type(error).__name__}", code=type(error).__name__))
            raise
        finally:
            self._in_flight -= 1
            self._telemetry.publish_call(len(batch), self._clock() - started)
            self._pump()
        self.sns_ok = True
        self._settle(batch, reply)

    def _settle(self, batch: list[_Waiting], reply: dict[str, Any]) -> None:
        by_id = {waiting.entry["Id"]: waiting for waiting in batch}
        for success in reply.get("Successful", []):
            waiting = by_id.pop(str(success.get("Id")), None)
            if waiting is not None and not waiting.done.done():
                waiting.done.set_result(None)
        failed = {str(item.get("Id")): item for item in reply.get("Failed", [])}
        retry = []
        for entry_id, waiting in by_id.items():
            failure = awsclients.entry_failure(failed[entry_id]) if entry_id in failed else _NOT_ANSWERED
            self._telemetry.aws_error("sns", failure.code)
            if failure.retryable and waiting.retries < _ENTRY_RETRIES:
                waiting.retries += 1
                retry.append(waiting)
            else:
                _fail(waiting, PublishFailed(f"SNS refused the entry: {failure.code}", code=failure.code))
        if retry:
            self._waiting.extendleft(reversed(retry))
            self._pump()

    async def aclose(self) -> None:
        """Wait for the calls in flight (their requests are being answered)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._pump_remaining()
        if self._calls:
            await asyncio.wait(set(self._calls), timeout=self._limits.publish_timeout_seconds)
        for task in set(self._calls):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _pump_remaining(self) -> None:
        """Send whatever still waits, without lingering or holding."""
        saved = self._linger, self._batch_window
        self._linger, self._batch_window = 0.0, 0.0
        try:
            self._pump()
        finally:
            self._linger, self._batch_window = saved


def _succeeded(future: asyncio.Future[None]) -> bool:
    return future.done() and not future.cancelled() and future.exception() is None


def _fail(waiting: _Waiting, error: PublishError) -> None:
    if not waiting.done.done():
        waiting.done.set_exception(error)
