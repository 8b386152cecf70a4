"""The sinks' HTTP transport: httpx's API on aiohttp's connection pool.

:class:`AiohttpTransport` is what :class:`~workers.sinks.exchange.Exchanger` gives its
``httpx.AsyncClient`` when no transport is passed in. The sinks keep httpx's API (requests,
responses, timeouts, ``MockTransport`` in tests); the bytes travel through aiohttp, whose
HTTP/1.1 parser is written in C: a bare loop sending through httpx on aiohttp spends less
than half the CPU per event of the same loop on httpx's default transport, and about 0.65 of
the hand-written asyncio network backend this module held before (``bench/overhead.py
--transports``).

Why not the PyPI adapter ``httpx-aiohttp``, which does the same in as many lines (the bench
measures it beside this one)? Three things a sink cannot live with: it lower-cases every
header name on the wire (``idempotency-key``: legal HTTP, but a receiver reading headers
case-sensitively — an API Gateway REST event, a hand-written handler — would lose them);
it turns every ``aiohttp.ClientConnectionError`` — a refused connection, a server that hangs
up — into ``httpx.ConnectTimeout``, which a sink reads as "the downstream is overloaded"
rather than "failed"; and it gives aiohttp a cookie jar of its own under httpx's.

So, here:

* **the wire is httpx's** — the request line, the header fields in httpx's order and case,
  and the body exactly as httpx builds them (the URL is passed on already encoded); aiohttp
  adds no header of its own;
* **the pool** — one ``ClientSession`` made on the first request (inside the running loop),
  a ``TCPConnector`` of at most ``limits.max_connections`` connections kept alive for
  ``limits.keepalive_expiry``, TLS from httpx's ``create_ssl_context(verify=...)`` (the same
  trust store and settings httpx would use), and no cookie jar: httpx's is the only one;
* **timeouts** — httpx's ``connect`` bounds the TCP (and TLS) connect, ``read`` each read,
  ``pool`` the wait for a connection;
* **whole answers** — the body is read to the end before the response is handed over (the
  sinks read every answer whole, and a handful of bytes at that): no streaming layers
  between aiohttp's buffer and the caller;
* **errors** — every aiohttp error, raised by the request or while its body is read, leaves
  as the httpx type httpx's own transport raises for the same event
  (:func:`httpx_error_type`): callers see ``httpx.ConnectError``, ``httpx.ReadTimeout``,
  ``httpx.RemoteProtocolError``... and never an aiohttp type.

HTTP/1.1 only, as before. Proxies come from the environment (``HTTP_PROXY``, ``HTTPS_PROXY``,
``NO_PROXY``), read by aiohttp (``trust_env``), which is turned on only when one is set: it
looks them up for every request. (httpx itself ignores them for a client given a transport,
which is how the sinks' clients were always made: before this transport they were not used.)
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
    """httpx's transport seam on one ``aiohttp.ClientSession`` (HTTP/1.1)."""

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
