"""Idempotency stores: claim an event before delivering it, complete it after, release on failure.

``processing`` calls, per decoded event::

    claim(event_id, lease_seconds=...)  → CLAIMED      deliver it; then complete() or release()
                                        → IN_PROGRESS  someone holds a live lease: look again later
                                        → COMPLETED    already delivered: ack it as a duplicate

A record moves ``IN_PROGRESS`` (until its lease runs out, so a crashed worker's claim
does not block the event for long) → ``COMPLETED`` (kept ``ttl_seconds``). Expired
records of either kind count as absent, even before anything has removed them.

Two stores behind one :class:`IdempotencyStore` protocol:

- :class:`MemoryStore` — one process; records expire through a heap, so the sweep that
  runs on every call costs O(records expired), and memory stays bounded by what
  completed within the TTL.
- :class:`DynamoDbStore` — the fleet; one conditional ``PutItem`` decides each claim, so a
  restarted replica sees what every replica completed. The table is the user's (docs/contracts.md):
  partition key ``id`` (S), TTL attribute ``expiration`` (epoch seconds); ``status``,
  ``in_progress_expiration`` and ``owner`` are ours.

Errors (the AWS ones translated where they enter, ``raise ... from``)::

    StoreError            .retryable
    ├── StoreUnavailable      retryable: throttling, 5xx, network — try the message later
    └── StoreMisconfigured    not retryable: missing table, access denied, bad request
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import heapq
import itertools
import math
import time
import uuid
from collections.abc import Callable
from typing import Any, Protocol

import botocore.exceptions

from fanout_core import spec as spec_model
from workers import events

Clock = Callable[[], float]


class ClaimState(enum.StrEnum):
    CLAIMED = "CLAIMED"
    """Nobody else holds the event: the caller owns it until its lease runs out."""
    IN_PROGRESS = "IN_PROGRESS"
    """Another claim holds an unexpired lease."""
    COMPLETED = "COMPLETED"
    """Already delivered: suppress this one as a duplicate."""


class StoreError(Exception):
    """The store could not answer; ``retryable`` says whether trying later may help."""

    retryable: bool = True


class StoreUnavailable(StoreError):
    retryable = True


class StoreMisconfigured(StoreError):
    retryable = False


class IdempotencyStore(Protocol):
    """Claim → complete / release, keyed by :attr:`events.Event.event_id`."""

    async def claim(self, event_id: events.EventId, *, lease_seconds: float) -> ClaimState:
        """Take the event unless a live claim or a completion exists."""
        ...

    async def complete(self, event_id: events.EventId) -> None:
        """Record the event as delivered, for ``ttl_seconds``."""
        ...

    async def release(self, event_id: events.EventId) -> None:
        """Give up our in-progress claim after a failure, so a retry can claim it."""
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
    state: ClaimState
    until: float
    """Live while ``now <= until``: the lease end (IN_PROGRESS) or the TTL end (COMPLETED)."""


class MemoryStore:
    """A single process's store. All methods run without awaiting, so each is atomic."""

    def __init__(self, *, ttl_seconds: float, clock: Clock = time.time) -> None:
        self._ttl_seconds = ttl_seconds
        self._clock = clock
        self._records: dict[events.EventId, _Record] = {}
        # (until, tie-breaker, id); entries outlived by a later update are skipped when popped.
        self._expiries: list[tuple[float, int, events.EventId]] = []
        self._sequence = itertools.count()

    def __len__(self) -> int:
        return len(self._records)

    async def claim(self, event_id: events.EventId, *, lease_seconds: float) -> ClaimState:
        now = self._sweep()
        record = self._records.get(event_id)
        if record is not None and now <= record.until:
            return record.state
        self._put(event_id, ClaimState.IN_PROGRESS, now + lease_seconds)
        return ClaimState.CLAIMED

    async def complete(self, event_id: events.EventId) -> None:
        now = self._sweep()
        self._put(event_id, ClaimState.COMPLETED, now + self._ttl_seconds)

    async def release(self, event_id: events.EventId) -> None:
        self._sweep()
        record = self._records.get(event_id)
        if record is not None and record.state is ClaimState.IN_PROGRESS:
            del self._records[event_id]

    async def aclose(self) -> None:
        self._records.clear()
        self._expiries.clear()

    def _put(self, event_id: events.EventId, state: ClaimState, until: float) -> None:
        self._records[event_id] = _Record(state, until)
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
_RETRYABLE_CODES = frozenset(
    {
        "ProvisionedThroughputExceededException",
        "ThrottlingException",
        "Throttling",
        "RequestLimitExceeded",
        "InternalServerError",
        "ServiceUnavailable",
        "TransactionConflictException",
        "RequestTimeout",
        "RequestTimeoutException",
    }
)
# Names for every attribute we touch: `status` is a DynamoDB reserved word.
_NAMES = {
    "#id": "id",
    "#expiration": "expiration",
    "#status": "status",
    "#lease": "in_progress_expiration",
    "#owner": "owner",
}


class DynamoDbStore:
    """The fleet's store: one item per event in the user's table (key ``id``, TTL ``expiration``).

    ``owner`` (one random token per store) makes :meth:`release` delete only a claim this
    store made, never one another replica took after our lease ran out.
    """

    def __init__(
        self,
        client: Any,
        table: str,
        ttl_seconds: int,
        clock: Clock = time.time,
        *,
        owner: str | None = None,
    ) -> None:
        self._client = client
        self._table = table
        self._ttl_seconds = ttl_seconds
        self._clock = clock
        self.owner = owner or uuid.uuid4().hex

    async def claim(self, event_id: events.EventId, *, lease_seconds: float) -> ClaimState:
        for _ in range(_CLAIM_ATTEMPTS):
            now = self._clock()
            try:
                await self._call(
                    "PutItem",
                    self._client.put_item,
                    Item={
                        "id": {"S": event_id},
                        "status": {"S": ClaimState.IN_PROGRESS.value},
                        "expiration": _number(math.ceil(now + self._ttl_seconds)),
                        "in_progress_expiration": _number(now + lease_seconds),
                        "owner": {"S": self.owner},
                    },
                    ConditionExpression=(
                        "attribute_not_exists(#id) OR #expiration < :now"
                        " OR (#status = :in_progress AND #lease < :now)"
                    ),
                    ExpressionAttributeNames=_names("#id", "#expiration", "#status", "#lease"),
                    ExpressionAttributeValues={
                        ":now": _number(now),
                        ":in_progress": {"S": ClaimState.IN_PROGRESS.value},
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

    async def complete(self, event_id: events.EventId) -> None:
        now = self._clock()
        await self._call(
            "UpdateItem",
            self._client.update_item,
            Key={"id": {"S": event_id}},
            UpdateExpression="SET #status = :completed, #expiration = :expiration REMOVE #lease, #owner",
            ExpressionAttributeNames=_names("#status", "#expiration", "#lease", "#owner"),
            ExpressionAttributeValues={
                ":completed": {"S": ClaimState.COMPLETED.value},
                ":expiration": _number(math.ceil(now + self._ttl_seconds)),
            },
        )

    async def release(self, event_id: events.EventId) -> None:
        # A failed condition: completed, gone, or another replica's claim now — nothing of ours.
        with contextlib.suppress(_ConditionFailed):
            await self._call(
                "DeleteItem",
                self._client.delete_item,
                Key={"id": {"S": event_id}},
                ConditionExpression="#status = :in_progress AND #owner = :owner",
                ExpressionAttributeNames=_names("#status", "#owner"),
                ExpressionAttributeValues={
                    ":in_progress": {"S": ClaimState.IN_PROGRESS.value},
                    ":owner": {"S": self.owner},
                },
            )

    async def aclose(self) -> None:
        """Nothing to do: the client belongs to the caller."""

    async def _get(self, event_id: events.EventId) -> dict[str, Any] | None:
        response = await self._call(
            "GetItem", self._client.get_item, Key={"id": {"S": event_id}}, ConsistentRead=True
        )
        item: dict[str, Any] | None = response.get("Item")
        return item

    async def _call(self, operation: str, method: Any, **kwargs: Any) -> dict[str, Any]:
        try:
            response: dict[str, Any] = await method(TableName=self._table, **kwargs)
        except botocore.exceptions.ClientError as error:
            if _error_code(error) == _CONDITION_FAILED:
                raise _ConditionFailed(error.response.get("Item")) from error
            raise translate_client_error(error, operation=operation, table=self._table) from error
        except (botocore.exceptions.BotoCoreError, OSError, TimeoutError) as error:
            raise StoreUnavailable(
                f"DynamoDB {operation} on {self._table}: {type(error).__name__}"
            ) from error
        return response


class _ConditionFailed(Exception):
    """A condition expression did not hold; internal, never leaves this module."""

    def __init__(self, item: dict[str, Any] | None) -> None:
        super().__init__("condition failed")
        self.item = item or None


def translate_client_error(
    error: botocore.exceptions.ClientError, *, operation: str, table: str
) -> StoreError:
    """An AWS error → :class:`StoreUnavailable` (worth retrying) or :class:`StoreMisconfigured`."""
    code = _error_code(error)
    status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    detail = str(error.response.get("Error", {}).get("Message", ""))[:200]
    message = f"DynamoDB {operation} on {table}: {code or 'error'} (HTTP {status}) {detail}".rstrip()
    if is_retryable(code, status):
        return StoreUnavailable(message)
    return StoreMisconfigured(message)


def is_retryable(code: str, http_status: int) -> bool:
    """Throttling, server-side and unknown-status errors are worth retrying; other 4xx are not."""
    return code in _RETRYABLE_CODES or http_status >= 500 or http_status == 0


def _error_code(error: botocore.exceptions.ClientError) -> str:
    code = error.response.get("Error", {}).get("Code", "")
    return code if isinstance(code, str) else ""


def _names(*placeholders: str) -> dict[str, str]:
    """ExpressionAttributeNames for exactly the placeholders used (DynamoDB rejects unused ones)."""
    return {placeholder: _NAMES[placeholder] for placeholder in placeholders}


def _number(value: float) -> dict[str, str]:
    """A DynamoDB number; milliseconds are precision enough for leases."""
    if isinstance(value, int):
        return {"N": str(value)}
    return {"N": f"{value:.3f}"}


def _state_of(item: dict[str, Any]) -> ClaimState:
    status = item.get("status", {}).get("S")
    if status == ClaimState.COMPLETED.value:
        return ClaimState.COMPLETED
    # IN_PROGRESS, or a status we do not know: neither deliver nor suppress; look again later.
    return ClaimState.IN_PROGRESS
