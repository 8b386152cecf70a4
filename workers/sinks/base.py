"""The seam between the worker runtime and a downstream API.

A sink takes one decoded event and answers with an :data:`~workers.events.Outcome`;
it never raises for a downstream failure (exceptions are translated where they
enter). Sinks that batch on the wire (Splunk HEC) still answer per event.

**Admission.** ``deliver`` takes an :class:`Admission` from the runtime and awaits it at
the moment the limiter grants the request a permit — not before the wait for one. That is
when the runtime claims the event in its idempotency store, so a claim never sits out a
long Retry-After pause or an open circuit (and the runtime renews it while the request is
in the sink). An admission that answers False means "do not send" (already delivered, or
being delivered elsewhere): the sink hands its permit back unused and answers
:class:`~workers.events.NotSent`.

**Backpressure.** ``accepting`` and ``wait_accepting`` are the signal the pollers read:
while a sink is paused by a Retry-After or its circuit is open (after failures, or at
once when our credential is refused), the pollers stop receiving and the messages wait
safely in SQS. ``capacity`` sizes what they receive: about a second of what the sink
makes room for (``polling.budget_target``). ``set_fleet_share`` passes on this replica's share
of what the whole fleet holds, which the runtime measures (:mod:`workers.fleet`): a rate
limit shared by the fleet goes where the work is.

**Shutdown.** ``flush`` sends what is buffered now (the runtime calls it when it starts
draining, so no delivery waits for a batch timer); ``aclose`` then releases connections
and abandons whatever could still not be sent — it never sends anything itself, because
by then the runtime can no longer delete what a late send would deliver.
"""

from __future__ import annotations

from typing import Protocol

from workers import events


class Admission(Protocol):
    """The runtime's go-ahead for one event, asked when its permit is granted."""

    @property
    def immediate(self) -> bool:
        """True when asking answers without I/O (the memory idempotency store): a sink
        admitting a batch then asks in turn rather than concurrently, one task per event."""
        ...

    async def __call__(self) -> bool:
        """True: send it now. False: do not send (the sink answers NotSent)."""
        ...


class Sink(Protocol):
    """A downstream API behind one method."""

    @property
    def name(self) -> str:
        """Bounded label for metrics and logs (the sink type)."""
        ...

    @property
    def accepting(self) -> bool:
        """False while the sink is paused (Retry-After) or its circuit is open."""
        ...

    async def wait_accepting(self) -> None:
        """Return once the sink takes work again (immediately when it does)."""
        ...

    def capacity(self) -> float | None:
        """Events per second the sink makes room for: its slice of a fleet-wide rate limit, or
        what its concurrency allows, whichever is less; None when nothing bounds it."""
        ...

    def set_fleet_share(self, share: float | None) -> None:
        """This replica's share of the messages the fleet holds (None: not measured)."""
        ...

    async def deliver(self, event: events.Event, admit: Admission | None = None) -> events.Outcome:
        """Deliver one event; translate every downstream failure into an Outcome."""
        ...

    async def flush(self) -> None:
        """Send what is buffered now instead of when a batch fills or its timer fires."""
        ...

    async def aclose(self) -> None:
        """Release connections; abandon (never send) what is still buffered."""
        ...
