"""One limited HTTP exchange: what every HTTP sink shares.

Each sink module (``webhook``, ``crm``, ``siem``) knows its wire format and how to read
its downstream's answers; :class:`Exchanger` does the rest, the same way for all three:

1. tells the limiter when the replica count sharing the rate changed, and passes on this
   replica's share of the fleet's work as the runtime reads it (:mod:`workers.fleet`);
2. waits for a permit (:class:`workers.throttling.AsyncLimiter`);
3. once the permit is granted, lets the sink ``prepare`` the request: that is when the
   event is *admitted* (its idempotency claim is taken, see :class:`~workers.sinks.base.Admission`)
   and when a probe through a half-open circuit re-reads the sink's secrets; a prepare that
   declines hands the permit back unused;
4. sends the request inside a CLIENT span with a W3C ``traceparent`` injected, through
   httpx on :func:`~workers.sinks.transport.default_transport` (httpx's API on our own
   HTTP/1.1 client, asyncio Protocols and httptools' C parser: the cheapest way to send with
   httpx, see that module; aiohttp when the environment names a proxy) unless a transport
   is passed in; the request is built here and handed to the transport
   (:class:`_RequestBuilder`), cheaper than ``AsyncClient.request`` and byte for byte the same;
5. translates httpx's exceptions into an :class:`Answer` (``timed_out`` / ``error``) —
   nothing from httpx escapes a sink;
6. lets the sink's ``judge`` turn the answer into a :class:`Judgement` (the sink's value,
   the limiter :class:`~workers.throttling.Result`, the Retry-After pause, the metric
   label) and reports it to the limiter and the telemetry (a refused credential also
   raises the ``fanout_sink_credentials_refused`` gauge until an answer is accepted).

Secrets never reach a log line from here: request headers are not logged, and errors
are described by their type only.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Final, Generic, TypeVar

import httpx

from fanout_core import spec
from workers import fleet, retrying, telemetry, throttling
from workers.sinks import secrets
from workers.sinks import transport as http_transport

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclasses.dataclass(frozen=True, slots=True)
class Answer:
    """What came back: a response, or why none did."""

    status: int | None = None
    headers: httpx.Headers = dataclasses.field(default_factory=httpx.Headers)
    body: bytes = b""
    timed_out: bool = False
    error: str | None = None
    """Transport failure (exception type name) when there is no response."""
    seconds: float = 0.0

    def header(self, name: str) -> str | None:
        value: str | None = self.headers.get(name)
        return value

    def retry_after(self) -> float | None:
        """The ``Retry-After`` delay (seconds or HTTP-date), or None."""
        return retrying.retry_after_delay(self.header("Retry-After"), now=time.time())

    def describe(self) -> str:
        if self.timed_out:
            return "timeout"
        if self.status is None:
            return f"connection error ({self.error})"
        return f"HTTP {self.status}"


@dataclasses.dataclass(frozen=True, slots=True)
class Judgement(Generic[T]):
    """A sink's reading of an :class:`Answer`."""

    value: T
    result: throttling.Result
    outcome: telemetry.SinkOutcome
    pause: float | None = None
    """Seconds the whole sink waits (Retry-After)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Request:
    """What a sink sends once its permit is granted."""

    content: bytes
    headers: Mapping[str, str]


def limiter_settings(sink: spec.SinkSpec, replicas: int, *, known: bool = True) -> throttling.LimiterSettings:
    """The spec's limits for one replica of ``replicas`` (``known``: somebody said so)."""
    limit = sink.rate_limit
    return throttling.LimiterSettings(
        rate=limit.requests_per_second if limit is not None else None,
        burst=limit.burst if limit is not None else 1,
        replicas=max(1, replicas),
        replicas_known=known,
        max_concurrency=sink.max_concurrency,
        failure_threshold=sink.circuit_failure_threshold,
        open_seconds=sink.circuit_open_seconds,
        # Never the doubled periods a long outage would grow (60 s cost 0.5 of the grant):
        # while the downstream stays down, short probes bounded by the slice (``throttling``).
        max_open_seconds=sink.circuit_open_seconds,
        outage_probe_share=throttling.OUTAGE_PROBE_SHARE,
    )


def transport_answer(error: httpx.HTTPError, seconds: float) -> Answer:
    """An httpx exception as an Answer (type name only: messages can quote URLs)."""
    return Answer(
        timed_out=isinstance(error, httpx.TimeoutException), error=type(error).__name__, seconds=seconds
    )


class Exchanger:
    """The limiter, the client and the telemetry of one sink."""

    def __init__(
        self,
        sink: spec.SinkSpec,
        *,
        name: str,
        replicas: fleet.Replicas,
        clock: throttling.Clock | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        metrics: telemetry.WorkerMetrics | None = None,
    ) -> None:
        self.name = name
        self._spec = sink
        self._replicas = replicas
        self._replica_count = replicas.current()
        self.telemetry = telemetry.SinkTelemetry(name, metrics=metrics)
        self.limiter = throttling.AsyncLimiter(
            limiter_settings(sink, self._replica_count, known=replicas.known()),
            clock=clock,
            on_change=self._publish,
        )
        limits = httpx.Limits(
            max_connections=sink.max_concurrency, max_keepalive_connections=sink.max_concurrency
        )
        self._transport = transport or http_transport.default_transport(limits=limits)
        # The client gives the requests its defaults (headers, timeout) and closes the
        # transport; requests go straight to the transport, which a client given one always
        # picks (see _RequestBuilder).
        self.client = httpx.AsyncClient(
            transport=self._transport, timeout=httpx.Timeout(sink.timeout_seconds), follow_redirects=False
        )
        self._requests = _RequestBuilder(self.client, sink.headers)

    # -- the Sink protocol's backpressure half ----------------------------------------------

    @property
    def accepting(self) -> bool:
        return self.limiter.accepting

    async def wait_accepting(self) -> None:
        await self.limiter.wait_accepting()

    async def aclose(self) -> None:
        await self.client.aclose()

    # -- exchanges ---------------------------------------------------------------------------

    def sync_replicas(self) -> None:
        """Re-share the rate when the replica count changed (cheap: the count caches)."""
        count = self._replicas.current()
        if count != self._replica_count:
            self._replica_count = count
            self.limiter.set_replicas(count)

    async def send(
        self,
        method: str,
        url: str,
        *,
        prepare: Callable[[throttling.Permit], Awaitable[Request | Judgement[T] | None]],
        judge: Callable[[Answer], Judgement[T]],
        unsent: T,
    ) -> T:
        """One request under the limiter.

        ``prepare`` runs when the permit is granted and returns the request to send; or
        None — do not send: the permit goes back unused and ``unsent`` is returned; or a
        :class:`Judgement` — the request cannot be made (no usable credential): it counts
        with the limiter as if the downstream had answered so. ``judge`` reads the answer.
        """
        self.sync_replicas()
        async with self.limiter.slot() as slot:
            prepared = await prepare(slot.permit)
            if prepared is None:
                slot.report(throttling.Result.UNUSED)
                return unsent
            if isinstance(prepared, Judgement):
                judgement = prepared
            else:
                answer = await self.request(method, url, content=prepared.content, headers=prepared.headers)
                judgement = judge(answer)
                self.telemetry.request(judgement.outcome.value, answer.seconds)
            slot.report(judgement.result, retry_after=judgement.pause)
        if judgement.result is throttling.Result.REFUSED:
            self.telemetry.credentials_refused(True)
        elif judgement.result is throttling.Result.OK:
            self.telemetry.credentials_refused(False)
        return judgement.value

    async def request(self, method: str, url: str, *, content: bytes, headers: Mapping[str, str]) -> Answer:
        """Send without the limiter (token endpoints, health checks); never raises httpx errors."""
        outgoing = dict(headers)
        started = time.monotonic()
        with self.telemetry.http_span(method, url) as span:
            telemetry.inject_headers(outgoing)
            try:
                response = await self._send(self._requests.build(method, url, content, outgoing))
            except httpx.HTTPError as error:
                return transport_answer(error, time.monotonic() - started)
            span.set_attribute("http.response.status_code", response.status_code)
        return Answer(
            status=response.status_code,
            headers=response.headers,
            body=response.content,
            seconds=time.monotonic() - started,
        )

    async def _send(self, request: httpx.Request) -> httpx.Response:
        """The transport's response, read to the end."""
        response = await self._transport.handle_async_request(request)
        try:
            await response.aread()
        finally:
            await response.aclose()
        return response

    def _publish(self, snapshot: throttling.Snapshot) -> None:
        self.telemetry.limiter_state(
            rate=snapshot.rate,
            concurrency=snapshot.concurrency,
            paused=snapshot.paused,
            circuit=int(snapshot.circuit),
        )


class _RequestBuilder:
    """Builds the ``httpx.Request`` that ``client.request`` would send, at a fraction of the cost.

    ``AsyncClient.request`` merges the client's URL, parameters, headers and cookies into
    new objects and parses the URL on every call, and after the answer reads it for
    ``Set-Cookie``; a sink has no base URL, parameters or cookies (no downstream it speaks
    uses them: bearer tokens, HEC tokens, signed webhooks), and its URL rarely changes. So
    the request is made here — the client's default headers (those the request does not
    set, as httpx merges them), then the spec's extra headers (those the sink does not set
    itself, whatever the case of the name), then the sink's own; the client's timeout; the
    URL parsed once (:func:`_parsed`) — and handed straight to the client's transport, the one ``client.send``
    picks for every URL when the client is given a transport (httpx's environment proxies
    apply only to its default transport; the sinks' transport reads them itself). Never a
    redirect followed. The bytes on the wire are those of ``client.request`` with the merged
    headers (the tests compare them).
    """

    __slots__ = ("_defaults", "_extensions", "_spec_headers")

    def __init__(self, client: httpx.AsyncClient, spec_headers: Mapping[str, str]) -> None:
        self._defaults = [
            (name.decode("latin-1"), value.decode("latin-1")) for name, value in client.headers.raw
        ]
        self._spec_headers = dict(spec_headers)
        self._extensions = {"timeout": client.timeout.as_dict()}

    def build(self, method: str, url: str, content: bytes, headers: Mapping[str, str]) -> httpx.Request:
        extra = list(headers.items())
        if self._spec_headers:
            own = {name.lower() for name in headers}
            extra[:0] = [
                (name, value) for name, value in self._spec_headers.items() if name.lower() not in own
            ]
        overridden = {name.lower() for name, _ in extra}
        parsed = _parsed(url)
        # The headers ``Request(content=...)`` would add, where it would put them, unless set
        # already: Host first, then for an empty POST, PUT or PATCH ``Content-Length: 0``; a
        # body's Content-Length last. Given as a stream (httpx's API for a request whose
        # headers are complete) the request skips normalising every header twice.
        complete: list[tuple[str, str]] = []
        if "host" not in overridden:
            complete.append(("Host", _netloc(parsed)))
        sized = "content-length" in overridden or "transfer-encoding" in overridden
        if not sized and not content and method.upper() in _BODY_METHODS:
            complete.append(("Content-Length", "0"))
        complete.extend((name, value) for name, value in self._defaults if name.lower() not in overridden)
        complete.extend(extra)
        if not sized and content:
            complete.append(("Content-Length", str(len(content))))
        extensions = dict(self._extensions)
        stream = httpx.ByteStream(content)
        request = httpx.Request(method, parsed, headers=complete, stream=stream, extensions=extensions)
        request.read()  # what content= does: the body is there to read again (a retry, a hook)
        return request


_BODY_METHODS: Final = frozenset({"POST", "PUT", "PATCH"})


@functools.lru_cache(maxsize=1024)
def _netloc(url: httpx.URL) -> str:
    return url.netloc.decode("ascii")


@functools.lru_cache(maxsize=1024)
def _parsed(url: str) -> httpx.URL:
    """A URL parsed once: a webhook or a HEC endpoint is one URL, a CRM upsert one per
    conversation, whose events come close together (httpx's parse is a tenth of a request)."""
    return httpx.URL(url)


class ExchangeSink:
    """Base of the HTTP sinks: the half of the Sink protocol that is the limiter's.

    A subclass names itself (``kind``), builds its :class:`Exchanger` with
    :meth:`_open_exchange` and writes ``deliver``; backpressure (``accepting``,
    ``wait_accepting``), the limiter and closing come from here.
    """

    kind: str = ""
    _exchange: Exchanger
    _secrets: tuple[secrets.Secret, ...] = ()
    """What :meth:`refresh_secrets` re-reads before a probe (a rotated credential)."""

    def _open_exchange(
        self,
        sink: spec.SinkSpec,
        *,
        replicas: fleet.Replicas,
        clock: throttling.Clock | None,
        transport: httpx.AsyncBaseTransport | None,
        metrics: telemetry.WorkerMetrics | None = None,
    ) -> None:
        self._exchange = Exchanger(
            sink, name=self.kind, replicas=replicas, clock=clock, transport=transport, metrics=metrics
        )

    @property
    def name(self) -> str:
        return self.kind

    @property
    def accepting(self) -> bool:
        return self._exchange.accepting

    @property
    def limiter(self) -> throttling.AsyncLimiter:
        return self._exchange.limiter

    async def wait_accepting(self) -> None:
        await self._exchange.wait_accepting()

    def capacity(self) -> float | None:
        """The limiter's permits per second times the events one request carries."""
        permits = self._exchange.limiter.capacity()
        return None if permits is None else permits * self.events_per_request()

    def set_fleet_share(self, share: float | None) -> None:
        """Passed on to the limiter's pace (a fleet-wide rate limit follows the work)."""
        self._exchange.limiter.set_share(share)

    def events_per_request(self) -> float:
        """Events one request carries (1; a batching sink says how many, lately)."""
        return 1.0

    async def flush(self) -> None:
        """Nothing is buffered by a one-request-per-event sink."""

    async def aclose(self) -> None:
        await self._exchange.aclose()

    def refresh_secrets(self) -> None:
        """Re-read every secret from its source; a source that fails keeps the last value.

        Called before each probe through a half-open circuit, so a credential rotated in a
        mounted Secret is picked up without a restart.
        """
        refresh_all(self._secrets, sink=self.kind)


def refresh_all(sources: Iterable[secrets.Secret], *, sink: str) -> None:
    """Re-read ``sources``; a source that cannot be read keeps its last value (logged)."""
    for secret in sources:
        try:
            secret.refresh()
        except secrets.SecretError as error:
            reason = str(error)
            log.warning("secret not re-read; keeping the last value", extra={"sink": sink, "reason": reason})
