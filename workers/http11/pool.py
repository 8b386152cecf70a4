"""The connections our HTTP/1.1 client keeps open, per origin (scheme, host, port).

:class:`Pool` hands out :class:`~workers.http11.connection.Connection` objects: an idle one
if there is one (the one used last: warm, least likely to have been closed), else a new one
while the origin has fewer than ``limits.max_connections``, else the first one given back
(callers wait in order, for at most httpx's ``pool`` timeout: ``httpx.PoolTimeout``). A
connection is kept for another request when its answer allows it (keep-alive, read whole),
up to ``limits.max_keepalive_connections`` idle per origin, for ``limits.keepalive_expiry``
seconds idle (one timer for the whole pool, not one per request). One the server closes
while idle leaves the pool at once (the connection sees the end of stream). The limits are
httpx's, counted per origin rather than across origins: a sink speaks to one or two
(its endpoint, a token endpoint), ``workers.sqswire`` to one (the SQS endpoint).

Connecting is bounded by httpx's ``connect`` timeout (TCP and TLS together), TLS with the
transport's context and SNI from the request's ``sni_hostname`` extension (else the host);
errors translated where they enter (:data:`ON_CONNECT`): a timeout is
``httpx.ConnectTimeout``, any other failure — refused, unreachable, no such host, TLS
handshake or certificate — ``httpx.ConnectError``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import ssl
from typing import Final

import httpx

from workers.http11 import connection

Origin = tuple[str, str, int]
"""(scheme, host as sent on the wire, port)."""
DEFAULT_PORTS: Final = {"http": 80, "https": 443}
"""The port of an origin whose URL names none, per scheme (the only schemes spoken)."""

ON_CONNECT: Final[tuple[tuple[type[BaseException], type[httpx.TransportError]], ...]] = (
    (TimeoutError, httpx.ConnectTimeout),
    (OSError, httpx.ConnectError),  # refused, unreachable, DNS; ssl.SSLError is an OSError
)


class _Origin:
    """The connections of one origin: open ones, idle ones, callers waiting for one."""

    __slots__ = ("connecting", "idle", "key", "members", "waiters")

    def __init__(self, key: Origin) -> None:
        self.key = key
        self.members: set[connection.Connection] = set()
        self.connecting = 0
        self.idle: list[connection.Connection] = []
        """Oldest first; taken from the end."""
        self.waiters: collections.deque[asyncio.Future[connection.Connection | None]] = collections.deque()
        """Each is given a connection, or None: room reserved to open one."""


class Pool:
    """Per-origin HTTP/1.1 connections within httpx's limits."""

    def __init__(self, *, limits: httpx.Limits, ssl_context: ssl.SSLContext) -> None:
        self._max = limits.max_connections
        self._keep = limits.max_keepalive_connections
        self._expiry = limits.keepalive_expiry
        self._ssl = ssl_context
        self._origins: dict[Origin, _Origin] = {}
        self._sweep: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def acquire(
        self, key: Origin, *, sni: str | None, connect: float | None, pool: float | None, fresh: bool = False
    ) -> connection.Connection:
        """A connection to ``key``: idle (unless ``fresh``), new, or given back by another caller."""
        origin = self._origins.get(key)
        if origin is None:
            origin = self._origins[key] = _Origin(key)
        while True:
            if not fresh and (idle := self._take_idle(origin)) is not None:
                return idle
            if self._max is None or len(origin.members) + origin.connecting < self._max:
                origin.connecting += 1
            else:
                given = await self._wait(origin, pool)
                if given is not None:
                    if given.closed:
                        continue
                    return given
            return await self._connect(key, origin, sni=sni, timeout=connect)

    async def request(
        self,
        key: Origin,
        wire: bytes,
        *,
        head_only: bool = False,
        sni: str | None = None,
        connect: float | None = None,
        read: float | None = None,
        pool: float | None = None,
    ) -> connection.Answer:
        """Send ``wire`` (the request as it goes on the wire) to ``key`` and return its answer
        whole. A reused connection found closed before any byte of the answer (:class:`Stale`)
        is sent again once, on a new connection (or the first one given back, which has just
        answered); any other failure is raised as it came."""
        conn = await self.acquire(key, sni=sni, connect=connect, pool=pool)
        try:
            return await conn.exchange(wire, head_only=head_only, timeout=read)
        except connection.Stale:
            self.release(key, conn)
            conn = await self.acquire(key, sni=sni, connect=connect, pool=pool, fresh=True)
            try:
                return await conn.exchange(wire, head_only=head_only, timeout=read)
            except connection.Stale as again:  # handed a connection that had just answered
                raise again.error from None
        finally:
            self.release(key, conn)

    def release(self, key: Origin, conn: connection.Connection) -> None:
        """``conn`` back after its exchange: kept, handed on, or closed."""
        if not conn.reusable:
            conn.close()
            return
        origin = self._origins[key]
        while origin.waiters:
            waiter = origin.waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        if self._keep is not None and len(origin.idle) >= self._keep:
            conn.close()
            return
        loop = self._running_loop()
        conn.idle_since = loop.time()
        origin.idle.append(conn)
        if self._sweep is None and self._expiry is not None:
            self._sweep = loop.call_later(self._expiry, self._expire)

    async def aclose(self) -> None:
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        for origin in self._origins.values():
            for conn in list(origin.members):
                conn.close()

    # -- inside -------------------------------------------------------------------------------

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    def _take_idle(self, origin: _Origin) -> connection.Connection | None:
        idle = origin.idle
        while idle:
            conn = idle.pop()
            if self._expiry is not None and self._running_loop().time() - conn.idle_since >= self._expiry:
                conn.close()  # and every older one is expired too: the sweep will see to them
                continue
            return conn
        return None

    async def _wait(self, origin: _Origin, timeout: float | None) -> connection.Connection | None:
        waiter: asyncio.Future[connection.Connection | None] = self._running_loop().create_future()
        origin.waiters.append(waiter)
        try:
            async with asyncio.timeout(timeout):
                return await waiter
        except BaseException as error:
            if waiter.done() and not waiter.cancelled():
                self._give_back(origin, waiter.result())  # given one, then cancelled before resuming
            with contextlib.suppress(ValueError):
                origin.waiters.remove(waiter)
            if isinstance(error, TimeoutError):
                raise httpx.PoolTimeout("No connection to the origin came free in time.") from None
            raise

    def _give_back(self, origin: _Origin, given: connection.Connection | None) -> None:
        if given is None:
            origin.connecting -= 1
            self._room(origin)
        else:
            self.release(origin.key, given)

    async def _connect(
        self, key: Origin, origin: _Origin, *, sni: str | None, timeout: float | None
    ) -> connection.Connection:
        """A new connection in the room reserved for it (``origin.connecting``)."""
        loop = self._running_loop()
        scheme, host, port = key
        tls = scheme == "https"
        discard = functools.partial(self._discard, origin)
        try:
            async with asyncio.timeout(timeout):
                _, conn = await loop.create_connection(
                    lambda: connection.Connection(loop, discard),
                    host,
                    port,
                    ssl=self._ssl if tls else None,
                    server_hostname=(sni or host) if tls else None,
                )
        except BaseException as error:
            origin.connecting -= 1
            self._room(origin)
            for source, target in ON_CONNECT:
                if isinstance(error, source):
                    raise target(str(error) or type(error).__name__) from error
            raise
        origin.connecting -= 1
        origin.members.add(conn)
        if conn.closed:  # closed by the server before we got to it
            self._discard(origin, conn)
        return conn

    def _discard(self, origin: _Origin, conn: connection.Connection) -> None:
        """``conn`` closed (told by the connection itself, once): its room is free."""
        if conn in origin.members:
            origin.members.remove(conn)
            with contextlib.suppress(ValueError):
                origin.idle.remove(conn)
            self._room(origin)

    def _room(self, origin: _Origin) -> None:
        """Room for one more connection: reserved for the first caller still waiting."""
        while origin.waiters:
            waiter = origin.waiters.popleft()
            if not waiter.done():
                origin.connecting += 1
                waiter.set_result(None)
                return

    def _expire(self) -> None:
        """Close the connections idle for ``keepalive_expiry``; come back for the next one due."""
        self._sweep = None
        assert self._expiry is not None and self._loop is not None
        now = self._loop.time()
        due: float | None = None
        for origin in self._origins.values():
            while origin.idle:
                oldest = origin.idle[0]
                if now - oldest.idle_since < self._expiry - 0.001:
                    when = oldest.idle_since + self._expiry
                    due = when if due is None else min(due, when)
                    break
                del origin.idle[0]
                oldest.close()
        if due is not None:
            self._sweep = self._loop.call_at(due, self._expire)
