"""Events too large for SQS: fetch what an S3 pointer points at, and delete it when done.

AWS's extended clients (and the front door, ``fanout_ingest``) put a body over 256 KiB in S3
and send a pointer instead (``fanout_core.offloading``). ``polling`` hands every receive to
:meth:`Resolver.resolve` before the messages are tracked and submitted, so the processor
sees real events at intake — their ordering keys and event ids are known there, and a
conversation's order is decided on them like on any other event. For each message whose
body is a pointer (raw, or an SNS notification's ``Message``) the object is read with
``s3:GetObject``, all of a receive's objects at once, and the message gets a
:class:`~fanout_core.offloading.Resolution` beside its ``Body`` (the body keeps the pointer:
a dead-letter copy must fit SQS, and a redrive resolves it again; :meth:`workers.messages.Message.resolved`):

=========================================  =====================================================
the object was read                        the rebuilt body; the event is decoded from it
missing (NoSuchKey, NoSuchBucket), or      a failure: the decoder makes it a poison message
larger than ``largePayloads.maxBytes``,    with that reason (dead-lettered once)
or not UTF-8
S3 throttling, unavailable, access denied  :class:`PayloadUnavailable`: the message is not
or a credential refused                    taken in; it comes back after a backoff
=========================================  =====================================================

With ``largePayloads.deleteAfterDelivery`` the settler calls :meth:`Resolver.forget` with the
messages it deleted (delivered, duplicates, filtered), and their objects are deleted
(``s3:DeleteObject``); a dead-lettered message keeps its object. S3 errors are translated
where they enter, through ``fanout_core.awserrors``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Sequence
from typing import Any, Protocol

from fanout_core import awsclients, awserrors, offloading
from fanout_core import spec as spec_model
from workers import messages

log = logging.getLogger(__name__)


class S3Api(Protocol):
    async def get_object(self, **kwargs: Any) -> dict[str, Any]: ...
    async def delete_object(self, **kwargs: Any) -> dict[str, Any]: ...


class PayloadUnavailable(Exception):
    """S3 could not be read for now (throttled, unavailable, access denied): try later."""

    def __init__(self, message: str, *, code: str) -> None:
        super().__init__(message)
        self.code = code


@dataclasses.dataclass(frozen=True, slots=True)
class Resolved:
    """A receive's messages, those with pointers carrying their resolution, and the ones
    that must wait because S3 could not be read."""

    ready: list[messages.Message]
    unavailable: list[tuple[messages.Message, PayloadUnavailable]]


class Resolver:
    """Resolves the S3 pointers of received messages; one per worker."""

    def __init__(self, client: S3Api, spec: spec_model.LargePayloadSpec) -> None:
        self._client = client
        self._spec = spec
        self._deletions: set[asyncio.Task[None]] = set()
        self._last_turn: asyncio.Future[None] | None = None

    async def resolve(self, received: Sequence[messages.Message], *, in_turn: bool = True) -> Resolved:
        """The messages of one receive, pointers resolved (never raises for one message).

        Receives come back in the order their ``ReceiveMessage`` calls returned, whatever
        their fetches took: the poller takes them in as this returns (without awaiting in
        between), so a receive holding a slow S3 read is never overtaken by a later one of
        another poller — a conversation's earlier events are not delivered after its later ones.
        ``in_turn=False``: messages already in our hands read again (a FIFO group waiting in
        place), which must not hold up the receives' turns.
        """
        if not in_turn:
            return await self._resolve(received)
        previous, mine = self._last_turn, asyncio.get_running_loop().create_future()
        self._last_turn = mine
        try:
            resolved = await self._resolve(received)
            if previous is not None and not previous.done():
                await previous
            return resolved
        finally:
            if not mine.done():
                mine.set_result(None)

    async def _resolve(self, received: Sequence[messages.Message]) -> Resolved:
        found = [(message, offloading.locate(message.body)) for message in received]
        pending = [(index, located) for index, (_, located) in enumerate(found) if located is not None]
        if not pending:
            return Resolved(list(received), [])
        fetched = await asyncio.gather(
            *(self._fetch(located) for _, located in pending), return_exceptions=True
        )
        resolved = list(received)
        unavailable: list[tuple[messages.Message, PayloadUnavailable]] = []
        waiting: set[int] = set()
        for (index, _), outcome in zip(pending, fetched, strict=True):
            message = received[index]
            if isinstance(outcome, PayloadUnavailable):
                unavailable.append((message, outcome))
                waiting.add(index)
            elif isinstance(outcome, offloading.Resolution):
                resolved[index] = message.resolved(outcome)
            else:  # a bug; the message is left as it is and decodes as an unresolved pointer
                log.error("payload resolution failed unexpectedly: %r", outcome)
        kept = [message for index, message in enumerate(resolved) if index not in waiting]
        return Resolved(kept, unavailable)

    async def _fetch(self, located: offloading.Located) -> offloading.Resolution:
        pointer = located.pointer
        where = f"s3://{pointer.bucket}/{pointer.key}"
        try:
            reply = await self._client.get_object(Bucket=pointer.bucket, Key=pointer.key)
            length = int(reply.get("ContentLength") or 0)
            async with reply["Body"] as stream:
                if length > self._spec.max_bytes:
                    return offloading.Resolution(
                        pointer,
                        failure=f"S3 payload {where} is {length} bytes; largePayloads.maxBytes "
                        f"is {self._spec.max_bytes}",
                    )
                data = await stream.read()
        except awsclients.ERRORS as error:
            failure = awsclients.failure_of(error)
            code = failure.code or str(failure.status)
            if failure.kind in (awserrors.Kind.NOT_FOUND, awserrors.Kind.INVALID):
                return offloading.Resolution(pointer, failure=f"S3 payload {where} not found ({code})")
            raise PayloadUnavailable(f"S3 payload {where}: {code} ({failure.kind})", code=code) from error
        try:
            payload = data.decode("utf-8")
        except UnicodeDecodeError as error:
            return offloading.Resolution(
                pointer, failure=f"S3 payload {where} is not UTF-8 (byte {error.start})"
            )
        return offloading.Resolution(pointer, body=offloading.resolved_body(located, payload))

    def forget(self, deleted: Sequence[messages.Message]) -> None:
        """The settler deleted these messages: delete their objects too, when configured."""
        if not self._spec.delete_after_delivery:
            return
        for message in deleted:
            resolution = message.resolution
            if resolution is not None and resolution.body is not None:
                task = asyncio.get_running_loop().create_task(self._delete(resolution.pointer))
                self._deletions.add(task)
                task.add_done_callback(self._deletions.discard)

    async def _delete(self, pointer: offloading.Pointer) -> None:
        try:
            await self._client.delete_object(Bucket=pointer.bucket, Key=pointer.key)
        except awsclients.ERRORS as error:
            # The event was delivered; a leftover object costs storage, not correctness (a
            # bucket lifecycle rule collects it).
            failure = awsclients.failure_of(error)
            code = failure.code or str(failure.status)
            log.warning("could not delete s3://%s/%s (%s)", pointer.bucket, pointer.key, code)

    async def drain(self) -> None:
        """Wait for the deletions under way (shutdown)."""
        if self._deletions:
            await asyncio.wait(set(self._deletions), timeout=5)
