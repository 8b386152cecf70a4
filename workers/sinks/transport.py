"""The HTTP transport of the sinks: httpx's connection pool on plain asyncio sockets.

:class:`PooledTransport` is what :class:`~workers.sinks.exchange.Exchanger` gives its
``httpx.AsyncClient`` when no transport is passed in. It is httpcore's
``AsyncConnectionPool`` and HTTP/1.1 code — the bytes on the wire are exactly those of
httpx's default transport — on :class:`AsyncioBackend`, a network backend written against
httpcore's public interface on an ``asyncio.Protocol``, instead of the default anyio one.

Why: before every request and after every response the pool asks each idle connection
whether its socket is readable (the server closed it, or sent bytes it should not have).
The anyio stream answers with a ``getpeername`` and a ``poll`` system call per connection,
so a sink with 20 keep-alive connections made some 80 system calls per request, and anyio's
cancel scopes added their own bookkeeping to every read and write — a quarter of the CPU
of an httpx request on loopback. Here the protocol already holds what the event loop read,
so the answer is "is anything buffered, or has the peer gone": no system call. And the
request head and body, which httpcore writes one after the other, leave in one ``send``
(written at the first read, or on the next turn of the loop, whichever comes first).

Errors leave as httpx's own exception types (``httpx.ConnectError``, ``httpx.ReadTimeout``,
...), mapped from httpcore's at this boundary, so callers see what the default transport
raises. Proxies from the environment still work: httpx mounts its default transport for
proxied URLs.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from typing import Any, Final

import httpcore
import httpx

_HIGH_WATER: Final = 256 * 1024
"""Bytes buffered from a peer before the socket stops being read (resumed below half)."""
_COALESCE_LIMIT: Final = 64 * 1024
"""Outgoing bytes held back to leave in one ``send``; beyond this a write goes out at once."""
_HAPPY_EYEBALLS_DELAY: Final = 0.25


class _Connection(asyncio.Protocol):
    """The receiving half of one connection: what the loop read, and whether the peer left."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.closed = False
        self.error: Exception | None = None
        self._reading_paused = False
        self.writing_paused = False
        self._readable: asyncio.Future[None] | None = None
        self._writable: asyncio.Future[None] | None = None

    # -- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if len(self.buffer) > _HIGH_WATER and self.transport is not None and not self._reading_paused:
            self._reading_paused = True
            self.transport.pause_reading()
        _wake(self._readable)

    def eof_received(self) -> bool:
        self.closed = True
        _wake(self._readable)
        return False  # close the transport: HTTP/1.1 has no use for a half-closed connection

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.error = exc
        _wake(self._readable)
        _wake(self._writable)

    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        _wake(self._writable)

    # -- for the stream ------------------------------------------------------------------------

    @property
    def readable(self) -> bool:
        """A read would return at once: bytes are buffered or the peer has gone."""
        return bool(self.buffer) or self.closed

    async def wait_readable(self) -> None:
        while not self.readable:
            self._readable = asyncio.get_running_loop().create_future()
            try:
                await self._readable
            finally:
                self._readable = None

    def take(self, max_bytes: int) -> bytes:
        data = bytes(self.buffer[:max_bytes])
        del self.buffer[:max_bytes]
        if self._reading_paused and len(self.buffer) < _HIGH_WATER // 2 and self.transport is not None:
            self._reading_paused = False
            self.transport.resume_reading()
        return data

    async def wait_writable(self) -> None:
        while self.writing_paused and not self.closed:
            self._writable = asyncio.get_running_loop().create_future()
            try:
                await self._writable
            finally:
                self._writable = None


def _wake(waiter: asyncio.Future[None] | None) -> None:
    if waiter is not None and not waiter.done():
        waiter.set_result(None)


def _describe(error: BaseException | None, default: str) -> str:
    return f"{default}: {type(error).__name__}: {error}" if error is not None else default


class _Stream(httpcore.AsyncNetworkStream):
    """One connection as httpcore reads and writes it."""

    def __init__(self, connection: _Connection, transport: asyncio.Transport) -> None:
        self._connection = connection
        self._transport = transport
        self._pending: list[bytes] = []
        self._pending_bytes = 0

    def _flush(self) -> None:
        if self._pending:
            data = b"".join(self._pending) if len(self._pending) > 1 else self._pending[0]
            self._pending.clear()
            self._pending_bytes = 0
            if not self._transport.is_closing():
                self._transport.write(data)

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        self._flush()
        connection = self._connection
        if not connection.readable:
            try:
                async with asyncio.timeout(timeout):
                    await connection.wait_readable()
            except TimeoutError as error:
                raise httpcore.ReadTimeout("read timed out") from error
        if connection.buffer:
            return connection.take(max_bytes)
        if connection.error is not None:
            raise httpcore.ReadError(_describe(connection.error, "connection lost")) from connection.error
        return b""  # the peer closed the connection

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        connection = self._connection
        if connection.closed or self._transport.is_closing():
            raise httpcore.WriteError(_describe(connection.error, "connection closed"))
        if not self._pending:
            asyncio.get_running_loop().call_soon(self._flush)
        self._pending.append(buffer)
        self._pending_bytes += len(buffer)
        if self._pending_bytes <= _COALESCE_LIMIT:
            return
        self._flush()  # a large body: out now, sent at once or buffered by the transport
        if connection.writing_paused:  # the transport's buffer is full: wait for it to drain
            try:
                async with asyncio.timeout(timeout):
                    await connection.wait_writable()
            except TimeoutError as error:
                raise httpcore.WriteTimeout("write timed out") from error
        if connection.error is not None:
            raise httpcore.WriteError(_describe(connection.error, "connection lost")) from connection.error

    async def aclose(self) -> None:
        self._flush()
        if not self._transport.is_closing():
            self._transport.close()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        self._flush()
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                tls = await loop.start_tls(
                    self._transport, self._connection, ssl_context, server_hostname=server_hostname
                )
        except TimeoutError as error:
            self._transport.abort()
            raise httpcore.ConnectTimeout("TLS handshake timed out") from error
        except (OSError, ConnectionError) as error:  # ssl.SSLError is an OSError
            self._transport.abort()
            raise httpcore.ConnectError(_describe(error, "TLS handshake failed")) from error
        if tls is None:  # pragma: no cover - only when the loop itself is closing
            raise httpcore.ConnectError("TLS handshake failed: no transport")
        assert isinstance(tls, asyncio.Transport)
        self._connection.transport = tls
        return _Stream(self._connection, tls)

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable":
            return self._connection.readable
        names = {"ssl_object": "ssl_object", "client_addr": "sockname", "server_addr": "peername"}
        if info in names:
            return self._transport.get_extra_info(names[info])
        if info == "socket":
            return self._transport.get_extra_info("socket")
        return None


def _apply(transport: asyncio.Transport, options: Iterable[Any] | None) -> None:
    # asyncio already sets TCP_NODELAY on TCP connections, as anyio does.
    sock = transport.get_extra_info("socket")
    for option in options or ():
        sock.setsockopt(*option)


class AsyncioBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend on asyncio's own transports and protocols."""

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                transport, connection = await loop.create_connection(
                    _Connection,
                    host,
                    port,
                    local_addr=(local_address, 0) if local_address else None,
                    happy_eyeballs_delay=_HAPPY_EYEBALLS_DELAY,
                )
        except TimeoutError as error:
            raise httpcore.ConnectTimeout(f"connecting to {host}:{port} timed out") from error
        except OSError as error:
            raise httpcore.ConnectError(_describe(error, f"cannot connect to {host}:{port}")) from error
        assert isinstance(transport, asyncio.Transport)
        _apply(transport, socket_options)
        return _Stream(connection, transport)

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                transport, connection = await loop.create_unix_connection(_Connection, path)
        except TimeoutError as error:
            raise httpcore.ConnectTimeout(f"connecting to {path} timed out") from error
        except OSError as error:
            raise httpcore.ConnectError(_describe(error, f"cannot connect to {path}")) from error
        assert isinstance(transport, asyncio.Transport)
        _apply(transport, socket_options)
        return _Stream(connection, transport)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


# httpcore's exceptions as httpx raises them; subclasses before their bases.
_HTTPX_ERRORS: Final[tuple[tuple[type[Exception], type[httpx.TransportError]], ...]] = (
    (httpcore.ConnectTimeout, httpx.ConnectTimeout),
    (httpcore.ReadTimeout, httpx.ReadTimeout),
    (httpcore.WriteTimeout, httpx.WriteTimeout),
    (httpcore.PoolTimeout, httpx.PoolTimeout),
    (httpcore.TimeoutException, httpx.TimeoutException),
    (httpcore.ConnectError, httpx.ConnectError),
    (httpcore.ReadError, httpx.ReadError),
    (httpcore.WriteError, httpx.WriteError),
    (httpcore.NetworkError, httpx.NetworkError),
    (httpcore.RemoteProtocolError, httpx.RemoteProtocolError),
    (httpcore.LocalProtocolError, httpx.LocalProtocolError),
    (httpcore.ProtocolError, httpx.ProtocolError),
    (httpcore.ProxyError, httpx.ProxyError),
    (httpcore.UnsupportedProtocol, httpx.UnsupportedProtocol),
)


@contextlib.contextmanager
def _as_httpx_errors() -> Iterator[None]:
    try:
        yield
    except Exception as error:
        for source, target in _HTTPX_ERRORS:
            if isinstance(error, source):
                raise target(str(error)) from error
        raise


class _ResponseStream(httpx.AsyncByteStream):
    def __init__(self, stream: AsyncIterable[bytes]) -> None:
        self._stream = stream

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _as_httpx_errors():
            async for part in self._stream:
                yield part

    async def aclose(self) -> None:
        close = getattr(self._stream, "aclose", None)
        if close is not None:
            with _as_httpx_errors():
                await close()


class PooledTransport(httpx.AsyncBaseTransport):
    """httpx's default transport, but on :class:`AsyncioBackend` (HTTP/1.1, no proxy)."""

    def __init__(self, *, limits: httpx.Limits, verify: ssl.SSLContext | bool = True) -> None:
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(verify=verify),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=AsyncioBackend(),
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        assert isinstance(request.stream, httpx.AsyncByteStream)
        core_request = httpcore.Request(
            method=request.method,
            url=httpcore.URL(
                scheme=request.url.raw_scheme,
                host=request.url.raw_host,
                port=request.url.port,
                target=request.url.raw_path,
            ),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        with _as_httpx_errors():
            response = await self._pool.handle_async_request(core_request)
        assert isinstance(response.stream, AsyncIterable)
        return httpx.Response(
            status_code=response.status,
            headers=response.headers,
            stream=_ResponseStream(response.stream),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        with _as_httpx_errors():
            await self._pool.aclose()
