"""A Genesys-like webhook sender: signed POSTs to the front door, as Genesys Cloud sends them.

Used by the tests, ``fanout demo`` and ``bench/ingest.py``. :class:`Sender` posts a body
to a gateway URL, signed the way a Genesys integration signs it (Open Messaging's
``X-Hub-Signature-256`` base64 digest, or the hex ``X-Fanout-Signature``), or with a wrong
secret, and returns the status, the ``Retry-After`` and the time to the answer.
"""

from __future__ import annotations

import dataclasses
import json
import time
from types import TracebackType
from typing import Any

import aiohttp

from fanout_ingest import config, signatures


@dataclasses.dataclass(frozen=True, slots=True)
class Answer:
    status: int
    retry_after: str | None
    seconds: float
    body: str


class Sender:
    """``async with Sender(url, secret) as sender: await sender.post(event)``."""

    def __init__(
        self,
        url: str,
        secret: bytes,
        *,
        encoding: config.DigestEncoding = config.DigestEncoding.BASE64,
        connections: int = 100,
    ) -> None:
        self.url = url
        self.secret = secret
        self.encoding = encoding
        self._connections = connections
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Sender:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self._connections),
            timeout=aiohttp.ClientTimeout(total=15),
        )
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._session is not None:
            await self._session.close()

    def headers(self, body: bytes, *, secret: bytes | None = None) -> dict[str, str]:
        header = (
            config.HUB_SIGNATURE_HEADER
            if self.encoding is config.DigestEncoding.BASE64
            else config.FANOUT_SIGNATURE_HEADER
        )
        return {
            "Content-Type": "application/json",
            header: signatures.sign(secret if secret is not None else self.secret, body, self.encoding),
        }

    async def post_body(
        self, body: bytes, *, secret: bytes | None = None, headers: dict[str, str] | None = None
    ) -> Answer:
        """POST ``body`` signed with ``secret`` (default: the sender's), or with ``headers`` as given."""
        assert self._session is not None, "use Sender in 'async with'"
        started = time.perf_counter()
        sent_headers = headers if headers is not None else self.headers(body, secret=secret)
        async with self._session.post(self.url, data=body, headers=sent_headers) as response:
            text = await response.text()
            return Answer(
                response.status, response.headers.get("Retry-After"), time.perf_counter() - started, text
            )

    async def post(self, event: Any, *, secret: bytes | None = None) -> Answer:
        """POST one event (a dict) or a batch (a list), signed."""
        return await self.post_body(json.dumps(event).encode(), secret=secret)
