"""A rate-limited webhook in a process of its own, for fleets measured by the clock.

A downstream must see requests when they arrive. In the consumers' own event loop, a stall
of that loop (a loaded machine, three workers in one process) hands the simulator a whole
second of requests at once, and its rate limit refuses a burst that never was on the
wire. :class:`WebhookProcess` runs a
:class:`~fanout_lab.simulators.webhook.WebhookSimulator` as ``python -m
fanout_lab.simulators.remote`` and reaches it over loopback HTTP: the data endpoint as any
webhook, and two controls — ``GET /_stats`` (what it counted; times are
``time.monotonic()``, one clock for every process on Linux) and ``GET /_outage?on=1|0``.
Used by the fleet benchmarks (``bench/_fleet.py``) and the fleet end-to-end test.

:func:`in_thread` is the lighter remedy for a simulator whose recorded requests a test reads
as it goes (the CRM's ``accepted``, ``request_times``): the simulator keeps its Python
objects, but serves from an event loop of its own in a thread, so a busy consumers' loop
delays its requests by a GIL switch (milliseconds), not by whatever that loop is doing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any, Self, TypeVar

from aiohttp import web

from fanout_lab.simulators import downstream, webhook

_START_TIMEOUT = 60.0


@dataclasses.dataclass(frozen=True)
class WebhookStats:
    """What a :class:`WebhookProcess` counted."""

    requests: int
    throttled: int
    """Answered 429 (the rate limit; the outage answers 503)."""
    unique: int
    """Event ids (``Idempotency-Key``) accepted at least once."""
    accepted: int
    first_request: float | None
    first_accepted: dict[str, float]
    """Event id → when it was first accepted (only with ``full``)."""

    @property
    def busy_seconds(self) -> float:
        """From the first request to the last event's first acceptance (needs ``full``)."""
        if self.first_request is None or not self.first_accepted:
            return 0.0
        return max(self.first_accepted.values()) - self.first_request


class WebhookProcess:
    """``with WebhookProcess(rate=30, burst=10) as sim: sim.url ...``"""

    def __init__(self, *, rate: float, burst: int, latency: float = 0.0) -> None:
        self.log = tempfile.NamedTemporaryFile(prefix="fanout-webhook-", suffix=".log", delete=False)  # noqa: SIM115
        command = [sys.executable, "-m", __name__, "--rate", str(rate), "--burst", str(burst)]
        command += ["--latency", str(latency)]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=self.log)
        self.url = f"http://127.0.0.1:{self._ready_port()}"

    def _ready_port(self) -> str:
        assert self.process.stdout is not None
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            line = self.process.stdout.readline().decode().strip()
            word, _, port = line.partition(" ")
            if word == "ready":
                return port
            if self.process.poll() is not None:
                break
        self.stop()
        raise RuntimeError(f"the webhook simulator did not start; see {self.log.name}")

    async def stats(self, client: Any, *, full: bool = False) -> WebhookStats:
        """``client``: an ``httpx.AsyncClient``."""
        reply = await client.get(f"{self.url}/_stats", params={"full": "1" if full else "0"})
        document = reply.json()
        return WebhookStats(
            requests=document["requests"],
            throttled=document["throttled"],
            unique=document["unique"],
            accepted=document["accepted"],
            first_request=document["first_request"],
            first_accepted=document["first_accepted"],
        )

    async def set_outage(self, client: Any, on: bool) -> None:
        await client.get(f"{self.url}/_outage", params={"on": "1" if on else "0"})

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class _Observed(webhook.WebhookSimulator):
    """The simulator with its two controls."""

    def __init__(self, **behaviour: Any) -> None:
        super().__init__(**behaviour)
        self._first: dict[str, float] = {}
        self._seen = 0

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/_stats", self._answer_stats),
            web.get("/_outage", self._switch_outage),
            *super().routes(),
        ]

    async def _answer_stats(self, request: web.Request) -> web.Response:
        for item in self.accepted[self._seen :]:
            if item.event_id is not None:
                self._first.setdefault(item.event_id, item.received_at)
        self._seen = len(self.accepted)
        return web.json_response(
            {
                "requests": self.requests_total,
                "throttled": self.status_counts[429],
                "unique": len(self._first),
                "accepted": len(self.accepted),
                "first_request": self.request_times[0] if self.request_times else None,
                "first_accepted": self._first if request.query.get("full") == "1" else {},
            }
        )

    async def _switch_outage(self, request: web.Request) -> web.Response:
        self.set_outage(request.query.get("on") == "1")
        return web.json_response({"outage": self.outage})


Simulator = TypeVar("Simulator", bound=downstream.DownstreamSimulator)


@contextlib.asynccontextmanager
async def in_thread(simulator: Simulator) -> AsyncIterator[Simulator]:
    """``async with in_thread(CrmSimulator(...)) as sim:`` — started, served and stopped on an
    event loop in a thread of its own (see the module docstring). What the caller reads of it
    (lists it appends to, counters) is safe to read from the caller's loop; the switches it
    offers (``set_outage``, ``set_rate``) are plain assignments."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="simulator", daemon=True)
    thread.start()
    try:
        await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(simulator.start(), loop))
        try:
            yield simulator
        finally:
            await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(simulator.stop(), loop))
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


async def _serve(rate: float, burst: int, latency: float) -> None:
    async with _Observed(rate=rate, burst=burst, latency=latency, seed=3) as simulator:
        print(f"ready {simulator.url.rsplit(':', 1)[1]}", flush=True)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, required=True)
    parser.add_argument("--burst", type=int, required=True)
    parser.add_argument("--latency", type=float, default=0.0)
    arguments = parser.parse_args()
    asyncio.run(_serve(arguments.rate, arguments.burst, arguments.latency))
