"""Idempotency stores: claim an event before acting on it, complete it after, release on failure.

Two users, one implementation (the front door may not import the worker):

* the worker (``workers.processing``) claims each decoded event when the sink admits it,
  completes it once delivered, releases it after a failure;
* the front door (``fanout_ingest.deduplicating``) claims each event of a webhook before
  publishing it, completes it once SNS has it, releases it when the publish failed — so a
  Genesys retry of an accepted event is answered without a second publish.

The calls::

    claim(event_id, lease_seconds=...)  → CLAIMED      yours: act; then complete() or release()
                                        → IN_PROGRESS  someone holds a live lease: look again later
                                        → COMPLETED    already done: a duplicate
    renew(event_id, lease_seconds=...)  while the event is still being acted on (a long request)
    release(event_id, failed=...)       after a failure; ``failed`` counts a delivery attempt and
                                        the call returns the attempts recorded so far
    forget(event_id)                    after dead-lettering: a redrive starts from zero attempts

A record moves ``IN_PROGRESS`` (until its lease runs out, so a crashed worker's claim
does not block the event for long) → ``COMPLETED`` (kept ``ttl_seconds``), or back to
``RELEASED`` (claimable again, carrying its count of failed attempts: the count of real
delivery attempts survives restarts and, with DynamoDB, replicas — SQS's receive count
cannot tell a failed delivery from a throttled one or a shutdown). Expired records of
either kind count as absent, even before anything has removed them.

The worker also keeps one record per dead-lettered *message* here (key
:func:`dead_letter_key`): copied once, never again, even if the delete that follows is
lost to a crash. Keys other than an event id carry a prefix (``dead-letter:``, the front
door's ``published:``), so the users of one table never take each other's records.

Two stores behind one :class:`IdempotencyStore` protocol:

- :class:`MemoryStore` — one process; records expire through a heap, so the sweep that
  runs on every call costs O(records expired), and memory stays bounded by what
  completed within the TTL.
- :class:`DynamoDbStore` — the fleet; one conditional ``UpdateItem`` decides each claim, so a
  restarted replica sees what every replica completed. The table is the user's (as with
  AWS Lambda Powertools; docs/contracts.md): partition key ``id`` (S), TTL attribute
  ``expiration`` (epoch seconds); ``status``, ``in_progress_expiration``, ``owner`` and
  ``attempts`` are ours.

Errors (the AWS ones translated where they enter, ``raise ... from``, by what
``fanout_core.awserrors`` makes of them — the reading the rest of the project shares)::

    StoreError            .retryable
    ├── StoreUnavailable      retryable: throttling, 5xx, network, an expired credential —
    │                         try the message later
    └── StoreMisconfigured    not retryable: missing table, access denied, bad request
"""

from __future__ import annotations

import dataclasses
import enum
import heapq
import itertools
import math
import time
import uuid
from collections.abc import Callable
from typing import Any, Protocol

from fanout_core import awsclients, keying
from fanout_core import spec as spec_model

WallClock = Callable[[], float]
"""Epoch seconds (``time.time``): leases and TTLs are compared with other replicas' and with
DynamoDB's TTL, so they are wall-clock times, not the event loop's."""


class ClaimState(enum.StrEnum):
    CLAIMED = "CLAIMED"
    """Nobody else holds the event: the caller owns it until its lease runs out."""
    IN_PROGRESS = "IN_PROGRESS"
    """Another claim holds an unexpired lease."""
    COMPLETED = "COMPLETED"
    """Already delivered: suppress this one as a duplicate."""


_RELEASED = "RELEASED"
"""Stored status of a record whose claim was given up; claimable, keeps ``attempts``."""


def dead_letter_key(message_id: str) -> keying.EventId:
    """The record that says "this SQS message was copied to the dead-letter queue"."""
    return keying.EventId(f"dead-letter:{message_id}")


class StoreError(Exception):
    """The store could not answer; ``retryable`` says whether trying later may help."""

    retryable: bool = True


class StoreUnavailable(StoreError):
    retryable = True


class StoreMisconfigured(StoreError):
    retryable = False


class IdempotencyStore(Protocol):
    """Claim → complete / release, keyed by the payload-derived event id (``fanout_core.keying``)."""

    @property
    def answers_in_process(self) -> bool:
        """True when every call answers without I/O, never suspending (:class:`MemoryStore`):
        a caller may then ask in turn what it would ask a remote store concurrently, and save
        a task per call. A hint about cost only: the answers are the same either way."""
        ...

    async def claim(self, event_id: keying.EventId, *, lease_seconds: float) -> ClaimState:
        """Take the event unless a live claim or a completion exists."""
        ...

    async def renew(self, event_id: keying.EventId, *, lease_seconds: float) -> bool:
        """Extend our live claim to ``lease_seconds`` from now; False if it is no longer ours."""
        ...

    async def complete(self, event_id: keying.EventId) -> None:
        """Record the event as delivered, for ``ttl_seconds``."""
        ...

    async def release(self, event_id: keying.EventId, *, failed: bool = False) -> int:
        """Give up our in-progress claim so a retry can claim it; ``failed`` counts one
        failed delivery attempt. Returns the failed attempts recorded for the event."""
        ...

    async def forget(self, event_id: keying.EventId) -> None:
        """Drop whatever is recorded for the event (it was dead-lettered)."""
        ...

    async def aclose(self) -> None: ...


def build_store(spec: spec_model.IdempotencySpec, *, dynamodb_client: Any | None) -> IdempotencyStore:
    """The store ``spec.idempotency`` asks for; the DynamoDB client stays the caller's to close."""
    if spec.store is spec_model.IdempotencyStoreType.DYNAMODB:
        if dynamodb_client is None or not spec.table:
            raise StoreMisconfigured("the dynamodb idempotency store needs a client and a table")
        return DynamoDbStore(dynamodb_client, spec.table, spec.ttl_seconds)
    return MemoryStore(ttl_seconds=spec.ttl_seconds)


# --- memory --------------------------------------------------------------------------


@dataclasses.dataclass(slots=True)
class _Record:
    state: ClaimState | None
    """None: released (claimable), keeping ``attempts``."""
    until: float
    """Live while ``now <= until``: the lease end (IN_PROGRESS), else the TTL end."""
    attempts: int = 0


class MemoryStore:
    """A single process's store. All methods run without awaiting, so each is atomic."""

    answers_in_process = True

    def __init__(self, *, ttl_seconds: float, clock: WallClock = time.time) -> None:
        self._ttl_seconds = ttl_seconds
        self._clock = clock
        self._records: dict[keying.EventId, _Record] = {}
        # (until, tie-breaker, id); entries outlived by a later update are skipped when popped.
        self._expiries: list[tuple[float, int, keying.EventId]] = []
        self._sequence = itertools.count()

    def __len__(self) -> int:
        return len(self._records)

    async def claim(self, event_id: keying.EventId, *, lease_seconds: float) -> ClaimState:
        now = self._sweep()
        record = self._records.get(event_id)
        live = record is not None and now <= record.until
        if record is not None and live and record.state is not None:
            return record.state
        attempts = record.attempts if record is not None and live else 0
        self._put(event_id, ClaimState.IN_PROGRESS, now + lease_seconds, attempts)
        return ClaimState.CLAIMED

    async def renew(self, event_id: keying.EventId, *, lease_seconds: float) -> bool:
        now = self._sweep()
        record = self._records.get(event_id)
        if record is None or record.state is not ClaimState.IN_PROGRESS:
            return False
        self._put(event_id, ClaimState.IN_PROGRESS, max(record.until, now + lease_seconds), record.attempts)
        return True

    async def complete(self, event_id: keying.EventId) -> None:
        now = self._sweep()
        self._put(event_id, ClaimState.COMPLETED, now + self._ttl_seconds)

    async def release(self, event_id: keying.EventId, *, failed: bool = False) -> int:
        now = self._sweep()
        record = self._records.get(event_id)
        if record is None or record.state is not ClaimState.IN_PROGRESS:
            return 0 if record is None else record.attempts
        attempts = record.attempts + (1 if failed else 0)
        self._put(event_id, None, now + self._ttl_seconds, attempts)
        return attempts

    async def forget(self, event_id: keying.EventId) -> None:
        self._records.pop(event_id, None)

    async def aclose(self) -> None:
        self._records.clear()
        self._expiries.clear()

    def _put(
        self, event_id: keying.EventId, state: ClaimState | None, until: float, attempts: int = 0
    ) -> None:
        self._records[event_id] = _Record(state, until, attempts)
        heapq.heappush(self._expiries, (until, next(self._sequence), event_id))

    def _sweep(self) -> float:
        now = self._clock()
        while self._expiries and self._expiries[0][0] < now:
            _, _, event_id = heapq.heappop(self._expiries)
            record = self._records.get(event_id)
            if record is not None and record.until < now:
                del self._records[event_id]
        return now


# --- DynamoDB ------------------------------------------------------------------------

_CLAIM_ATTEMPTS = 3
_CONDITION_FAILED = "ConditionalCheckFailedException"
# Names for every attribute we touch: `status` is a DynamoDB reserved word.
_NAMES = {
    "#id": "id",
    "#expiration": "expiration",
    "#status": "status",
    "#lease": "in_progress_expiration",
    "#owner": "owner",
    "#attempts": "attempts",
}


class DynamoDbStore:
    """The fleet's store: one item per event in the user's table (key ``id``, TTL ``expiration``).

    ``owner`` (one random token per store) makes :meth:`release` and :meth:`renew` touch
    only a claim this store made, never one another replica took after our lease ran out.
    Claims are conditional ``UpdateItem`` calls (not ``PutItem``), so a released record
    keeps its ``attempts`` across claims.
    """

    answers_in_process = False

    def __init__(
        self,
        client: Any,
        table: str,
        ttl_seconds: int,
        clock: WallClock = time.time,
        *,
        owner: str | None = None,
    ) -> None:
        self._client = client
        self._table = table
        self._ttl_seconds = ttl_seconds
        self._clock = clock
        self.owner = owner or uuid.uuid4().hex

    async def claim(self, event_id: keying.EventId, *, lease_seconds: float) -> ClaimState:
        for _ in range(_CLAIM_ATTEMPTS):
            now = self._clock()
            try:
                await self._call(
                    "UpdateItem",
                    self._client.update_item,
                    Key={"id": {"S": event_id}},
                    UpdateExpression=(
                        "SET #status = :in_progress, #expiration = :expiration,"
                        " #lease = :lease, #owner = :owner"
                    ),
                    ConditionExpression=(
                        "attribute_not_exists(#id) OR #expiration < :now OR #status = :released"
                        " OR (#status = :in_progress AND #lease < :now)"
                    ),
                    ExpressionAttributeNames=_names("#id", "#expiration", "#status", "#lease", "#owner"),
                    ExpressionAttributeValues={
                        ":now": _number(now),
                        ":in_progress": {"S": ClaimState.IN_PROGRESS.value},
                        ":released": {"S": _RELEASED},
                        ":expiration": _number(math.ceil(now + self._ttl_seconds)),
                        ":lease": _number(now + lease_seconds),
                        ":owner": {"S": self.owner},
                    },
                    ReturnValuesOnConditionCheckFailure="ALL_OLD",
                )
            except _ConditionFailed as failed:
                item = failed.item or await self._get(event_id)
                if item is None:  # removed between our write and our read: try again
                    continue
                return _state_of(item)
            return ClaimState.CLAIMED
        return ClaimState.IN_PROGRESS

    async def renew(self, event_id: keying.EventId, *, lease_seconds: float) -> bool:
        try:
            await self._call(
                "UpdateItem",
                self._client.update_item,
                Key={"id": {"S": event_id}},
                UpdateExpression="SET #lease = :lease",
                ConditionExpression="#status = :in_progress AND #owner = :owner",
                ExpressionAttributeNames=_names("#lease", "#status", "#owner"),
                ExpressionAttributeValues={
                    ":lease": _number(self._clock() + lease_seconds),
                    ":in_progress": {"S": ClaimState.IN_PROGRESS.value},
                    ":owner": {"S": self.owner},
                },
            )
        except _ConditionFailed:
            return False
        return True

    async def complete(self, event_id: keying.EventId) -> None:
        now = self._clock()
        await self._call(
            "UpdateItem",
            self._client.update_item,
            Key={"id": {"S": event_id}},
            UpdateExpression=(
                "SET #status = :completed, #expiration = :expiration REMOVE #lease, #owner, #attempts"
            ),
            ExpressionAttributeNames=_names("#status", "#expiration", "#lease", "#owner", "#attempts"),
            ExpressionAttributeValues={
                ":completed": {"S": ClaimState.COMPLETED.value},
                ":expiration": _number(math.ceil(now + self._ttl_seconds)),
            },
        )

    async def release(self, event_id: keying.EventId, *, failed: bool = False) -> int:
        # A failed condition: completed, gone, or another replica's claim now — nothing of ours.
        update = "SET #status = :released REMOVE #lease, #owner"
        values: dict[str, Any] = {
            ":released": {"S": _RELEASED},
            ":in_progress": {"S": ClaimState.IN_PROGRESS.value},
            ":owner": {"S": self.owner},
        }
        if failed:
            update = "SET #status = :released ADD #attempts :one REMOVE #lease, #owner"
            values[":one"] = {"N": "1"}
        try:
            response = await self._call(
                "UpdateItem",
                self._client.update_item,
                Key={"id": {"S": event_id}},
                UpdateExpression=update,
                ConditionExpression="#status = :in_progress AND #owner = :owner",
                ExpressionAttributeNames=_names("#status", "#lease", "#owner", "#attempts")
                if failed
                else _names("#status", "#lease", "#owner"),
                ExpressionAttributeValues=values,
                ReturnValues="ALL_NEW",
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except _ConditionFailed as condition:
            return _attempts_of(condition.item)
        return _attempts_of(response.get("Attributes"))

    async def forget(self, event_id: keying.EventId) -> None:
        await self._call("DeleteItem", self._client.delete_item, Key={"id": {"S": event_id}})

    async def aclose(self) -> None:
        """Nothing to do: the client belongs to the caller."""

    async def _get(self, event_id: keying.EventId) -> dict[str, Any] | None:
        response = await self._call(
            "GetItem", self._client.get_item, Key={"id": {"S": event_id}}, ConsistentRead=True
        )
        item: dict[str, Any] | None = response.get("Item")
        return item

    async def _call(self, operation: str, method: Any, **kwargs: Any) -> dict[str, Any]:
        try:
            response: dict[str, Any] = await method(TableName=self._table, **kwargs)
        except awsclients.ERRORS as error:
            if awsclients.failure_of(error).code == _CONDITION_FAILED:
                # the reply carries the item that failed the condition (ReturnValuesOnConditionCheckFailure)
                raise _ConditionFailed(getattr(error, "response", {}).get("Item")) from error
            raise translate(error, operation=operation, table=self._table) from error
        return response


class _ConditionFailed(Exception):
    """A condition expression did not hold; internal, never leaves this module."""

    def __init__(self, item: dict[str, Any] | None) -> None:
        super().__init__("condition failed")
        self.item = item or None


def translate(error: BaseException, *, operation: str, table: str) -> StoreError:
    """An exception of a DynamoDB call → :class:`StoreUnavailable` (worth retrying) or
    :class:`StoreMisconfigured`, as ``fanout_core.awserrors`` reads it."""
    failure = awsclients.failure_of(error)
    if failure.status:
        detail = failure.detail[:200]
        message = (
            f"DynamoDB {operation} on {table}: {failure.code or 'error'} (HTTP {failure.status}) {detail}"
        )
    else:
        message = f"DynamoDB {operation} on {table}: {failure.code}"
    if failure.retryable:
        return StoreUnavailable(message.rstrip())
    return StoreMisconfigured(message.rstrip())


def _names(*placeholders: str) -> dict[str, str]:
    """ExpressionAttributeNames for exactly the placeholders used (DynamoDB rejects unused ones)."""
    return {placeholder: _NAMES[placeholder] for placeholder in placeholders}


def _number(value: float) -> dict[str, str]:
    """A DynamoDB number; milliseconds are precision enough for leases."""
    if isinstance(value, int):
        return {"N": str(value)}
    return {"N": f"{value:.3f}"}


def _attempts_of(item: dict[str, Any] | None) -> int:
    try:
        return int((item or {}).get("attempts", {}).get("N", "0"))
    except (TypeError, ValueError, AttributeError):
        return 0


def _state_of(item: dict[str, Any]) -> ClaimState:
    status = item.get("status", {}).get("S")
    if status == ClaimState.COMPLETED.value:
        return ClaimState.COMPLETED
    # IN_PROGRESS, or a status we do not know: neither deliver nor suppress; look again later.
    return ClaimState.IN_PROGRESS
