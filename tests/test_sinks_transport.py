"""The sinks' HTTP transport against raw servers on loopback.

Each server here is a plain ``asyncio`` TCP server that records the bytes it receives, so
the tests see the wire itself: the same request through httpx's default transport and
through :class:`PooledTransport` must arrive byte for byte alike. Then the cases a pool
lives by: keep-alive reuse, a server closing an idle connection, timeouts, refused
connections, broken replies, bodies larger than the buffers, and TLS (a certificate made
on the spot with ``cryptography``).
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import pathlib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fanout_lab.simulators import aws
from workers.sinks import transport

LIMITS = httpx.Limits(max_connections=4, max_keepalive_connections=4)
OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, "Server"], Awaitable[None]]


@dataclass
class Server:
    url: str
    connections: int = 0
    requests: list[bytes] = field(default_factory=list)


async def _read_request(reader: asyncio.StreamReader) -> bytes | None:
    """One HTTP/1.1 request with a Content-Length body, raw; None at end of stream."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return head + await reader.readexactly(length)


async def _answer_ok(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
    while (request := await _read_request(reader)) is not None:
        server.requests.append(request)
        writer.write(OK)
        await writer.drain()


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., Awaitable[Server]]]:
    servers: list[asyncio.Server] = []

    async def start(handler: Handler, *, tls: ssl.SSLContext | None = None) -> Server:
        port = aws.free_port()
        state = Server(url=f"{'https' if tls else 'http'}://localhost:{port}/events")

        async def connected(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            state.connections += 1
            try:
                await handler(reader, writer, state)
            except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
                pass
            finally:
                writer.close()

        servers.append(await asyncio.start_server(connected, "127.0.0.1", port, ssl=tls))
        return state

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


def _client(verify: ssl.SSLContext | bool = True) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=transport.PooledTransport(limits=LIMITS, verify=verify))


async def test_the_bytes_on_the_wire_are_those_of_httpx_default_transport(
    serve: Callable[..., Awaitable[Server]],
) -> None:
    server = await serve(_answer_ok)
    headers = {"Content-Type": "application/json", "Idempotency-Key": "evt-1", "traceparent": "00-ab-cd-01"}
    body = b'{"conversationId":"c-1","eventTime":1741964966000}'
    async with httpx.AsyncClient(limits=LIMITS) as stock, _client() as pooled:
        for client in (stock, pooled):
            response = await client.post(server.url, content=body, headers=headers)
            assert (response.status_code, response.json()) == (200, {})
    stock_bytes, pooled_bytes = server.requests
    assert pooled_bytes == stock_bytes
    assert pooled_bytes.endswith(b"\r\n\r\n" + body)


async def test_keep_alive_connections_are_reused(serve: Callable[..., Awaitable[Server]]) -> None:
    server = await serve(_answer_ok)
    async with _client() as client:
        for _ in range(5):
            assert (await client.post(server.url, content=b"{}")).status_code == 200
        replies = await asyncio.gather(*(client.post(server.url, content=b"{}") for _ in range(4)))
    assert [reply.status_code for reply in replies] == [200] * 4
    assert len(server.requests) == 9
    assert server.connections <= LIMITS.max_connections


async def test_an_idle_connection_the_server_closed_is_not_reused(
    serve: Callable[..., Awaitable[Server]],
) -> None:
    async def answer_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        request = await _read_request(reader)
        assert request is not None
        server.requests.append(request)
        writer.write(OK)  # keep-alive by the headers, then gone
        await writer.drain()

    server = await serve(answer_once)
    async with _client() as client:
        for _ in range(3):
            assert (await client.post(server.url, content=b"{}")).status_code == 200
            await asyncio.sleep(0.05)  # the close reaches the idle connection in the pool
    assert (len(server.requests), server.connections) == (3, 3)


async def test_a_silent_server_is_a_read_timeout(serve: Callable[..., Awaitable[Server]]) -> None:
    async def never_answer(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server
    ) -> None:
        await _read_request(reader)
        await asyncio.sleep(5)

    server = await serve(never_answer)
    async with _client() as client:
        with pytest.raises(httpx.ReadTimeout):
            await client.post(server.url, content=b"{}", timeout=0.2)


async def test_a_refused_connection_is_a_connect_error() -> None:
    async with _client() as client:
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
    serve: Callable[..., Awaitable[Server]], reply: bytes, error: type[Exception]
) -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        await _read_request(reader)
        writer.write(reply)
        await writer.drain()

    server = await serve(answer)
    async with _client() as client:
        with pytest.raises(error):
            await client.post(server.url, content=b"{}")  # reads the whole body


async def test_bodies_larger_than_the_buffers_arrive_whole(serve: Callable[..., Awaitable[Server]]) -> None:
    big = bytes(range(256)) * 4096  # 1 MiB each way: beyond the coalescing and read buffers

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        while (request := await _read_request(reader)) is not None:
            body = request.split(b"\r\n\r\n", 1)[1]
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
            await writer.drain()

    server = await serve(echo)
    async with _client() as client:
        for _ in range(2):
            response = await client.post(server.url, content=big)
            assert response.content == big


def _certificate(directory: pathlib.Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server context, client context trusting it) for ``localhost``."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert_path, key_path)
    client = ssl.create_default_context(cafile=str(cert_path))
    return server, client


async def test_tls_with_a_trusted_certificate_and_refused_without(
    serve: Callable[..., Awaitable[Server]], tmp_path: pathlib.Path
) -> None:
    server_context, client_context = _certificate(tmp_path)
    server = await serve(_answer_ok, tls=server_context)
    async with _client(verify=client_context) as client:
        for _ in range(3):
            assert (await client.post(server.url, content=b"{}")).status_code == 200
    assert (len(server.requests), server.connections) == (3, 1)
    async with _client() as client:  # the system's trust store knows nothing of it
        with pytest.raises(httpx.ConnectError):
            await client.post(server.url, content=b"{}")
