"""The seam between the worker runtime and a downstream API.

A sink takes one decoded event and answers with an :data:`~workers.events.Outcome`;
it never raises for a downstream failure (exceptions are translated where they
enter). Sinks that batch on the wire (Splunk HEC) still answer per event.

``accepting`` and ``wait_accepting`` are the backpressure signal the pollers read:
while a sink is paused by a Retry-After or its circuit is open, the pollers stop
receiving and the messages wait safely in SQS. ``capacity`` sizes what they receive:
about a second of what the sink can send (``polling.budget_target``).
"""

from __future__ import annotations

from typing import Protocol

from workers import events


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
        """Events per second the sink can deliver now; None when nothing bounds it."""
        ...

    async def deliver(self, event: events.Event) -> events.Outcome:
        """Deliver one event; translate every downstream failure into an Outcome."""
        ...

    async def aclose(self) -> None:
        """Flush what is buffered and release connections."""
        ...
