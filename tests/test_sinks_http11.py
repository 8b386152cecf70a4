"""What only the sinks' own HTTP/1.1 client does (:class:`Http11Transport`), on raw servers.

The contract both sinks' transports keep is ``test_sinks_transport.py``; here, what a
hand-written client has to get right itself: a stale keep-alive connection retried once and
only when no byte of the answer came, answers framed every way (chunked, until the close,
HEAD, 1xx, 204/304, ``Connection: close``), resets, the pool's limit, its timeout and its
idle expiry, a cancelled request, the read timeout measured per silence, and requests
framed as h11 frames them (chunked bodies, Host first, no CR/LF smuggled into a header).
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator

import httpx
import pytest

from tests import raw_http
from workers.sinks import transport


def _client(limits: httpx.Limits = raw_http.LIMITS, **options: float | None) -> httpx.AsyncClient:
    timeout = httpx.Timeout(options.pop("timeout", 5.0), **options)
    return httpx.AsyncClient(transport=transport.Http11Transport(limits=limits), timeout=timeout)


# -- a stale keep-alive connection ----------------------------------------------------------------


async def test_a_reused_connection_closed_before_any_byte_of_the_answer_is_retried_once(
    serve: raw_http.Serve,
) -> None:
    """The server takes the second request on a kept connection and hangs up without a byte
    (as a server whose idle timeout fired as the request went out): sent again on a new one."""
    server = await serve(raw_http.answer_then_drop_the_second(None))
    async with _client() as client:
        for _ in range(2):
            assert (await client.post(server.url, content=b"{}")).status_code == 200
    assert (len(server.requests), server.connections) == (3, 2)


async def test_a_reused_connection_closed_after_part_of_the_answer_is_not_retried(
    serve: raw_http.Serve,
) -> None:
    server = await serve(raw_http.answer_then_drop_the_second(b"HTTP/1.1 200 OK\r\nContent-Len"))
    async with _client() as client:
        assert (await client.post(server.url, content=b"{}")).status_code == 200
        with pytest.raises(httpx.RemoteProtocolError):
            await client.post(server.url, content=b"{}")
    assert (len(server.requests), server.connections) == (2, 1)


async def test_the_retry_on_a_new_connection_is_the_only_one(serve: raw_http.Serve) -> None:
    async def answer_first_only(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: raw_http.Server
    ) -> None:
        first_connection = server.connections == 1
        while await raw_http.recorded_request(reader, server) is not None:
            if not first_connection or len(server.requests) > 1:
                return  # every later request: closed unanswered
            writer.write(raw_http.OK)
            await writer.drain()

    server = await serve(answer_first_only)
    async with _client() as client:
        assert (await client.post(server.url, content=b"{}")).status_code == 200
        with pytest.raises(httpx.RemoteProtocolError):
            await client.post(server.url, content=b"{}")
    assert (len(server.requests), server.connections) == (3, 2)


# -- answers framed every way -----------------------------------------------------------------------


def _answering(*parts: bytes, pause: float = 0.0) -> raw_http.Handler:
    """Answer each request with ``parts``, written one by one (``pause`` seconds apart)."""

    async def handler(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: raw_http.Server
    ) -> None:
        while await raw_http.recorded_request(reader, server) is not None:
            for part in parts:
                writer.write(part)
                await writer.drain()
                await asyncio.sleep(pause)

    return handler


async def test_a_chunked_answer_arrives_whole_with_its_own_header_fields(serve: raw_http.Serve) -> None:
    chunks = [b"x" * 70_000, b'{"a":', b"1}"]
    framed = [b"%x\r\n%s\r\n" % (len(chunk), chunk) for chunk in chunks]
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Id: 7\r\n\r\n"
    server = await serve(_answering(head, *framed, b"0\r\n\r\n", pause=0.01))
    async with _client() as client, httpx.AsyncClient() as stock:
        ours = await client.post(server.url, content=b"{}")
        theirs = await stock.post(server.url, content=b"{}")
        again = await client.post(server.url, content=b"{}")  # the connection was kept
    assert ours.content == again.content == theirs.content == b"".join(chunks)
    assert ours.headers.raw == theirs.headers.raw  # no Content-Length of our own
    assert server.connections == 2


async def test_an_answer_without_length_ends_with_the_connection(serve: raw_http.Serve) -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n"

    async def answer_until_close(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: raw_http.Server
    ) -> None:
        request = await raw_http.recorded_request(reader, server)
        assert request is not None
        for part in (head, b"a" * 100_000, b"end"):
            writer.write(part)
            await writer.drain()
            await asyncio.sleep(0.01)

    server = await serve(answer_until_close)
    async with _client() as client:
        for _ in range(2):
            response = await client.post(server.url, content=b"{}")
            assert response.content == b"a" * 100_000 + b"end"
    assert server.connections == 2


async def test_a_chunked_answer_cut_short_is_a_protocol_error(serve: raw_http.Serve) -> None:
    async def cut(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: raw_http.Server
    ) -> None:
        await raw_http.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab")

    server = await serve(cut)
    async with _client() as client:
        with pytest.raises(httpx.RemoteProtocolError):
            await client.post(server.url, content=b"{}")


async def test_interim_answers_are_skipped(serve: raw_http.Serve) -> None:
    interim = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
    server = await serve(_answering(interim, raw_http.OK))
    async with _client() as client:
        for _ in range(2):
            response = await client.post(server.url, content=b"{}")
            assert (response.status_code, response.content, response.reason_phrase) == (200, b"{}", "OK")
    assert server.connections == 1


@pytest.mark.parametrize("status", [b"204 No Content", b"304 Not Modified"])
async def test_204_and_304_carry_no_body_whatever_their_length_says(
    serve: raw_http.Serve, status: bytes
) -> None:
    server = await serve(_answering(b"HTTP/1.1 %s\r\nContent-Length: 10\r\n\r\n" % status))
    async with _client() as client:
        for _ in range(2):
            response = await client.post(server.url, content=b"{}")
            assert response.content == b""
    assert server.connections == 1


async def test_the_answer_to_head_ends_with_its_head(serve: raw_http.Serve) -> None:
    server = await serve(_answering(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"))
    async with _client(timeout=2.0) as client:
        for _ in range(2):
            response = await client.head(server.url)
            assert (response.status_code, response.content) == (200, b"")
            assert response.headers["Content-Length"] == "1000"


async def test_connection_close_answers_close_the_connection(serve: raw_http.Serve) -> None:
    closing = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}"
    server = await serve(_answering(closing))
    async with _client() as client:
        for _ in range(3):
            assert (await client.post(server.url, content=b"{}")).content == b"{}"
    assert server.connections == 3


async def test_a_reset_is_a_read_error(serve: raw_http.Serve) -> None:
    async def reset(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: raw_http.Server
    ) -> None:
        await raw_http.read_request(reader)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close = RST
        writer.transport.abort()

    server = await serve(reset)
    async with _client() as client:
        with pytest.raises(httpx.ReadError):
            await client.post(server.url, content=b"{}")


# -- the pool ------------------------------------------------------------------------------------------


def _slow(seconds: float) -> raw_http.Handler:
    async def handler(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: raw_http.Server
    ) -> None:
        while await raw_http.recorded_request(reader, server) is not None:
            await asyncio.sleep(seconds)
            writer.write(raw_http.OK)
            await writer.drain()

    return handler


async def test_at_most_max_connections_per_origin(serve: raw_http.Serve) -> None:
    server = await serve(_slow(0.05))
    limits = httpx.Limits(max_connections=2, max_keepalive_connections=2)
    async with _client(limits) as client:
        replies = await asyncio.gather(*(client.post(server.url, content=b"{}") for _ in range(8)))
    assert [reply.status_code for reply in replies] == [200] * 8
    assert server.connections == 2


async def test_waiting_for_a_connection_longer_than_the_pool_timeout(serve: raw_http.Serve) -> None:
    server = await serve(_slow(0.5))
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    async with _client(limits, pool=0.1) as client:
        first = asyncio.create_task(client.post(server.url, content=b"{}"))
        await asyncio.sleep(0.05)
        with pytest.raises(httpx.PoolTimeout):
            await client.post(server.url, content=b"{}")
        assert (await first).status_code == 200
        assert (await client.post(server.url, content=b"{}")).status_code == 200  # the room is back
    assert server.connections == 1


async def test_idle_connections_expire_after_keepalive_expiry(serve: raw_http.Serve) -> None:
    closed = asyncio.Event()

    async def answer_and_watch(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: raw_http.Server
    ) -> None:
        await raw_http.answer_ok(reader, writer, server)
        closed.set()  # the client hung up

    server = await serve(answer_and_watch)
    limits = httpx.Limits(max_connections=4, max_keepalive_connections=4, keepalive_expiry=0.2)
    async with _client(limits) as client:
        assert (await client.post(server.url, content=b"{}")).status_code == 200
        await asyncio.wait_for(closed.wait(), 2.0)  # closed by the client while idle
        assert (await client.post(server.url, content=b"{}")).status_code == 200
    assert server.connections == 2


async def test_a_cancelled_request_gives_its_connection_back_closed(serve: raw_http.Serve) -> None:
    server = await serve(_slow(0.3))
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    async with _client(limits, pool=1.0) as client:
        cancelled = asyncio.create_task(client.post(server.url, content=b"{}"))
        await asyncio.sleep(0.05)
        cancelled.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        assert (await client.post(server.url, content=b"{}")).status_code == 200
    assert server.connections == 2  # the half-answered one was not reused


async def test_the_read_timeout_bounds_each_silence_not_the_whole_answer(serve: raw_http.Serve) -> None:
    parts = [b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\n", *(bytes([byte]) for byte in b"abcdef")]
    server = await serve(_answering(*parts, pause=0.1))
    async with _client(timeout=0.3) as client:  # 0.7 s in all, never 0.3 s of silence
        assert (await client.post(server.url, content=b"{}")).content == b"abcdef"


# -- requests as h11 frames them ---------------------------------------------------------------------


async def _parts() -> AsyncIterator[bytes]:
    for part in (b'{"a":', b"", b"1}"):
        yield part


async def test_a_streamed_body_is_chunked_as_httpx_would(serve: raw_http.Serve) -> None:
    async def answer_chunked(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: raw_http.Server
    ) -> None:
        while True:
            try:
                request = await reader.readuntil(b"0\r\n\r\n")
            except asyncio.IncompleteReadError:
                return
            server.requests.append(request)
            writer.write(raw_http.OK)
            await writer.drain()

    server = await serve(answer_chunked)
    async with _client() as client, httpx.AsyncClient() as stock:
        for each in (client, stock):
            assert (await each.post(server.url, content=_parts())).status_code == 200
    ours, theirs = server.requests
    assert ours == theirs
    assert b"Transfer-Encoding: chunked\r\n" in ours


async def test_a_host_header_given_goes_first_as_h11_puts_it(serve: raw_http.Serve) -> None:
    server = await serve(raw_http.answer_ok)
    headers = [("X-First", "1"), ("Host", "example.test")]
    async with _client() as client, httpx.AsyncClient() as stock:
        for each in (client, stock):
            assert (await each.post(server.url, content=b"{}", headers=headers)).status_code == 200
    ours, theirs = server.requests
    assert ours == theirs
    assert ours.split(b"\r\n")[1] == b"Host: example.test"


async def test_a_header_value_with_a_line_break_is_refused_before_sending(serve: raw_http.Serve) -> None:
    server = await serve(raw_http.answer_ok)
    async with _client() as client:
        with pytest.raises(httpx.LocalProtocolError):
            await client.post(server.url, content=b"{}", headers={"X-Id": "1\r\nX-Admin: yes"})
    assert server.requests == []
