"""The sinks' HTTP transports against raw servers on loopback: the contract both keep.

Each server (:mod:`tests.raw_http`) is a plain ``asyncio`` TCP server that records the bytes
it receives, so the tests see the wire itself: the same request through httpx's default
transport and through the sinks' transports — :class:`Http11Transport` (the default) and
:class:`AiohttpTransport` (when the environment names a proxy), each test run on both; and
again on uvloop, the worker's loop (``tests/on_uvloop/``) — must arrive byte for byte alike. Then the cases a
pool lives by: keep-alive reuse, a server closing an idle connection, cookies, timeouts,
refused connections, broken replies (each raising the httpx error httpx's own transport
raises), bodies larger than the buffers, and TLS (a certificate made on the spot with
``cryptography``). What only our HTTP/1.1 client does is in ``test_sinks_http11.py``.
"""

from __future__ import annotations

import asyncio
import pathlib
import ssl
from collections.abc import Callable

import httpx
import pytest

from fanout_core import spec
from fanout_lab.simulators import aws
from tests import raw_http
from workers import fleet
from workers.sinks import exchange, transport

TRANSPORTS: dict[str, Callable[..., httpx.AsyncBaseTransport]] = {
    "http11": transport.Http11Transport,
    "aiohttp": transport.AiohttpTransport,
}
Client = Callable[..., httpx.AsyncClient]


@pytest.fixture(params=list(TRANSPORTS))
def make_client(request: pytest.FixtureRequest) -> Client:
    """A client on one of the sinks' transports (each test runs on both)."""
    kind = TRANSPORTS[request.param]

    def make(verify: ssl.SSLContext | bool = True) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=kind(limits=raw_http.LIMITS, verify=verify))

    return make


def _fields(request: bytes) -> tuple[bytes, list[tuple[bytes, bytes]], bytes]:
    """(request line, [(lower-case name, value)], body) of one raw request."""
    head, _, body = request.partition(b"\r\n\r\n")
    line, *fields = head.split(b"\r\n")
    pairs = [field.split(b":", 1) for field in fields]
    return line, [(name.strip().lower(), value.strip()) for name, value in pairs], body


@pytest.mark.parametrize(
    ("method", "target", "headers", "body"),
    [
        (
            "POST",
            "/events",
            {"Content-Type": "application/json", "Idempotency-Key": "evt-1", "traceparent": "00-ab-cd-01"},
            b'{"conversationId":"c-1","eventTime":1741964966000}',
        ),
        # A Salesforce upsert: an external id quoted into the path, a query string.
        (
            "PATCH",
            "/sobjects/Conv__c/Id__c/conv%3A1%2F2%20x?fields=a%26b",
            {"Authorization": "Bearer t"},
            b"{}",
        ),
        ("POST", "/form", {}, b"no content type"),  # nothing added: no octet-stream default
        ("GET", "/services/collector/health", {}, b""),
    ],
)
async def test_the_bytes_on_the_wire_are_those_of_httpx_default_transport(
    serve: raw_http.Serve, method: str, target: str, headers: dict[str, str], body: bytes, make_client: Client
) -> None:
    server = await serve(raw_http.answer_ok)
    url = server.url.removesuffix("/events") + target
    async with httpx.AsyncClient(limits=raw_http.LIMITS) as stock, make_client() as ours:
        for client in (stock, ours):
            response = await client.request(method, url, content=body, headers=headers)
            assert (response.status_code, response.json()) == (200, {})
    stock_bytes, our_bytes = server.requests
    assert our_bytes == stock_bytes
    assert our_bytes.startswith(f"{method} {target} HTTP/1.1\r\n".encode())


async def test_the_exchange_sends_what_client_request_would(serve: raw_http.Serve) -> None:
    """The sinks build their requests themselves (cheaper than ``AsyncClient.request``): the
    spec's headers (one overriding a default header in another case, one the sink overrides),
    the sink's headers, URLs that change from one request to the next — the wire must not tell
    the two apart. A sink's header wins over the spec's of the same name, whatever its case."""
    server = await serve(raw_http.answer_ok)
    base = server.url.removesuffix("/events")
    sink = spec.SinkSpec.model_validate(
        {"type": "webhook", "url": base, "headers": {"user-agent": "fanout/1", "X-Team": "cc"}}
    )
    exchanger = exchange.Exchanger(sink, name="webhook", replicas=fleet.FixedReplicas(1))
    calls = [
        ("PATCH", f"{base}/sobjects/C/Id/conv%3A1", {"Authorization": "Bearer t", "x-team": "crm"}, b"{}"),
        ("PATCH", f"{base}/sobjects/C/Id/conv%3A2", {"Authorization": "Bearer t"}, b'{"a":1}'),
        ("POST", f"{base}/events", {"Content-Type": "application/json", "Accept": "application/json"}, b"{}"),
        ("POST", f"{base}/events", {}, b"again"),
        ("POST", f"{base}/events", {}, b""),  # Content-Length: 0 all the same
        ("GET", f"{base}/services/collector/health", {}, b""),  # no Content-Length at all
    ]
    async with httpx.AsyncClient(limits=raw_http.LIMITS, timeout=sink.timeout_seconds) as stock:
        for method, url, headers, body in calls:
            answer = await exchanger.request(method, url, content=body, headers=headers)
            assert answer.status == 200
            own = {name.lower() for name in headers}
            merged = {name: value for name, value in sink.headers.items() if name.lower() not in own}
            await stock.request(method, url, content=body, headers={**merged, **headers})
    await exchanger.aclose()
    ours, theirs = server.requests[0::2], server.requests[1::2]
    assert ours == theirs
    assert len(ours) == len(calls)
    assert b"\r\nx-team: crm\r\n" in ours[0]
    assert b"X-Team" not in ours[0]
    assert b"\r\nX-Team: cc\r\n" in ours[1]


async def test_a_proxy_in_the_environment_carries_the_sinks_requests(
    serve: raw_http.Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A proxy configured the usual way (``HTTP_PROXY``...) carries the requests (httpx
    ignores the environment's proxies for a client given a transport; the transport reads them)."""
    target, proxy = await serve(raw_http.answer_ok), await serve(raw_http.answer_ok)
    monkeypatch.setenv("HTTP_PROXY", proxy.url.removesuffix("/events"))
    sink = spec.SinkSpec.model_validate({"type": "webhook", "url": target.url})
    exchanger = exchange.Exchanger(sink, name="webhook", replicas=fleet.FixedReplicas(1))
    answer = await exchanger.request("POST", target.url, content=b"{}", headers={"Idempotency-Key": "e-1"})
    await exchanger.aclose()
    assert answer.status == 200
    assert target.requests == []
    [request] = proxy.requests
    assert request.startswith(f"POST {target.url} HTTP/1.1\r\n".encode())  # a proxy's request line
    assert b"\r\nIdempotency-Key: e-1\r\n" in request


async def test_keep_alive_connections_are_reused(serve: raw_http.Serve, make_client: Client) -> None:
    server = await serve(raw_http.answer_ok)
    async with make_client() as client:
        for _ in range(5):
            assert (await client.post(server.url, content=b"{}")).status_code == 200
        replies = await asyncio.gather(*(client.post(server.url, content=b"{}") for _ in range(4)))
    assert [reply.status_code for reply in replies] == [200] * 4
    assert len(server.requests) == 9
    assert server.connections <= raw_http.LIMITS.max_connections


async def test_an_idle_connection_the_server_closed_is_not_reused(
    serve: raw_http.Serve, make_client: Client
) -> None:
    async def answer_once(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: raw_http.Server
    ) -> None:
        request = await raw_http.recorded_request(reader, server)
        assert request is not None
        writer.write(raw_http.OK)  # keep-alive by the headers, then gone
        await writer.drain()

    server = await serve(answer_once)
    async with make_client() as client:
        for _ in range(3):
            assert (await client.post(server.url, content=b"{}")).status_code == 200
            await asyncio.sleep(0.05)  # the close reaches the idle connection in the pool
    assert (len(server.requests), server.connections) == (3, 3)


async def test_cookies_are_httpx_clients_alone(serve: raw_http.Serve, make_client: Client) -> None:
    """httpx's cookie jar is the only one: what the client forgets is not sent from below."""

    async def answer(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: raw_http.Server
    ) -> None:
        while await raw_http.recorded_request(reader, server) is not None:
            writer.write(b"HTTP/1.1 200 OK\r\nSet-Cookie: session=abc; Path=/\r\nContent-Length: 2\r\n\r\n{}")
            await writer.drain()

    server = await serve(answer)
    async with make_client() as client:
        for _ in range(2):
            assert (await client.post(server.url, content=b"{}")).status_code == 200
        client.cookies.clear()
        assert (await client.post(server.url, content=b"{}")).status_code == 200
    cookies = [
        [value for name, value in _fields(request)[1] if name == b"cookie"] for request in server.requests
    ]
    assert cookies == [[], [b"session=abc"], []]


async def test_a_silent_server_is_a_read_timeout(serve: raw_http.Serve, make_client: Client) -> None:
    async def never_answer(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: raw_http.Server
    ) -> None:
        await raw_http.read_request(reader)
        await asyncio.sleep(5)

    server = await serve(never_answer)
    async with make_client() as client:
        with pytest.raises(httpx.ReadTimeout):
            await client.post(server.url, content=b"{}", timeout=0.2)


async def test_a_refused_connection_is_a_connect_error(make_client: Client) -> None:
    async with make_client() as client:
        with pytest.raises(httpx.ConnectError):
            await client.post(f"http://127.0.0.1:{aws.free_port()}/events", content=b"{}")


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        (b"", httpx.RemoteProtocolError),  # closed without an answer
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{}", httpx.RemoteProtocolError),  # cut short
        (b"SPLUNK 42\r\n\r\n", httpx.RemoteProtocolError),  # not HTTP
    ],
)
async def test_broken_replies_are_httpx_protocol_errors(
    serve: raw_http.Serve, reply: bytes, error: type[Exception], make_client: Client
) -> None:
    async def answer(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: raw_http.Server
    ) -> None:
        await raw_http.read_request(reader)
        writer.write(reply)
        await writer.drain()

    server = await serve(answer)
    async with make_client() as client:
        with pytest.raises(error):
            await client.post(server.url, content=b"{}")  # reads the whole body


async def test_bodies_larger_than_the_buffers_arrive_whole(
    serve: raw_http.Serve, make_client: Client
) -> None:
    big = bytes(range(256)) * 4096  # 1 MiB each way: beyond the coalescing and read buffers

    async def echo(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: raw_http.Server
    ) -> None:
        while (request := await raw_http.read_request(reader)) is not None:
            body = request.split(b"\r\n\r\n", 1)[1]
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
            await writer.drain()

    server = await serve(echo)
    async with make_client() as client:
        for _ in range(2):
            response = await client.post(server.url, content=big)
            assert response.content == big


async def test_tls_with_a_trusted_certificate_and_refused_without(
    serve: raw_http.Serve, tmp_path: pathlib.Path, make_client: Client
) -> None:
    server_context, client_context = raw_http.certificate(tmp_path)
    server = await serve(raw_http.answer_ok, tls=server_context)
    async with make_client(verify=client_context) as client:
        for _ in range(3):
            assert (await client.post(server.url, content=b"{}")).status_code == 200
    assert (len(server.requests), server.connections) == (3, 1)
    async with make_client() as client:  # the system's trust store knows nothing of it
        with pytest.raises(httpx.ConnectError):
            await client.post(server.url, content=b"{}")
