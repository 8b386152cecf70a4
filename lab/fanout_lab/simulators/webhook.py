"""A generic webhook receiver: the downstream of the ``webhook`` sink.

Accepts ``POST`` on any path with the webhook wire format of docs/formats.md (JSON body,
``Idempotency-Key``, optional ``X-Fanout-Signature: sha256=<hex HMAC-SHA256>``); with a
``signing_secret`` it verifies the signature and answers 401 when it does not match.
Throttles answer ``throttle_status`` (429 by default) with ``Retry-After``; faults answer
500; the outage answers 503; ``set_refusing`` answers 401 (an expired credential) to
everything; ``reject`` picks events to refuse for good (e.g. 422). It counts requests that
arrive while another with the same ``Idempotency-Key`` is still in flight.
Used by the worker runtime tests, the sink tests and the demo.
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import json
import time
import typing
from typing import Any

from aiohttp import web

from fanout_lab.simulators import downstream


class WebhookSimulator(downstream.DownstreamSimulator):
    """``async with WebhookSimulator(rate=20, burst=5) as sim: sim.url ...``"""

    default_throttle_status = 429

    def __init__(
        self,
        *,
        signing_secret: str | None = None,
        reject: typing.Callable[[Any], int | None] | None = None,
        **behaviour: typing.Unpack[downstream.Behaviour],
    ) -> None:
        super().__init__(**behaviour)
        self.signing_secret = signing_secret
        """The key signatures must match; assign a new one to rotate it."""
        self.signature_failures = 0
        self._reject = reject
        self._refusing: int | None = None
        self.refused_count = 0
        self._in_flight_keys: collections.Counter[str] = collections.Counter()
        self.concurrent_duplicates = 0
        """Requests that arrived while another request with the same Idempotency-Key was in flight."""

    def set_refusing(self, on: bool, *, status: int = 401) -> None:
        """While on, every request is answered ``status`` (401/403/407): our credential
        expired, from the receiver's side."""
        self._refusing = status if on else None

    def routes(self) -> list[web.RouteDef]:
        return [web.post("/{tail:.*}", self._receive), web.get("/healthz", self._health)]

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def _receive(self, request: web.Request) -> web.Response:
        key = request.headers.get("Idempotency-Key") or ""
        if key and self._in_flight_keys[key]:
            self.concurrent_duplicates += 1
        self._in_flight_keys[key] += 1
        try:
            return await self._answer(request)
        finally:
            self._in_flight_keys[key] -= 1

    async def _answer(self, request: web.Request) -> web.Response:
        arrived = time.monotonic()
        body = await request.read()
        if self._refusing is not None:
            self.refused_count += 1
            return web.json_response({"error": "credential refused"}, status=self._refusing)
        if self.signing_secret is not None and not self._signature_ok(body, request):
            self.signature_failures += 1
            return web.json_response({"error": "bad signature"}, status=401)
        verdict = await self.admit()
        if verdict.admission is downstream.Admission.OUTAGE:
            return web.json_response(
                {"error": "unavailable"}, status=503, headers=self.retry_after_header(verdict.retry_after)
            )
        if verdict.admission is downstream.Admission.THROTTLED:
            return web.json_response(
                {"error": "slow down"},
                status=self.throttle_status,
                headers=self.retry_after_header(verdict.retry_after),
            )
        if verdict.admission is downstream.Admission.FAULT:
            return web.json_response({"error": "internal"}, status=500)
        try:
            document: Any = json.loads(body)
        except ValueError:
            return web.json_response({"error": "body is not JSON"}, status=400)
        rejected = self._reject(document) if self._reject is not None else None
        if rejected is not None:
            return web.json_response({"error": "rejected"}, status=rejected)
        self.record(
            downstream.AcceptedRequest(
                key=downstream.default_key(document),
                event_id=request.headers.get("Idempotency-Key"),
                body=body,
                headers=dict(request.headers),
                received_at=arrived,
                seq=downstream.default_seq(document),
                path=request.path,
            )
        )
        return web.json_response({"ok": True})

    def _signature_ok(self, body: bytes, request: web.Request) -> bool:
        assert self.signing_secret is not None
        expected = "sha256=" + hmac.new(self.signing_secret.encode(), body, hashlib.sha256).hexdigest()
        return hmac.compare_digest(expected, request.headers.get("X-Fanout-Signature", ""))
