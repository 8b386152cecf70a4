"""fanout_core.idempotency: one behaviour suite for both stores; DynamoDB against the moto server.

The clock is a fake, passed in: leases and TTLs expire by moving it, for DynamoDB too
(the store writes the clock's time into its items and conditions).
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiobotocore.config
import aiobotocore.session
import botocore.exceptions
import pytest

from fanout_core import idempotency, keying
from fanout_core import spec as spec_model
from fanout_lab.simulators import aws

TTL = 3600
LEASE = 10.0
START = 1_741_964_966.0


class FakeClock:
    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclasses.dataclass
class Backend:
    store: idempotency.IdempotencyStore
    clock: FakeClock
    replica: Callable[[], idempotency.IdempotencyStore]
    """Another store sharing the same records (DynamoDB: another replica's; memory: the same one)."""


def new_id() -> keying.EventId:
    return keying.EventId(f"evt-{uuid.uuid4()}")


async def create_table(client: Any) -> str:
    table = f"idempotency-{uuid.uuid4().hex[:12]}"
    await client.create_table(
        TableName=table,
        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    return table


@pytest.fixture(params=["memory", "dynamodb"])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    clock = FakeClock()
    if request.param == "memory":
        memory = idempotency.MemoryStore(ttl_seconds=TTL, clock=clock)
        yield Backend(memory, clock, lambda: memory)
        return
    request.getfixturevalue("moto_server")
    async with aiobotocore.session.get_session().create_client("dynamodb") as client:
        table = await create_table(client)
        yield Backend(
            idempotency.DynamoDbStore(client, table, TTL, clock),
            clock,
            lambda: idempotency.DynamoDbStore(client, table, TTL, clock),
        )


# --- the shared behaviour ------------------------------------------------------------


async def test_first_claim_owns_the_event_then_it_is_in_progress(backend: Backend) -> None:
    event_id = new_id()
    assert await backend.store.claim(event_id, lease_seconds=LEASE) is idempotency.ClaimState.CLAIMED
    assert await backend.store.claim(event_id, lease_seconds=LEASE) is idempotency.ClaimState.IN_PROGRESS
    assert await backend.replica().claim(event_id, lease_seconds=LEASE) is idempotency.ClaimState.IN_PROGRESS


async def test_completed_event_is_a_duplicate(backend: Backend) -> None:
    event_id = new_id()
    await backend.store.claim(event_id, lease_seconds=LEASE)
    await backend.store.complete(event_id)
    backend.clock.advance(LEASE * 10)  # long after the lease: completion outlives it
    assert await backend.store.claim(event_id, lease_seconds=LEASE) is idempotency.ClaimState.COMPLETED
    assert await backend.replica().claim(event_id, lease_seconds=LEASE) is idempotency.ClaimState.COMPLETED


async def test_an_expired_lease_can_be_claimed_again(backend: Backend) -> None:
    event_id = new_id()
    await backend.store.claim(event_id, lease_seconds=LEASE)
    backend.clock.advance(LEASE)
    assert await backend.replica().claim(event_id, lease_seconds=LEASE) is idempotency.ClaimState.IN_PROGRESS
    backend.clock.advance(0.5)
    assert await backend.replica().claim(event_id, lease_seconds=LEASE) is idempotency.ClaimState.CLAIMED


async def test_release_lets_a_retry_claim(backend: Backend) -> None:
    event_id = new_id()
    await backend.store.claim(event_id, lease_seconds=LEASE)
    await backend.store.release(event_id)
    assert await backend.store.claim(event_id, lease_seconds=LEASE) is idempotency.ClaimState.CLAIMED


async def test_release_never_undoes_a_completion(backend: Backend) -> None:
    event_id = new_id()
    await backend.store.claim(event_id, lease_seconds=LEASE)
    await backend.store.complete(event_id)
    await backend.store.release(event_id)
    await backend.store.release(new_id())  # releasing what was never claimed is harmless
    assert await backend.store.claim(event_id, lease_seconds=LEASE) is idempotency.ClaimState.COMPLETED


async def test_a_completion_expires_after_the_ttl(backend: Backend) -> None:
    event_id = new_id()
    await backend.store.claim(event_id, lease_seconds=LEASE)
    await backend.store.complete(event_id)
    backend.clock.advance(TTL)
    assert await backend.store.claim(event_id, lease_seconds=LEASE) is idempotency.ClaimState.COMPLETED
    backend.clock.advance(1.5)
    # Expired counts as absent, whether or not anything removed the record yet.
    assert await backend.store.claim(event_id, lease_seconds=LEASE) is idempotency.ClaimState.CLAIMED


async def test_complete_without_a_live_claim_still_records_it(backend: Backend) -> None:
    event_id = new_id()
    await backend.store.claim(event_id, lease_seconds=LEASE)
    backend.clock.advance(LEASE + 1)  # the delivery outlived its lease...
    await backend.store.complete(event_id)  # ...but it did happen
    assert await backend.replica().claim(event_id, lease_seconds=LEASE) is idempotency.ClaimState.COMPLETED
    other = new_id()
    await backend.store.complete(other)
    assert await backend.store.claim(other, lease_seconds=LEASE) is idempotency.ClaimState.COMPLETED


async def test_events_are_independent(backend: Backend) -> None:
    one, two = new_id(), new_id()
    await backend.store.claim(one, lease_seconds=LEASE)
    await backend.store.complete(one)
    assert await backend.store.claim(two, lease_seconds=LEASE) is idempotency.ClaimState.CLAIMED


async def test_twenty_concurrent_claims_have_one_winner(backend: Backend) -> None:
    event_id = new_id()
    stores = [backend.replica() for _ in range(20)]
    if isinstance(backend.store, idempotency.DynamoDbStore):
        # One conditional UpdateItem decides each claim, and DynamoDB applies the writes to an
        # item one at a time. moto does not: its threaded server checks and writes without a
        # lock, so concurrent claims over moto can both pass the condition on a busy machine.
        # What can be proven here is the condition itself: twenty replicas, one after another.
        states = [await store.claim(event_id, lease_seconds=LEASE) for store in stores]
    else:
        states = await asyncio.gather(*(store.claim(event_id, lease_seconds=LEASE) for store in stores))
    assert states.count(idempotency.ClaimState.CLAIMED) == 1
    assert states.count(idempotency.ClaimState.IN_PROGRESS) == 19


async def test_aclose(backend: Backend) -> None:
    await backend.store.aclose()


# --- DynamoDB specifics --------------------------------------------------------------


@pytest.fixture
async def table(dynamodb: Any) -> str:
    return await create_table(dynamodb)


async def test_items_follow_the_table_contract(dynamodb: Any, table: str) -> None:
    clock = FakeClock(START + 0.25)
    store = idempotency.DynamoDbStore(dynamodb, table, TTL, clock)
    event_id = new_id()
    await store.claim(event_id, lease_seconds=LEASE)
    claimed = (await dynamodb.get_item(TableName=table, Key={"id": {"S": event_id}}))["Item"]
    assert claimed["status"] == {"S": "IN_PROGRESS"}
    assert float(claimed["in_progress_expiration"]["N"]) == pytest.approx(START + 0.25 + LEASE)
    clock.advance(5)
    await store.complete(event_id)
    completed = (await dynamodb.get_item(TableName=table, Key={"id": {"S": event_id}}))["Item"]
    # `expiration` is the TTL attribute: whole epoch seconds.
    assert completed["expiration"] == {"N": str(math.ceil(START + 5.25 + TTL))}
    assert completed["status"] == {"S": "COMPLETED"}
    assert "in_progress_expiration" not in completed


async def test_a_restarted_replica_sees_what_the_fleet_completed(dynamodb: Any, table: str) -> None:
    event_id = new_id()
    before = idempotency.DynamoDbStore(dynamodb, table, TTL)
    await before.claim(event_id, lease_seconds=LEASE)
    await before.complete(event_id)
    after = idempotency.DynamoDbStore(dynamodb, table, TTL)
    assert await after.claim(event_id, lease_seconds=LEASE) is idempotency.ClaimState.COMPLETED


async def test_release_never_drops_another_replicas_claim(dynamodb: Any, table: str) -> None:
    clock = FakeClock()
    slow, fast, third = (idempotency.DynamoDbStore(dynamodb, table, TTL, clock) for _ in range(3))
    event_id = new_id()
    await slow.claim(event_id, lease_seconds=LEASE)
    clock.advance(LEASE + 1)
    assert await fast.claim(event_id, lease_seconds=LEASE) is idempotency.ClaimState.CLAIMED
    await slow.release(event_id)  # its lease is long gone; the claim is fast's now
    assert await third.claim(event_id, lease_seconds=LEASE) is idempotency.ClaimState.IN_PROGRESS


async def test_a_missing_table_is_misconfiguration(dynamodb: Any) -> None:
    store = idempotency.DynamoDbStore(dynamodb, "no-such-table", TTL)
    with pytest.raises(idempotency.StoreMisconfigured) as caught:
        await store.claim(new_id(), lease_seconds=LEASE)
    assert not caught.value.retryable
    assert "ResourceNotFoundException" in str(caught.value)
    assert isinstance(caught.value.__cause__, botocore.exceptions.ClientError)


async def test_an_unreachable_endpoint_is_retryable(moto_server: aws.MotoServer) -> None:
    config = aiobotocore.config.AioConfig(retries={"max_attempts": 1, "mode": "standard"}, connect_timeout=2)
    endpoint = f"http://127.0.0.1:{aws.free_port()}"
    session = aiobotocore.session.get_session()
    async with session.create_client("dynamodb", endpoint_url=endpoint, config=config) as client:
        store = idempotency.DynamoDbStore(client, "table", TTL)
        with pytest.raises(idempotency.StoreUnavailable) as caught:
            await store.claim(new_id(), lease_seconds=LEASE)
    assert caught.value.retryable
    assert isinstance(caught.value.__cause__, botocore.exceptions.BotoCoreError)


@pytest.mark.parametrize(
    ("code", "status", "retryable"),
    [
        ("ProvisionedThroughputExceededException", 400, True),
        ("ThrottlingException", 400, True),
        ("RequestLimitExceeded", 400, True),
        ("InternalServerError", 500, True),
        ("Anything", 503, True),
        # an expired or rotated credential: the chain renews it, as for SQS and S3
        ("ExpiredTokenException", 400, True),
        ("UnrecognizedClientException", 400, True),
        ("ResourceNotFoundException", 400, False),
        ("AccessDeniedException", 400, False),
        ("ValidationException", 400, False),
    ],
)
def test_error_classification(code: str, status: int, retryable: bool) -> None:
    error = botocore.exceptions.ClientError(
        {"Error": {"Code": code, "Message": "no"}, "ResponseMetadata": {"HTTPStatusCode": status}},
        "UpdateItem",
    )
    translated = idempotency.translate(error, operation="UpdateItem", table="events")
    assert translated.retryable is retryable
    assert isinstance(
        translated, idempotency.StoreUnavailable if retryable else idempotency.StoreMisconfigured
    )
    assert str(translated) == f"DynamoDB UpdateItem on events: {code} (HTTP {status}) no"


# --- memory specifics ----------------------------------------------------------------


async def test_memory_store_forgets_what_expired() -> None:
    clock = FakeClock()
    store = idempotency.MemoryStore(ttl_seconds=TTL, clock=clock)
    for _ in range(500):
        event_id = new_id()
        await store.claim(event_id, lease_seconds=LEASE)
        await store.complete(event_id)
    for _ in range(500):  # claims nobody completed or released (a crashed task)
        await store.claim(new_id(), lease_seconds=LEASE)
    assert len(store) == 1000
    clock.advance(LEASE + 1)
    await store.claim(new_id(), lease_seconds=LEASE)
    assert len(store) == 501  # the abandoned leases are gone; the completions stay
    clock.advance(TTL)
    await store.claim(new_id(), lease_seconds=LEASE)
    assert len(store) == 1


# --- build_store ---------------------------------------------------------------------


async def test_build_store(dynamodb: Any) -> None:
    memory = spec_model.IdempotencySpec()
    assert isinstance(idempotency.build_store(memory, dynamodb_client=None), idempotency.MemoryStore)
    fleet = spec_model.IdempotencySpec(store=spec_model.IdempotencyStoreType.DYNAMODB, table="t")
    assert isinstance(idempotency.build_store(fleet, dynamodb_client=dynamodb), idempotency.DynamoDbStore)
    with pytest.raises(idempotency.StoreMisconfigured):
        idempotency.build_store(fleet, dynamodb_client=None)
