"""The long-poll loop: receive only what we can finish, only while the sink takes work.

``running`` starts ``spec.queue.pollers`` :class:`Poller` tasks sharing one
:class:`Budget`. Before each ``ReceiveMessage`` a poller

1. waits while the sink is not accepting (paused by Retry-After, circuit open): the
   messages wait in SQS, where they are safe, instead of in our memory;
2. reserves room in the in-flight budget (received, not yet settled) and asks for no
   more than that, so the worker never holds more than it can send soon.

The budget follows what the sink can send (:func:`budget_target`): about
``HORIZON_SECONDS`` of its capacity — its slice of the fleet's rate, or what its
concurrency allows at the answers' latency, whichever is less — plus what waits in
lanes for a message that is away, never more than ``queue.maxInFlight``, which is an upper
bound, not a setting to get right. A replica that held ``maxInFlight`` messages its
limiter would let it send over many seconds kept them from the replicas with room to send
them: in ``bench/fleet.py`` three replicas holding 200 each used 0.52 of the grant. The
slice is the fleet's rate divided by the replica count, not the replica's current pace:
what a replica holds is what its share of the fleet's rate is measured by
(:mod:`workers.fleet`), and a budget that followed the pace would feed the share back into
itself (with reads a second late the shares swung and the fleet was refused a tenth of its
requests, in ``tests/test_pacing.py``'s fleet).

Received messages are tracked by the settler (which heartbeats them and frees their
budget when they are settled) and handed to the processor. An empty receive costs
the long poll only. Receive errors never end the loop: they mark the worker unready
and back off.

On shutdown (:meth:`Poller.stop`) a receive under way is let finish, for up to
``STOP_WAIT_SECONDS``, and what it brings goes straight back to the queue: cancelled, it
would still have taken its messages out of the queue for a whole visibility timeout
(60 s by default), unseen — the tail of a backlog waited for them after every SIGTERM
in ``bench/fleet_changes.py``. A receive still under way after that is a long poll on an
empty queue, and is cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Callable
from typing import Any

from fanout_core import spec as spec_model
from workers import settling, sqs, telemetry
from workers.sinks import base

log = logging.getLogger(__name__)

_MAX_ERROR_BACKOFF = 30.0
HORIZON_SECONDS = 1.0
"""How much of the sink's capacity a replica holds: received messages wait at most about
this long for their turn (plus the SQS round trip)."""
_RECHECK_SECONDS = 0.1
"""While full, how often a poller looks whether the target grew (the sink sped up)."""
STOP_WAIT_SECONDS = 2.0
"""On shutdown, how long a receive under way may still take (SQS answers at once when it
has messages; one that takes longer was waiting on an empty queue)."""


def budget_target(capacity: float | None, held_back: int, *, ceiling: int) -> int:
    """Messages a replica may hold: ``HORIZON_SECONDS`` of ``capacity`` (messages per second
    the sink makes room for, :meth:`workers.sinks.base.Sink.capacity`; None: unknown, take
    the ceiling) plus ``held_back`` (held, but not waiting for the sink: being deleted, or
    waiting for a message of their lane that is away), within [1, ceiling]."""
    if capacity is None:
        return ceiling
    return max(1, min(ceiling, math.ceil(capacity * HORIZON_SECONDS - 1e-9) + held_back))


class Budget:
    """A bounded count of messages in our hands; pollers reserve before they receive.

    ``target`` (optional) is consulted at each reservation: the limit is
    ``min(limit, target())``. Without it the limit is fixed.
    """

    def __init__(self, limit: int, target: Callable[[], int] | None = None) -> None:
        self.limit = limit
        self._target = target
        self._used = 0
        self._room = asyncio.Event()
        self._room.set()

    @property
    def used(self) -> int:
        return self._used

    @property
    def current_limit(self) -> int:
        if self._target is None:
            return self.limit
        return max(1, min(self.limit, self._target()))

    async def reserve(self, most: int) -> int:
        """Wait for room, then reserve up to ``most`` places; return how many."""
        while self._used >= (limit := self.current_limit):
            self._room.clear()
            if self._target is None:
                await self._room.wait()
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._room.wait(), _RECHECK_SECONDS)
        granted = min(most, limit - self._used)
        self._used += granted
        return granted

    def release(self, count: int) -> None:
        if count <= 0:
            return
        self._used = max(0, self._used - count)
        self._room.set()


class Poller:
    """One long-poll loop over the source queue."""

    def __init__(
        self,
        *,
        client: sqs.SqsApi,
        queue: spec_model.QueueSpec,
        budget: Budget,
        sink: base.Sink,
        settler: settling.Settler,
        submit: Callable[[list[settling.Received]], None],
        telemetry: telemetry.WorkerTelemetry,
        on_health: Callable[[bool], None],
    ) -> None:
        self._client = client
        self._queue = queue
        self._budget = budget
        self._sink = sink
        self._settler = settler
        self._submit = submit
        self._telemetry = telemetry
        self._on_health = on_health
        self._stopping = False
        self._receiving = False

    def stop(self) -> bool:
        """Receive no more; True when a receive is under way (the caller waits for it, and what
        it brings goes back to the queue at once)."""
        self._stopping = True
        return self._receiving

    async def run(self) -> None:
        failures = 0
        while not self._stopping:
            await self._sink.wait_accepting()
            granted = await self._budget.reserve(self._queue.max_messages)
            try:
                self._receiving = True
                messages = await self._receive(granted)
            except sqs.SqsError as error:
                self._budget.release(granted)
                failures += 1
                self._on_health(False)
                delay = min(_MAX_ERROR_BACKOFF, 0.5 * 2 ** min(failures, 10))
                log.warning("receive failed (%s); next try in %.1fs", error, delay)
                await asyncio.sleep(delay)
                continue
            except BaseException:
                self._budget.release(granted)
                raise
            finally:
                self._receiving = False
            failures = 0
            self._on_health(True)
            self._budget.release(granted - len(messages))
            records = [self._settler.track(message) for message in messages]
            if self._stopping:
                self._settler.give_back(records)
                return
            if records:
                self._submit(records)

    async def _receive(self, count: int) -> list[dict[str, Any]]:
        with self._telemetry.receive_span() as span:
            reply = await sqs.call(
                self._client.receive_message,
                QueueUrl=self._queue.url,
                MaxNumberOfMessages=count,
                WaitTimeSeconds=self._queue.wait_time_seconds,
                VisibilityTimeout=self._queue.visibility_timeout_seconds,
                MessageSystemAttributeNames=["All"],
                MessageAttributeNames=["All"],
            )
            messages: list[dict[str, Any]] = reply.get("Messages", [])
            self._telemetry.record_batch(span, messages)
            self._telemetry.received(len(messages))
            return messages
