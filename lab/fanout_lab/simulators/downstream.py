"""What every downstream simulator shares: a loopback aiohttp server with a rate limit,
latency, faults, an outage switch, and a record of what it accepted.

The webhook receiver (:mod:`.webhook`), the CRM (:mod:`.crm`) and the Splunk HEC
(:mod:`.hec`) subclass :class:`DownstreamSimulator`; each only parses its own wire format
and renders its own error bodies. Tests, ``fanout demo`` and ``bench/`` use them as::

    async with WebhookSimulator(rate=50, burst=5) as sim:
        ...  # point a sink at sim.url
        assert not sim.order_violations() and not sim.duplicates()

Every request to a data endpoint first goes through :meth:`DownstreamSimulator.admit`
(latency, then outage, then the rate limit, then random throttles and faults, in that
order) so the simulators agree on what "throttled" and "outage" mean. Randomness comes
from one seeded :class:`random.Random`, so a failing run can be replayed.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import datetime
import email.utils
import enum
import json
import math
import random
import time
import typing
from collections.abc import Awaitable, Callable, Mapping
from types import TracebackType
from typing import Any, Literal, Self

from aiohttp import web

from fanout_lab.simulators import ratelimit

RetryAfterFormat = Literal["seconds", "fractional", "http-date"]
"""``seconds``: RFC 9110 delay-seconds (an integer, rounded up); ``fractional``: a decimal
number of seconds (not standard, but precise); ``http-date``: an IMF-fixdate."""

_KEY_PATHS = (
    ("eventBody", "conversationId"),
    ("detail", "eventBody", "conversationId"),
    ("conversationId",),
    ("eventBody", "id"),
    ("detail", "eventBody", "id"),
)
_SEQ_PATHS = (
    ("seq",),
    ("sequence",),
    ("eventBody", "eventTime"),
    ("detail", "eventBody", "eventTime"),
    ("eventTime",),
)


def dig(document: Any, path: tuple[str, ...]) -> Any:
    """``document[path[0]][path[1]]...`` or None when any step is missing."""
    for step in path:
        if not isinstance(document, Mapping) or step not in document:
            return None
        document = document[step]
    return document


def default_key(document: Any) -> str | None:
    """The conversation id wherever a Genesys-shaped payload keeps it."""
    for path in _KEY_PATHS:
        value = dig(document, path)
        if isinstance(value, str | int):
            return str(value)
    return None


def default_seq(document: Any) -> float | None:
    """A per-conversation sequence: ``seq``/``sequence``, else the event time (epoch ms)."""
    for path in _SEQ_PATHS:
        value = dig(document, path)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    return None


@dataclasses.dataclass(frozen=True, slots=True)
class AcceptedRequest:
    """One event the simulator accepted (answered with success), in arrival order."""

    key: str | None
    """Ordering key (conversation id / external id) or None when the event has none."""
    event_id: str | None
    """Idempotency-Key header, HEC event id field, or the CRM external id + body hash."""
    body: bytes
    """The bytes of this event (for HEC: one event object of the batch)."""
    headers: Mapping[str, str]
    received_at: float
    """``time.monotonic()`` when the request arrived."""
    seq: float | None = None
    path: str = ""

    def json(self) -> Any:
        return json.loads(self.body)


@dataclasses.dataclass(frozen=True, slots=True)
class OrderViolation:
    """An event accepted after a later one of the same key."""

    key: str
    event_id: str | None
    seq: float
    previous_seq: float


class Admission(enum.Enum):
    """What :meth:`DownstreamSimulator.admit` decided for one request."""

    PASS = "pass"
    OUTAGE = "outage"
    THROTTLED = "throttled"
    FAULT = "fault"


@dataclasses.dataclass(frozen=True, slots=True)
class Verdict:
    admission: Admission
    retry_after: float | None = None
    """Seconds the client should wait (throttled / outage), before formatting."""


class Behaviour(typing.TypedDict, total=False):
    """How a simulator behaves; every simulator takes these keywords (see :class:`DownstreamSimulator`)."""

    rate: float | None
    burst: int
    latency: float
    fail_ratio: float
    throttle_ratio: float
    retry_after: float
    seed: int
    throttle_status: int
    retry_after_format: RetryAfterFormat
    outage_retry_after: float | None
    host: str


class DownstreamSimulator:
    """Base class: the server, the gate every request passes, and the records."""

    default_throttle_status = 429
    """What a throttled request is answered with unless ``throttle_status`` says otherwise."""

    uncounted_paths: frozenset[str] = frozenset()
    """Non-data endpoints (token issuance) left out of the request counts."""

    def __init__(
        self,
        *,
        rate: float | None = None,
        burst: int = 1,
        latency: float = 0.0,
        fail_ratio: float = 0.0,
        throttle_ratio: float = 0.0,
        retry_after: float = 1.0,
        seed: int = 0,
        retry_after_format: RetryAfterFormat = "seconds",
        outage_retry_after: float | None = None,
        host: str = "127.0.0.1",
        throttle_status: int | None = None,
    ) -> None:
        self.throttle_status = throttle_status or self.default_throttle_status
        self._bucket = ratelimit.Gcra(rate, burst) if rate is not None else None
        self.latency = latency
        self.fail_ratio = fail_ratio
        self.throttle_ratio = throttle_ratio
        self.retry_after = retry_after
        self.retry_after_format: RetryAfterFormat = retry_after_format
        self.outage_retry_after = outage_retry_after
        self._random = random.Random(seed)
        self._host = host
        self._outage = False
        self._runner: web.AppRunner | None = None
        self._port: int | None = None
        self.accepted: list[AcceptedRequest] = []
        self.requests_total = 0
        """Requests that reached a data endpoint (every answer, any status)."""
        self.request_times: list[float] = []
        """``time.monotonic()`` of each of those requests (count probes in a window)."""
        self.status_counts: collections.Counter[int] = collections.Counter()
        self.throttled_count = 0
        """Requests refused by the rate limit or a random throttle (not the outage)."""
        self.outage_count = 0
        self.fault_count = 0
        self.in_flight = 0
        self.max_in_flight = 0

    # -- lifecycle ---------------------------------------------------------------------

    def routes(self) -> list[web.RouteDef]:
        """The data endpoints; subclasses override."""
        raise NotImplementedError

    @property
    def url(self) -> str:
        """Base URL (no trailing slash)."""
        if self._port is None:
            raise RuntimeError("simulator not started")
        return f"http://{self._host}:{self._port}"

    async def start(self) -> None:
        app = web.Application(middlewares=[self._count])
        app.add_routes(self.routes())
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, self._host, 0)
        await site.start()
        self._runner = runner
        address = runner.addresses[0]
        self._port = int(address[1])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # -- runtime switches --------------------------------------------------------------

    def set_outage(self, on: bool) -> None:
        """While on, every data request is answered 503 (HEC: code 9)."""
        self._outage = on

    @property
    def outage(self) -> bool:
        return self._outage

    def set_rate(self, rate: float | None, burst: int | None = None) -> None:
        """Change (or remove, with None) the server-side rate limit while running."""
        if rate is None:
            self._bucket = None
        elif self._bucket is None:
            self._bucket = ratelimit.Gcra(rate, burst or 1)
        else:
            self._bucket.set_rate(rate, burst)

    # -- the gate ----------------------------------------------------------------------

    @web.middleware
    async def _count(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if request.method == "GET" or request.path in self.uncounted_paths:
            return await handler(request)
        self.requests_total += 1
        self.request_times.append(time.monotonic())
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            response = await handler(request)
        except web.HTTPException as error:
            self.status_counts[error.status] += 1
            raise
        finally:
            self.in_flight -= 1
        self.status_counts[response.status] += 1
        return response

    async def admit(self) -> Verdict:
        """Latency, then outage, rate limit, random throttle, random fault."""
        if self.latency > 0:
            await asyncio.sleep(self.latency)
        if self._outage:
            self.outage_count += 1
            return Verdict(Admission.OUTAGE, self.outage_retry_after)
        if self._bucket is not None:
            wait = self._bucket.take(time.monotonic())
            if wait > 0:
                self.throttled_count += 1
                return Verdict(Admission.THROTTLED, wait)
        if self.throttle_ratio > 0 and self._random.random() < self.throttle_ratio:
            self.throttled_count += 1
            return Verdict(Admission.THROTTLED, self.retry_after)
        if self.fail_ratio > 0 and self._random.random() < self.fail_ratio:
            self.fault_count += 1
            return Verdict(Admission.FAULT)
        return Verdict(Admission.PASS)

    def retry_after_header(self, seconds: float | None) -> dict[str, str]:
        """``{"Retry-After": ...}`` in the configured format, or {} for None."""
        if seconds is None:
            return {}
        if self.retry_after_format == "fractional":
            return {"Retry-After": f"{max(seconds, 0.001):.3f}"}
        if self.retry_after_format == "http-date":
            when = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=math.ceil(seconds))
            return {"Retry-After": email.utils.format_datetime(when, usegmt=True)}
        return {"Retry-After": str(max(1, math.ceil(seconds)))}

    def record(self, accepted: AcceptedRequest) -> None:
        self.accepted.append(accepted)

    # -- what tests ask ----------------------------------------------------------------

    def by_key(self) -> dict[str, list[AcceptedRequest]]:
        """Accepted events grouped by key, in arrival order (keyless events left out)."""
        groups: dict[str, list[AcceptedRequest]] = collections.defaultdict(list)
        for item in self.accepted:
            if item.key is not None:
                groups[item.key].append(item)
        return dict(groups)

    def duplicates(self) -> dict[str, int]:
        """Event id → times accepted, for ids accepted more than once."""
        counts = collections.Counter(item.event_id for item in self.accepted if item.event_id)
        return {event_id: count for event_id, count in counts.items() if count > 1}

    def order_violations(
        self,
        key_fn: Callable[[AcceptedRequest], str | None] | None = None,
        *,
        seq_fn: Callable[[AcceptedRequest], float | None] | None = None,
    ) -> list[OrderViolation]:
        """First acceptances whose sequence went backwards within their key.

        ``key_fn`` defaults to :attr:`AcceptedRequest.key`, ``seq_fn`` to
        :attr:`AcceptedRequest.seq` (payload ``seq``/``sequence``, else the event time).
        Redeliveries of an already accepted event id are duplicates, not violations.
        """
        key_of = key_fn or (lambda item: item.key)
        seq_of = seq_fn or (lambda item: item.seq)
        seen: set[str] = set()
        last: dict[str, float] = {}
        violations: list[OrderViolation] = []
        for item in self.accepted:
            if item.event_id is not None:
                if item.event_id in seen:
                    continue
                seen.add(item.event_id)
            key, seq = key_of(item), seq_of(item)
            if key is None or seq is None:
                continue
            previous = last.get(key)
            if previous is not None and seq < previous:
                violations.append(OrderViolation(key, item.event_id, seq, previous))
            else:
                last[key] = seq
        return violations

    def requests_between(self, start: float, end: float) -> int:
        """Requests that arrived in ``[start, end)`` (``time.monotonic()`` seconds)."""
        return sum(1 for moment in self.request_times if start <= moment < end)
