"""Raw HTTP/1.1 servers on loopback for the sinks' transport tests: they record the bytes.

Each server is a plain ``asyncio`` TCP server running a handler per connection, so a test
sees the wire itself and can answer anything — a broken reply, a close at the wrong moment.
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

LIMITS = httpx.Limits(max_connections=4, max_keepalive_connections=4)
OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, "Server"], Awaitable[None]]


@dataclass
class Server:
    url: str
    connections: int = 0
    requests: list[bytes] = field(default_factory=list)


async def read_request(reader: asyncio.StreamReader) -> bytes | None:
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


async def recorded_request(reader: asyncio.StreamReader, server: Server) -> bytes | None:
    """:func:`read_request`, and the request recorded in ``server.requests``."""
    request = await read_request(reader)
    if request is not None:
        server.requests.append(request)
    return request


async def answer_ok(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
    while await recorded_request(reader, server) is not None:
        writer.write(OK)
        await writer.drain()


def answer_then_drop_the_second(then: bytes | None = None) -> Handler:
    """Answer the first request of the first connection; at its second request write ``then`` and
    close (None: close without a byte — a server whose idle timeout fired as the request went
    out). Later connections answer everything."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        first_connection = server.connections == 1
        answered = 0
        while await recorded_request(reader, server) is not None:
            if first_connection and answered == 1:
                if then:
                    writer.write(then)
                    await writer.drain()
                return
            writer.write(OK)
            await writer.drain()
            answered += 1

    return handler


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


Serve = Callable[..., Awaitable[Server]]


def certificate(directory: pathlib.Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server context, client context trusting it) for ``localhost`` and 127.0.0.1, made on the
    spot with ``cryptography``; the certificate is ``directory / "cert.pem"``."""
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
