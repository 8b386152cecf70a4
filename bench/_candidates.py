"""The other ways a fleet could share a rate limit, as measured beside the shipped one.

``bench/fleet.py --candidates`` runs each scenario with these too (they are not shipped;
the README's Sinks section says why, with their numbers):

* **lease** — tokens leased from one DynamoDB item in small batches, with conditional
  updates: the item holds GCRA's theoretical arrival time (TAT) for the whole fleet; a
  replica that needs tokens reads it (once, then from its cache), advances it by
  ``batch / rate`` if that stays within the burst, and writes it back on the condition
  that nobody moved it meanwhile (else it re-reads and tries again). Exact, whatever the
  replica count, at the cost of DynamoDB requests (counted, per second of the run) and a
  table (many consumers have the idempotency table already; the memory store has none).
* **probe-N%** — the shipped pace deaf to what the fleet holds (its slice is
  ``rate / replicas``, from the count alone), which finds an unused slice by probing beyond
  it, with a probe budget of N% of its requests (1% is the default: what ``fanout-worker``
  did before it read the queue's in-flight count; 10% finds an unused slice sooner and
  pays in 429s).
* **shares-Ns** — what the operator could do: every N seconds read each replica's
  ``/metrics`` and rewrite every replica's count file with the number of replicas that
  hold messages (so the replicas with work share the whole grant). It runs in the bench's
  own process (:func:`coordinate`); the replicas are probe-1% replicas (the count is all
  they go by).

Run by ``make bench`` too, this file only says what it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import decimal
import json
import math
import os
import time
from collections.abc import Callable
from typing import Any, Protocol

import aiobotocore.session
import httpx
from botocore.exceptions import ClientError

from fanout_core import spec
from workers import events, fleet, throttling
from workers.sinks import base, exchange
from workers.sinks import webhook as webhook_sink

LEASE_TABLE = "fanout-bench-rate"
LEASE_KEY_ENV = "FANOUT_BENCH_LEASE_KEY"
STATS_ENV = "FANOUT_BENCH_STATS"
"""A replica of a candidate writes what it counted here when it stops (JSON)."""


# ------------------------------------------------------------------------------ lease
async def create_lease_table(client: Any) -> None:
    await client.create_table(
        TableName=LEASE_TABLE,
        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
        BillingMode="PAY_PER_REQUEST",
    )


class Lease:
    """Tokens for one replica, leased ``batch`` at a time from the fleet's TAT item.

    A lease books ``batch`` consecutive slots of the fleet's schedule (``1 / rate`` apart,
    after the item's TAT, or now) if the last one is at most half the burst ahead; each
    slot must be used within half the burst's time after it, or it is dropped: slots used
    late would add up into a burst the downstream refuses. The next lease is fetched when
    half a batch is left, so the store's round trip is mostly off the send path.
    """

    def __init__(self, client: Any, key: str, *, rate: float, burst: int, batch: int) -> None:
        self._client = client
        self._key = key
        self._rate = rate
        self._slack = burst / (2.0 * rate)
        self._batch = batch
        self._slots: list[float] = []
        self._tat: str | None = None
        """The item's TAT as DynamoDB last told us (a decimal string; None: not read yet)."""
        self._read = False
        self._lock = asyncio.Lock()
        self._fetching: asyncio.Task[None] | None = None
        self.requests = 0
        self.conflicts = 0
        self.dropped = 0
        self.slots_granted = 0
        self.granted = 0.0
        self._granted_at = time.monotonic()

    async def take(self) -> None:
        async with self._lock:
            while True:
                now = time.time()
                fresh = [slot for slot in self._slots if slot + self._slack >= now]
                self.dropped += len(self._slots) - len(fresh)
                self._slots = fresh
                if len(self._slots) <= self._batch // 2:
                    self._fetch()
                if self._slots:
                    self._slots.pop(0)
                    return
                assert self._fetching is not None
                await asyncio.shield(self._fetching)

    def _fetch(self) -> None:
        if self._fetching is None or self._fetching.done():
            self._fetching = asyncio.get_running_loop().create_task(self._lease_until_granted())

    async def _lease_until_granted(self) -> None:
        while not await self._lease():
            pass

    async def close(self) -> None:
        if self._fetching is not None:
            self._fetching.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._fetching

    def rate(self) -> float:
        """Slots per second this replica was granted lately (decaying over two seconds)."""
        self._decay()
        return self.granted / 2.0

    def _decay(self) -> None:
        now = time.monotonic()
        self.granted *= math.exp(-(now - self._granted_at) / 2.0)
        self._granted_at = now

    async def _lease(self) -> bool:
        """One attempt; True when slots were granted."""
        if not self._read:
            await self._get()
        now = time.time()
        start = max(float(self._tat) if self._tat is not None else now, now)
        new = start + self._batch / self._rate
        early = new - now - self._slack
        if early > 1e-6:
            await asyncio.sleep(early)  # the fleet has booked the grant that far ahead
            return False
        value = str(decimal.Decimal(new).quantize(decimal.Decimal("0.000001")))
        condition = "attribute_not_exists(tat)" if self._tat is None else "tat = :old"
        values = {":new": {"N": value}}
        if self._tat is not None:
            values[":old"] = {"N": self._tat}
        self.requests += 1
        try:
            await self._client.update_item(
                TableName=LEASE_TABLE,
                Key={"id": {"S": self._key}},
                UpdateExpression="SET tat = :new",
                ConditionExpression=condition,
                ExpressionAttributeValues=values,
            )
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
                raise
            self.conflicts += 1
            await self._get()
            return False
        self._tat = value
        self._slots += [start + (index + 1) / self._rate for index in range(self._batch)]
        self._decay()
        self.granted += self._batch
        self.slots_granted += self._batch
        return True

    async def _get(self) -> None:
        self.requests += 1
        reply = await self._client.get_item(
            TableName=LEASE_TABLE, Key={"id": {"S": self._key}}, ConsistentRead=True
        )
        item = reply.get("Item")
        self._tat = item["tat"]["N"] if item and "tat" in item else None
        self._read = True


class LeaseSink:
    """The webhook sink without a rate of its own, each request paid for with a leased token."""

    def __init__(self, sink: spec.SinkSpec, replicas: fleet.Replicas) -> None:
        assert sink.rate_limit is not None
        self._limit = sink.rate_limit
        self._told = replicas.current()
        self._inner = webhook_sink.WebhookSink(
            sink.model_copy(update={"rate_limit": None}), replicas=replicas
        )
        self._client_context: Any = None
        self._lease: Lease | None = None
        self._started = time.monotonic()

    @property
    def name(self) -> str:
        return "lease"

    @property
    def accepting(self) -> bool:
        return self._inner.accepting

    async def wait_accepting(self) -> None:
        await self._inner.wait_accepting()

    def capacity(self) -> float | None:
        leased = self._lease.rate() if self._lease is not None else 0.0
        return max(self._limit.requests_per_second / self._told, 1.5 * leased)

    def set_fleet_share(self, share: float | None) -> None:
        return None

    async def deliver(self, event: events.Event, admit: base.Admission | None = None) -> events.Outcome:
        lease = await self._open()
        await lease.take()
        return await self._inner.deliver(event, admit)

    async def flush(self) -> None:
        await self._inner.flush()

    async def _open(self) -> Lease:
        if self._lease is None:
            session = aiobotocore.session.get_session()
            self._client_context = session.create_client("dynamodb")
            client = await self._client_context.__aenter__()
            rate, burst = self._limit.requests_per_second, self._limit.burst
            batch = max(1, min(burst // 2, math.ceil(rate * 0.2)))
            self._lease = Lease(client, os.environ[LEASE_KEY_ENV], rate=rate, burst=burst, batch=batch)
        return self._lease

    async def aclose(self) -> None:
        await self._inner.aclose()
        if self._lease is not None:
            seconds = time.monotonic() - self._started
            lease = self._lease
            await lease.close()
            _write_stats(
                {
                    "requests": lease.requests,
                    "conflicts": lease.conflicts,
                    "dropped": lease.dropped,
                    "granted_slots": lease.slots_granted,
                    "seconds": seconds,
                }
            )
        if self._client_context is not None:
            await self._client_context.__aexit__(None, None, None)


# ------------------------------------------------------------------------------ probing
def probing(share: float) -> Callable[[spec.SinkSpec, fleet.Replicas], webhook_sink.WebhookSink]:
    """The shipped webhook sink deaf to what the fleet holds (its slice is ``rate / count``),
    finding unused grant by probes alone, with a probe budget of ``share``."""

    class Probing(webhook_sink.WebhookSink):
        def _open_exchange(self, sink: spec.SinkSpec, **rest: Any) -> None:
            super()._open_exchange(sink, **rest)
            replicas: fleet.Replicas = rest["replicas"]
            settings = exchange.limiter_settings(sink, replicas.current(), known=replicas.known())
            self._exchange.limiter = throttling.AsyncLimiter(dataclasses.replace(settings, probe_share=share))

        def set_fleet_share(self, share: float | None) -> None:
            return None  # the count alone

    def build(sink: spec.SinkSpec, replicas: fleet.Replicas) -> webhook_sink.WebhookSink:
        return Probing(sink, replicas=replicas)

    return build


# ------------------------------------------------------------------------------ shares
class Counted(Protocol):
    """A replica the coordinator can read and tell (bench/fleet.py's Replica)."""

    http_port: int

    def alive(self) -> bool: ...

    def tell(self, count: int) -> None: ...


async def coordinate(replicas: dict[int, Counted], period: float, client: httpx.AsyncClient) -> None:
    """Every ``period`` seconds, tell every live replica how many live replicas hold messages."""
    while True:
        await asyncio.sleep(period)
        live = [replica for replica in replicas.values() if replica.alive()]
        holding = 0
        for replica in live:
            held = await _in_flight(client, replica.http_port)
            holding += held is not None and held > 0
        for replica in live:
            replica.tell(max(1, holding))


async def _in_flight(client: httpx.AsyncClient, port: int) -> float | None:
    try:
        reply = await client.get(f"http://127.0.0.1:{port}/metrics", timeout=1)
    except httpx.HTTPError:
        return None
    for line in reply.text.splitlines():
        if line.startswith("fanout_in_flight_messages{"):
            return float(line.rsplit(" ", 1)[1])
    return None


def _write_stats(stats: dict[str, float]) -> None:
    path = os.environ.get(STATS_ENV)
    if path:
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(stats, handle)


if __name__ == "__main__":
    print("bench/_candidates.py: what bench/fleet.py --candidates measures besides (nothing to run alone)")
