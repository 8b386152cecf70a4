"""Publish each event once: a retry of an accepted event is answered without a second publish.

``serving`` hands :meth:`Deduplicator.publish` a request's events and the publisher's
``publish``. Genesys retries what it got no 202 for (a timeout, a 503 for a batch that SNS
took in part) and may send one event twice; each event is claimed in an idempotency store
under ``published:<topic name>:<event id>`` (the payload-derived id the workers use,
``fanout_core.keying``) before it is published::

    claim ─► CLAIMED      publish it; SNS has it: complete (after the answer); it has not: release
          ─► COMPLETED    published before: a duplicate, answered 202 and not published again
          ─► IN_PROGRESS  another request is publishing it: wait for that one (in this process:
                          for its outcome; on another replica: claim again every few tens of
                          milliseconds), then as above — a 202 is never given for an event that
                          another request may still fail to publish

An event repeated inside one request is published once. The stores are the workers'
(``fanout_core.idempotency``): ``memory`` (this pod only) or ``dynamodb`` (every replica, the
table shape the workers use; the ``published:`` prefix keeps the records apart if a table is
shared). A claim's lease is the longest a request publishes plus a margin, so the claim of a pod
that died mid-publish frees itself before Genesys' next retry.

The store is a saving in front of the workers' own deduplication, not a condition for
accepting traffic: when it cannot answer, the event is published anyway and the error
counted — never a 5xx because of the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any

from fanout_core import backoff, idempotency, keying
from fanout_ingest import classifying, publishing, telemetry

log = logging.getLogger(__name__)

PublishFunction = Callable[[Sequence[classifying.InboundEvent], float], Awaitable[None]]
"""Publish these events within that many seconds (``publishing.Publisher.publish``, bound
to a request's source and trace); raises ``publishing.PublishError``."""

_POLL_FIRST_SECONDS = 0.02
_POLL_CAP_SECONDS = 0.5


@dataclasses.dataclass(frozen=True, slots=True)
class Outcome:
    """What became of a request's events: all are in SNS now."""

    published: int
    """Published by this request."""
    duplicates: int
    """In SNS already (an earlier request, or a repeat inside this one)."""


@dataclasses.dataclass(slots=True)
class _Claim:
    """One event a request holds, while it decides or publishes it."""

    event: classifying.InboundEvent
    key: keying.EventId
    state: idempotency.ClaimState | None = None
    """None: not claimed (the store failed): published without a record."""
    settled: bool = False
    """Its fate is known: in SNS, or not."""
    _outcome: asyncio.Future[None] | None = None

    def outcome(self) -> asyncio.Future[None]:
        """What another request for the same event waits on (made only when one does:
        concurrent requests for one event are rare, and a future per event is not free)."""
        if self._outcome is None:
            self._outcome = asyncio.get_running_loop().create_future()
            self._outcome.add_done_callback(_retrieve)
        return self._outcome

    def settle(self, error: BaseException | None = None) -> None:
        self.settled = True
        if self._outcome is not None and not self._outcome.done():
            if error is None:
                self._outcome.set_result(None)
            else:
                self._outcome.set_exception(error)


def published_key(topic_name: str, event_id: keying.EventId) -> keying.EventId:
    """The store record that says "this event is in this topic"."""
    return keying.EventId(f"published:{topic_name}:{event_id}")


class Deduplicator:
    """One per gateway. Without a store (``spec.idempotency.enabled: false``) only the repeats
    inside one request are dropped."""

    def __init__(
        self,
        store: idempotency.IdempotencyStore | None,
        *,
        topic_name: str,
        lease_seconds: float,
        telemetry: telemetry.IngestTelemetry,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._topic_name = topic_name
        self._lease_seconds = lease_seconds
        self._telemetry = telemetry
        self._clock = clock
        self._handling: dict[keying.EventId, _Claim] = {}
        self._chores: set[asyncio.Task[None]] = set()
        # Completions wait here for one task to write them (one per burst, not per request).
        self._to_complete: list[keying.EventId] = []
        self._completing: asyncio.Task[None] | None = None

    async def publish(
        self,
        events: Sequence[classifying.InboundEvent],
        publish: PublishFunction,
        *,
        timeout: float,
    ) -> Outcome:
        """Publish those of ``events`` not in SNS yet; return once all are, else raise
        ``publishing.PublishError`` (``TimedOut`` when an event another request holds is
        still not settled at the deadline)."""
        deadline = self._clock() + timeout
        unique: dict[keying.EventId, classifying.InboundEvent] = {}
        for event in events:
            unique.setdefault(event.event_id, event)
        if self._store is None:
            await publish(list(unique.values()), timeout)
            return Outcome(len(unique), len(events) - len(unique))
        mine: list[_Claim] = []
        others: list[asyncio.Future[None]] = []
        for event in unique.values():
            key = published_key(self._topic_name, event.event_id)
            handled = self._handling.get(key)
            if handled is not None:
                others.append(handled.outcome())
                continue
            claim = self._handling[key] = _Claim(event, key)
            mine.append(claim)
        try:
            published = await self._publish_mine(mine, others, publish, deadline)
        finally:
            for claim in mine:
                if not claim.settled:  # cancelled, or a bug: never leave a claim held
                    claim.settle(
                        publishing.PublishFailed("the request that held the event ended", code="Abandoned")
                    )
                    self._release_later(claim)
                self._handling.pop(claim.key, None)
        return Outcome(published, len(events) - published)

    async def _publish_mine(
        self,
        mine: list[_Claim],
        others: list[asyncio.Future[None]],
        publish: PublishFunction,
        deadline: float,
    ) -> int:
        """Claim this request's events, publish the ones it won at once, and wait for the
        ones other requests hold (publishing them if those give them up)."""
        if len(mine) == 1:  # most requests carry one event: no tasks for it
            await self._claim(mine[0])
        else:
            await asyncio.gather(*(self._claim(claim) for claim in mine))
        for claim in mine:
            if claim.state is idempotency.ClaimState.COMPLETED:
                claim.settle()
        won = [claim for claim in mine if claim.state in (idempotency.ClaimState.CLAIMED, None)]
        held = [claim for claim in mine if claim.state is idempotency.ClaimState.IN_PROGRESS]
        if not held and not others:
            return await self._publish_claimed(won, publish, deadline) if won else 0
        branches: list[Awaitable[int]] = [self._publish_claimed(won, publish, deadline)] if won else []
        branches.extend(self._after_elsewhere(claim, publish, deadline) for claim in held)
        branches.extend(self._follow(other, deadline) for other in others)
        outcomes = await asyncio.gather(*branches, return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        return sum(outcome for outcome in outcomes if isinstance(outcome, int))

    async def _publish_claimed(self, claims: list[_Claim], publish: PublishFunction, deadline: float) -> int:
        try:
            await publish([claim.event for claim in claims], max(0.0, deadline - self._clock()))
        except publishing.PublishError as error:
            published = error.published or (False,) * len(claims)
            self._settle([claim for claim, made_it in zip(claims, published, strict=True) if made_it])
            for claim, made_it in zip(claims, published, strict=True):
                if not made_it:
                    claim.settle(error)
                    self._release_later(claim)
            raise
        self._settle(claims)
        return len(claims)

    async def _after_elsewhere(self, claim: _Claim, publish: PublishFunction, deadline: float) -> int:
        """Another replica holds the event: claim again until it is completed (a duplicate)
        or released (ours now: publish it)."""
        polls = 0
        while claim.state is idempotency.ClaimState.IN_PROGRESS:
            polls += 1
            pause = backoff.exponential(polls, base=_POLL_FIRST_SECONDS, cap=_POLL_CAP_SECONDS)
            if self._clock() + pause >= deadline:
                raise publishing.TimedOut(
                    "another request is still publishing one of the events", code="InProgress"
                )
            await asyncio.sleep(pause)
            await self._claim(claim)
        if claim.state is idempotency.ClaimState.COMPLETED:
            claim.settle()
            return 0
        return await self._publish_claimed([claim], publish, deadline)

    async def _follow(self, other: asyncio.Future[None], deadline: float) -> int:
        """Another request of this process holds the event: its outcome is ours."""
        try:
            async with asyncio.timeout(max(0.0, deadline - self._clock())):
                await asyncio.shield(other)
        except TimeoutError:
            raise publishing.TimedOut(
                "another request is still publishing one of the events", code="InProgress"
            ) from None
        return 0

    async def _claim(self, claim: _Claim) -> None:
        assert self._store is not None
        try:
            claim.state = await self._store.claim(claim.key, lease_seconds=self._lease_seconds)
        except idempotency.StoreError as error:
            self._telemetry.idempotency_error("claim", error)
            claim.state = None

    def _settle(self, claims: list[_Claim]) -> None:
        """The events are in SNS: tell the waiting requests now, the store after the answer."""
        for claim in claims:
            claim.settle()
            if claim.state is idempotency.ClaimState.CLAIMED:
                self._to_complete.append(claim.key)
        if self._to_complete and (self._completing is None or self._completing.done()):
            self._completing = asyncio.create_task(self._complete_waiting())

    def _release_later(self, claim: _Claim) -> None:
        """The event is not in SNS: give up the claim so that a retry may publish it."""
        if claim.state is idempotency.ClaimState.CLAIMED:
            claim.state = None  # released once
            self._chore(self._release(claim.key))

    def _chore(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._chores.add(task)
        task.add_done_callback(self._chores.discard)

    async def _complete_waiting(self) -> None:
        while self._to_complete:
            keys, self._to_complete = self._to_complete, []
            if len(keys) == 1:
                await self._complete(keys[0])
            else:
                await asyncio.gather(*(self._complete(key) for key in keys))

    async def _complete(self, key: keying.EventId) -> None:
        assert self._store is not None
        try:
            await self._store.complete(key)
        except idempotency.StoreError as error:
            # Its lease runs out instead; a retry then publishes it again (the workers drop it).
            self._telemetry.idempotency_error("complete", error)

    async def _release(self, key: keying.EventId) -> None:
        assert self._store is not None
        try:
            await self._store.release(key)
        except idempotency.StoreError as error:
            self._telemetry.idempotency_error("release", error)  # its lease runs out instead

    async def aclose(self, timeout: float) -> None:
        """Wait (at most ``timeout``) for the completions and releases still being written."""
        tasks = set(self._chores) | ({self._completing} if self._completing is not None else set())
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def _retrieve(future: asyncio.Future[None]) -> None:
    """A failure nobody else waited for is still the request's own answer: not an orphan."""
    if not future.cancelled():
        future.exception()
