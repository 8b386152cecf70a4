"""An AWS endpoint that fails on cue: a loopback HTTP proxy in front of the moto server.

Some behaviour only shows when AWS answers with an error the moto server never gives —
S3 throttling (``503 SlowDown``) on one object, say. Tests point one service's standard
variable (``AWS_ENDPOINT_URL_S3``) at :class:`FaultyEndpoint` and leave the code under test
as it runs in production: every request goes over HTTP to the proxy, which forwards it to
the upstream endpoint unchanged, except the ones a :class:`Fault` matches, which it answers
itself with an AWS error document::

    async with faults.FaultyEndpoint(moto.endpoint_url) as proxy:
        proxy.add(faults.Fault(method="GET", path=f"/{bucket}/{key}", times=1))
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", proxy.url)
        ...
        assert proxy.injected == 1

The client signs its requests for the proxy's address; moto does not check signatures, so
forwarding them unchanged is enough. Path-style addressing only (what botocore uses for an
IP endpoint).
"""

from __future__ import annotations

import dataclasses
import html
from types import TracebackType
from typing import Self

import aiohttp
from aiohttp import web

# Hop-by-hop headers, and the ones aiohttp sets itself for the forwarded message.
_NOT_FORWARDED = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "keep-alive", "content-encoding"}
)


@dataclasses.dataclass
class Fault:
    """Answer the next ``times`` requests with ``method`` and exactly ``path`` with an error."""

    method: str
    path: str
    times: int
    status: int = 503
    code: str = "SlowDown"
    message: str = "Please reduce your request rate."
    injected: int = 0

    def matches(self, request: web.Request) -> bool:
        return self.injected < self.times and request.method == self.method and request.path == self.path


class FaultyEndpoint:
    """The proxy; ``url`` is its endpoint, ``injected`` how many errors it has answered."""

    def __init__(self, upstream: str, host: str = "127.0.0.1") -> None:
        self._upstream = upstream.rstrip("/")
        self._host = host
        self._faults: list[Fault] = []
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self.url = ""
        self.forwarded = 0

    def add(self, fault: Fault) -> Fault:
        self._faults.append(fault)
        return fault

    @property
    def injected(self) -> int:
        return sum(fault.injected for fault in self._faults)

    async def __aenter__(self) -> Self:
        self._session = aiohttp.ClientSession(auto_decompress=False)
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://{self._host}:{port}"
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        for fault in self._faults:
            if fault.matches(request):
                fault.injected += 1
                return _error(fault)
        assert self._session is not None
        headers = {
            name: value for name, value in request.headers.items() if name.lower() not in _NOT_FORWARDED
        }
        async with self._session.request(
            request.method,
            f"{self._upstream}{request.path_qs}",
            headers=headers,
            data=await request.read(),
            allow_redirects=False,
        ) as reply:
            body = await reply.read()
            self.forwarded += 1
            kept = {
                name: value for name, value in reply.headers.items() if name.lower() not in _NOT_FORWARDED
            }
            return web.Response(status=reply.status, headers=kept, body=body)


def _error(fault: Fault) -> web.Response:
    document = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{html.escape(fault.code)}</Code><Message>{html.escape(fault.message)}</Message>"
        "<RequestId>fault-injected</RequestId></Error>"
    )
    return web.Response(status=fault.status, body=document.encode(), content_type="application/xml")
