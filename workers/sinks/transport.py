"""The sinks' HTTP transport: httpx's API on a small HTTP/1.1 client of our own.

:class:`Http11Transport` is what :class:`~workers.sinks.exchange.Exchanger` gives its
``httpx.AsyncClient`` (:func:`default_transport`). The sinks keep httpx's API (requests,
responses, timeouts, ``MockTransport`` in tests); the bytes travel over asyncio
``Protocol`` connections (:mod:`workers.http11.connection`) whose answers ``httptools``
parses (llhttp, Node.js's HTTP parser, in C; uvicorn's parser), kept per origin by
:mod:`workers.http11.pool`.

Why a hand-written client: the CPU one request costs. Measured on loopback (a server in
another process, 4,000 POSTs of a 1.2 KB JSON body, 10 at a time, uvloop, the client's
``time.process_time()``): aiohttp's ``ClientSession.post`` costs 78-107 µs per request, a
bare asyncio ``Protocol`` with httptools' parser on a keep-alive connection 25 µs. In the
worker under load aiohttp's ``ClientSession._request`` was ~12.5% of all CPU (py-spy), the
largest piece after botocore: per-request timers and trace hooks, its request and response
objects, a stream reader and payload writer per request, none of which a sink uses. Before
this client the sinks sent through aiohttp (less than half the CPU per request of httpx's
default transport, httpcore on anyio); the PyPI adapter ``httpx-aiohttp`` was rejected
then: it lower-cases every header name on the wire, turns a refused connection into
``httpx.ConnectTimeout`` and gives aiohttp a cookie jar of its own under httpx's.

What it does:

* **the wire is httpx's** — the request line, the header fields in httpx's order and case
  (Host first, as h11 puts it), the body exactly as httpx builds it (chunked when httpx
  says so, framed as h11 frames it); nothing added; a header value carrying CR or LF is
  refused (``httpx.LocalProtocolError``), as h11 refuses it;
* **the pool** (:mod:`workers.http11.pool`) — keep-alive connections per origin within
  httpx's ``Limits`` (per origin), idle ones expiring after ``keepalive_expiry``, dropped as
  soon as the server closes them; TLS from httpx's ``create_ssl_context(verify=...)`` with
  SNI from the request's ``sni_hostname`` extension; no cookies (httpx's jar is the only one);
* **a stale connection** — a reused keep-alive connection found closed before any byte of
  its answer (the server closed it as the request went out) is retried once, on a new
  connection (or, when the origin is at its limit, the first one given back: it has just
  answered) — the usual client behaviour for a stale keep-alive connection, here whatever
  the method (aiohttp retries only idempotent ones): a delivery failed so would be sent again
  by the worker anyway (at least once, deduplicated by its idempotency key), only later and
  counted against the downstream by the limiter. A connection that had not served a request
  before, or that delivered part of an answer, is never retried;
* **timeouts** — httpx's ``connect`` bounds the TCP and TLS connect, ``read`` each silence
  while the answer is awaited, ``pool`` the wait for a connection;
* **whole answers** — the body read to the end (Content-Length, chunked, or until the close)
  before the response is handed over, its header fields as received (none added);
* **errors** — translated where they enter, each the type httpx's own transport raises:
  ``httpx.ConnectError`` / ``ConnectTimeout`` (connecting), ``RemoteProtocolError`` (not HTTP,
  cut short, closed without an answer), ``ReadError`` (reset), ``ReadTimeout``, ``PoolTimeout``.

What it does not: HTTP/2, pipelining, streaming bodies either way, ``Expect: 100-continue``
(interim answers are read past), upgrades, proxies. **When the environment names a proxy**
(``HTTP_PROXY``, ``HTTPS_PROXY``, ``ALL_PROXY``... as ``urllib.request.getproxies()`` reads
them) :func:`default_transport` keeps the sinks on :class:`AiohttpTransport`, httpx's API on
aiohttp, which honours them and ``NO_PROXY`` (httpx itself ignores the environment's proxies
for a client given a transport, which is how the sinks' clients are made). Its errors leave
as httpx's too (:func:`httpx_error_type`), and its wire is the same.
"""

from __future__ import annotations

import contextlib
import functools
import ssl
import urllib.request
from collections.abc import Iterator
from typing import Final

import aiohttp
import httpx
import yarl

from workers.http11 import pool


def default_transport(
    *, limits: httpx.Limits, verify: ssl.SSLContext | bool = True
) -> httpx.AsyncBaseTransport:
    """The sinks' transport: our HTTP/1.1 client, or aiohttp when the environment names a proxy."""
    if urllib.request.getproxies():
        return AiohttpTransport(limits=limits, verify=verify)
    return Http11Transport(limits=limits, verify=verify)


class Http11Transport(httpx.AsyncBaseTransport):
    """httpx's transport seam on :class:`~workers.http11.pool.Pool` (HTTP/1.1, no proxies)."""

    def __init__(self, *, limits: httpx.Limits, verify: ssl.SSLContext | bool = True) -> None:
        self._pool = pool.Pool(limits=limits, ssl_context=httpx.create_ssl_context(verify=verify))

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        scheme = url.scheme
        default_port = pool.DEFAULT_PORTS.get(scheme)
        if default_port is None:
            raise httpx.UnsupportedProtocol(f"Request URL has an unsupported protocol '{scheme}://'.")
        key = (scheme, url.raw_host.decode("ascii"), url.port or default_port)
        wire = await _wire(request)
        timeout = request.extensions.get("timeout", {})
        answer = await self._pool.request(
            key,
            wire,
            head_only=request.method == "HEAD",
            sni=request.extensions.get("sni_hostname"),
            connect=timeout.get("connect"),
            read=timeout.get("read"),
            pool=timeout.get("pool"),
        )
        status, reason, headers, body = answer
        # stream=, not content=: httpx would add a Content-Length the server did not send.
        return httpx.Response(
            status,
            headers=headers,
            stream=httpx.ByteStream(body),
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": reason},
        )

    async def aclose(self) -> None:
        await self._pool.aclose()


async def _wire(request: httpx.Request) -> bytes:
    """The request as h11 (httpx's default transport) writes it: head, then framed body."""
    fields = request.headers.raw
    if fields and fields[0][0].lower() != b"host":
        fields = sorted(fields, key=lambda field: field[0].lower() != b"host")  # stable: Host first
    lines = [b"%s %s HTTP/1.1" % (request.method.encode("ascii"), request.url.raw_path)]
    lines += [name + b": " + value for name, value in fields]
    lines += (b"", b"")
    head = b"\r\n".join(lines)
    if head.count(b"\n") != len(lines) - 1 or head.count(b"\r") != len(lines) - 1:
        raise httpx.LocalProtocolError("A header field name or value holds CR or LF.")
    stream = request.stream
    chunked = b"chunked" in head and request.headers.get("Transfer-Encoding", "").lower() == "chunked"
    if chunked and isinstance(stream, httpx.AsyncByteStream):  # as h11 frames each part
        parts = [b"%x\r\n%s\r\n" % (len(part), part) async for part in stream if part]
        return head + b"".join(parts) + b"0\r\n\r\n"
    try:
        body = request.content
    except httpx.RequestNotRead:
        body = await request.aread()
    return head + body


# -- behind a proxy: httpx on aiohttp -----------------------------------------------------------

_TRANSLATIONS: Final[tuple[tuple[type[BaseException], type[httpx.TransportError]], ...]] = (
    # Subclasses before their bases.
    (aiohttp.ConnectionTimeoutError, httpx.ConnectTimeout),
    (aiohttp.ServerTimeoutError, httpx.ReadTimeout),
    (TimeoutError, httpx.ReadTimeout),
    (aiohttp.ClientConnectorError, httpx.ConnectError),  # refused, DNS, TLS handshake, certificate
    (aiohttp.ServerDisconnectedError, httpx.RemoteProtocolError),  # closed without an answer
    (aiohttp.ClientPayloadError, httpx.RemoteProtocolError),  # body cut short
    (aiohttp.ClientResponseError, httpx.RemoteProtocolError),  # not an HTTP reply
    (aiohttp.InvalidURL, httpx.UnsupportedProtocol),
    (aiohttp.NonHttpUrlClientError, httpx.UnsupportedProtocol),
    (aiohttp.ClientOSError, httpx.ReadError),  # reset or broken pipe on an open connection
    (aiohttp.ClientConnectionError, httpx.NetworkError),
    (aiohttp.ClientError, httpx.TransportError),
)
_CONTENT_TYPE: Final = ("Content-Type",)


def httpx_error_type(error: BaseException) -> type[httpx.TransportError] | None:
    """The httpx exception type for an aiohttp (or timeout) error; None for others."""
    for source, target in _TRANSLATIONS:
        if isinstance(error, source):
            return target
    return None


@contextlib.contextmanager
def _as_httpx_errors() -> Iterator[None]:
    try:
        yield
    except (TimeoutError, aiohttp.ClientError) as error:
        target = httpx_error_type(error)
        assert target is not None
        raise target(str(error) or type(error).__name__) from error


@functools.lru_cache(maxsize=1024)
def _aiohttp_url(url: str) -> yarl.URL:
    """httpx's URL as aiohttp takes it, already encoded (so sent as is); parsed once per URL."""
    return yarl.URL(url, encoded=True)


@functools.lru_cache(maxsize=64)
def _aiohttp_timeout(connect: float | None, read: float | None, pool: float | None) -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(sock_connect=connect, sock_read=read, connect=pool)


class AiohttpTransport(httpx.AsyncBaseTransport):
    """httpx's transport seam on one ``aiohttp.ClientSession`` (HTTP/1.1): the sinks' transport
    when the environment names a proxy, which aiohttp reads (``trust_env``) for every request."""

    def __init__(self, *, limits: httpx.Limits, verify: ssl.SSLContext | bool = True) -> None:
        self._limits = limits
        self._ssl = httpx.create_ssl_context(verify=verify)
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
            limit=self._limits.max_connections or 0,
            keepalive_timeout=self._limits.keepalive_expiry,
            ssl=self._ssl,
        )
        return aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),
            trust_env=bool(urllib.request.getproxies()),
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        session = self._session
        if session is None:
            session = self._session = self._open()
        timeout = request.extensions.get("timeout", {})
        headers = [(name.decode("latin-1"), value.decode("latin-1")) for name, value in request.headers.raw]
        body = await request.aread()
        with _as_httpx_errors():
            response = await session.request(
                request.method,
                _aiohttp_url(str(request.url)),
                headers=headers,
                data=body or None,
                skip_auto_headers=None if "Content-Type" in request.headers else _CONTENT_TYPE,
                allow_redirects=False,
                auto_decompress=False,  # httpx decodes Content-Encoding itself
                timeout=_aiohttp_timeout(timeout.get("connect"), timeout.get("read"), timeout.get("pool")),
                server_hostname=request.extensions.get("sni_hostname"),
            )
            try:
                content = await response.read()
            finally:
                response.release()  # back to the pool when read to the end, else closed
        extensions = {"http_version": b"HTTP/1.1", "reason_phrase": (response.reason or "").encode()}
        return httpx.Response(
            status_code=response.status, headers=response.raw_headers, content=content, extensions=extensions
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
