"""One HTTP/1.1 client connection: an asyncio ``Protocol`` feeding ``httptools``' parser.

:class:`Connection` sends one request at a time (no pipelining) and hands back the answer
whole; :mod:`workers.http11.pool` keeps connections per origin and
:mod:`workers.sinks.transport` speaks httpx's API on top (:mod:`workers.sqswire` sends SQS's
calls through the pool as bytes). The answer is parsed by
``httptools`` (llhttp, Node.js's parser, in C): its callbacks below gather the status, the
reason, the header fields as they came (name case kept) and the body — Content-Length,
chunked (de-chunked by the parser) or delimited by the close of the connection (completed
here at end of stream, when the head named no length). 1xx interim answers are skipped;
204 and 304 answers carry no body (the parser knows); the answer to a HEAD request ends
with its head, and its connection is then closed (the parser, which does not know the
request, would wait for the body the head announces).

Errors are translated where they enter (:data:`ON_OPEN_CONNECTION`): a reply that is not
HTTP, or a body cut short, is ``httpx.RemoteProtocolError``; a reset, ``httpx.ReadError``;
silence longer than the ``read`` timeout (measured from the last byte in either direction),
``httpx.ReadTimeout`` (``httpx.WriteTimeout`` while the server is not taking the request).
A connection that served an answer before and is closed before the first byte of the next
one fails with :class:`Stale`, which the transport retries once on a new connection.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Final, cast

import httptools
import httpx

ON_OPEN_CONNECTION: Final[tuple[tuple[type[BaseException], type[httpx.TransportError]], ...]] = (
    (httptools.HttpParserError, httpx.RemoteProtocolError),  # not HTTP, or a broken frame
    (httptools.HttpParserUpgrade, httpx.RemoteProtocolError),  # 101: HTTP/1.1 only here
    (OSError, httpx.ReadError),  # reset, broken pipe
)
"""How an error on an open connection leaves: the httpx type httpx's own transport raises."""

_NO_ANSWER: Final = "Server disconnected without sending a response."
_CUT_SHORT: Final = "peer closed connection without sending complete message body"
_EARLY: Final = 0.001
"""Seconds a timer may fire early (libuv rounds to the millisecond)."""

Answer = tuple[int, bytes, list[tuple[bytes, bytes]], bytes]
"""(status, reason phrase, raw header fields, body)."""


class Stale(Exception):
    """A reused connection closed before any byte of the answer: safe to send again."""

    def __init__(self, error: httpx.TransportError) -> None:
        super().__init__(str(error))
        self.error = error


def translated(error: BaseException) -> httpx.TransportError:
    """``error`` as the httpx exception httpx's transport would raise on an open connection."""
    for source, target in ON_OPEN_CONNECTION:
        if isinstance(error, source):
            translation = target(str(error) or type(error).__name__)
            translation.__cause__ = error
            return translation
    return httpx.TransportError(str(error) or type(error).__name__)


class Connection(asyncio.Protocol):
    """An HTTP/1.1 connection; ``on_close`` is told once when it closes, whoever closes it."""

    __slots__ = (
        "_body",
        "_head_only",
        "_head_read",
        "_headers",
        "_keep_alive",
        "_loop",
        "_on_close",
        "_parser",
        "_paused",
        "_progress",
        "_reason",
        "_received",
        "_timeout",
        "_timer",
        "_transport",
        "_waiter",
        "closed",
        "idle_since",
        "served",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop, on_close: Callable[[Connection], None]) -> None:
        self._loop = loop
        self._on_close = on_close
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future[Answer] | None = None
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        self._reason = b""
        self._received = False
        self._head_only = False
        self._head_read = False
        self._keep_alive = True
        self._paused = False
        self._progress = 0.0
        self._timeout = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self.closed = False
        self.served = 0
        """Answers read whole on this connection."""
        self.idle_since = 0.0

    # -- the exchange ------------------------------------------------------------------------

    async def exchange(self, request: bytes, *, head_only: bool, timeout: float | None) -> Answer:
        """Send ``request`` (head and body, as they go on the wire) and wait for its answer.

        ``timeout``: seconds of silence allowed (httpx's ``read``), None for no limit. Raises
        an httpx transport error, or :class:`Stale`; after either the connection is closed.
        """
        transport = self._transport
        assert transport is not None and self._waiter is None
        waiter: asyncio.Future[Answer] = self._loop.create_future()
        self._waiter = waiter
        self._received = False
        self._head_only = head_only
        transport.write(request)
        if timeout is not None:
            self._timeout = timeout
            self._progress = self._loop.time()
            self._timer = self._loop.call_at(self._progress + self._timeout, self._check_silence)
        try:
            return await waiter
        except BaseException:
            self.close()  # mid-answer (cancelled, or failed): never reused
            raise
        finally:
            self._waiter = None
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

    @property
    def reusable(self) -> bool:
        """Open, and the last answer allows another request (keep-alive, whole)."""
        return self._keep_alive and not self.closed

    def close(self) -> None:
        if self._transport is not None and not self.closed:
            self._transport.close()
        self._closed()

    def _closed(self) -> None:
        if not self.closed:
            self.closed = True
            self._on_close(self)

    def _fail(self, error: BaseException) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)
        self.close()

    def _check_silence(self) -> None:
        self._timer = None
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        deadline = self._progress + self._timeout
        if self._loop.time() + _EARLY < deadline:
            self._timer = self._loop.call_at(deadline, self._check_silence)
            return
        if self._paused:
            self._fail(httpx.WriteTimeout("The server took none of the request in time."))
        else:
            self._fail(httpx.ReadTimeout("The server sent nothing in time."))

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def data_received(self, data: bytes) -> None:
        waiter = self._waiter
        if waiter is None or waiter.done():  # bytes nobody asked for: out of step
            self.close()
            return
        self._received = True
        self._progress = self._loop.time()
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as error:
            if isinstance(error.__context__, _HeadDone):  # httptools wraps a callback's error
                self._complete(keep_alive=False)
            else:
                self._fail(translated(error))

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._progress = self._loop.time()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed()
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        if exc is None and self._head_read and self._close_delimited():
            self._complete(keep_alive=False)
            return
        if exc is not None:
            error = translated(exc)
        else:
            error = httpx.RemoteProtocolError(_CUT_SHORT if self._received else _NO_ANSWER)
        if self.served and not self._received:
            waiter.set_exception(Stale(error))
        else:
            waiter.set_exception(error)

    # -- httptools' callbacks -----------------------------------------------------------------

    def on_message_begin(self) -> None:
        waiter = self._waiter
        if waiter is None or waiter.done():
            raise _OutOfStep  # a second answer to one request
        self._headers = []
        self._body = []
        self._reason = b""
        self._head_read = False

    def on_status(self, status: bytes) -> None:
        self._reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._head_read = True
        if self._head_only and self._parser.get_status_code() >= 200:
            raise _HeadDone

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            self._head_read = False  # an interim answer (100 Continue, 103 Early Hints):
            return  # the real one follows
        self._complete(keep_alive=self._parser.should_keep_alive())

    def _complete(self, *, keep_alive: bool) -> None:
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        self.served += 1
        self._keep_alive = keep_alive
        answer = (self._parser.get_status_code(), self._reason, self._headers, b"".join(self._body))
        waiter.set_result(answer)
        if not keep_alive:
            self.close()

    def _close_delimited(self) -> bool:
        """Whether the answer whose head was read ends with the connection (RFC 9112 §6.3):
        no Content-Length, no Transfer-Encoding. Read only at end of stream."""
        framing = (b"content-length", b"transfer-encoding")
        return not any(name.lower() in framing for name, _ in self._headers)


class _HeadDone(Exception):
    """Raised from a callback to stop the parser where the answer to a HEAD request ends."""


class _OutOfStep(Exception):
    """Raised from a callback when an answer begins that no request is waiting for."""
