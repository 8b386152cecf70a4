"""A generic webhook receiver: the downstream of the ``webhook`` sink.

Accepts ``POST`` on any path with the wire format DESIGN.md gives (JSON body,
``Idempotency-Key``, optional ``X-Fanout-Signature: sha256=<hex HMAC-SHA256>``); with a
``signing_secret`` it verifies the signature and answers 401 when it does not match.
Throttles answer ``throttle_status`` (429 by default) with ``Retry-After``; faults answer
500; the outage answers 503. Used by the worker runtime tests, the sink tests and the demo.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import Any

from aiohttp import web

from workers.simulators import downstream


class WebhookSimulator(downstream.DownstreamSimulator):
    """``async with WebhookSimulator(rate=20, burst=5) as sim: sim.url ...``"""

    def __init__(
        self,
        *,
        rate: float | None = None,
        burst: int = 1,
        latency: float = 0.0,
        fail_ratio: float = 0.0,
        throttle_ratio: float = 0.0,
        retry_after: float = 1.0,
        seed: int = 0,
        signing_secret: str | None = None,
        throttle_status: int = 429,
        retry_after_format: downstream.RetryAfterFormat = "seconds",
        outage_retry_after: float | None = None,
    ) -> None:
        super().__init__(
            rate=rate,
            burst=burst,
            latency=latency,
            fail_ratio=fail_ratio,
            throttle_ratio=throttle_ratio,
            retry_after=retry_after,
            seed=seed,
            retry_after_format=retry_after_format,
            outage_retry_after=outage_retry_after,
        )
        self.signing_secret = signing_secret
        self.throttle_status = throttle_status
        self.signature_failures = 0

    def routes(self) -> list[web.RouteDef]:
        return [web.post("/{tail:.*}", self._receive), web.get("/healthz", self._health)]

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def _receive(self, request: web.Request) -> web.Response:
        arrived = time.monotonic()
        body = await request.read()
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
