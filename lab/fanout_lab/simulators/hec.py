"""A Splunk HTTP Event Collector, as much of it as the ``siem`` sink meets.

``POST /services/collector/event`` with ``Authorization: Splunk <token>`` takes event
objects concatenated (no array, no commas) and answers ``{"text", "code"}``: 200/0 when
every event was indexed; 400/6 ``Invalid data format`` (or 400/12 ``Event field is
required``) with ``invalid-event-number`` = the index of the first bad event — the events
before it WERE indexed, the rest not; 401/2 without a token, 401/3 for a malformed
header, 403/4 for an unknown token; 413 for a body over ``max_body_bytes``; 503/9
``Server is busy`` for the rate limit and the outage (429 with ``throttle_status=429``,
as a proxy would). ``GET /services/collector/health`` answers 200/17.

An event is "bad" when it has no ``event`` or when its ``fields.event_id`` is listed in
``reject_event_ids`` (how a test makes a partial failure). Indexed events are recorded
in order with their ordering key and event id (from ``fields``) for order, duplicate and
loss checks.
"""

from __future__ import annotations

import json
import time
import typing
from typing import Any

from aiohttp import web

from fanout_lab.simulators import downstream

_DECODER = json.JSONDecoder()
_WHITESPACE = b" \t\r\n"


def _reply(text: str, code: int, **extra: Any) -> dict[str, Any]:
    return {"text": text, "code": code, **extra}


def split_events(body: bytes) -> list[tuple[bytes, Any]] | None:
    """Concatenated JSON objects → [(raw bytes, parsed)], or None when not parseable."""
    text = body.decode("utf-8", errors="replace")
    out: list[tuple[bytes, Any]] = []
    index = 0
    while True:
        while index < len(text) and text[index] in " \t\r\n":
            index += 1
        if index >= len(text):
            return out
        try:
            parsed, end = _DECODER.raw_decode(text, index)
        except ValueError:
            return None
        out.append((text[index:end].encode(), parsed))
        index = end


class HecSimulator(downstream.DownstreamSimulator):
    """``async with HecSimulator(token="t", rate=5) as sim: sim.url, sim.accepted ...``"""

    default_throttle_status = 503

    def __init__(
        self,
        *,
        token: str = "00000000-0000-0000-0000-000000000000",
        max_body_bytes: int = 1_000_000,
        reject_event_ids: set[str] | None = None,
        **behaviour: typing.Unpack[downstream.Behaviour],
    ) -> None:
        super().__init__(**behaviour)
        self.token = token
        self.max_body_bytes = max_body_bytes
        self.reject_event_ids = reject_event_ids or set()
        self.batch_sizes: list[int] = []
        """Events per request that reached parsing (any answer)."""
        self.rejected: list[dict[str, Any]] = []

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/services/collector/event", self._collect),
            web.post("/services/collector/event/1.0", self._collect),
            web.get("/services/collector/health", self._health),
        ]

    async def _health(self, request: web.Request) -> web.Response:
        if self.outage:
            return web.json_response(_reply("Server is busy", 9), status=503)
        return web.json_response(_reply("HEC is healthy", 17))

    async def _collect(self, request: web.Request) -> web.Response:
        arrived = time.monotonic()
        authorization = request.headers.get("Authorization")
        if authorization is None:
            return web.json_response(_reply("Token is required", 2), status=401)
        scheme, _, token = authorization.partition(" ")
        if scheme != "Splunk" or not token:
            return web.json_response(_reply("Invalid authorization", 3), status=401)
        if token != self.token:
            return web.json_response(_reply("Invalid token", 4), status=403)
        verdict = await self.admit()
        if verdict.admission in (downstream.Admission.OUTAGE, downstream.Admission.THROTTLED):
            status = 503 if verdict.admission is downstream.Admission.OUTAGE else self.throttle_status
            return web.json_response(
                _reply("Server is busy", 9),
                status=status,
                headers=self.retry_after_header(verdict.retry_after),
            )
        if verdict.admission is downstream.Admission.FAULT:
            return web.json_response(_reply("Internal server error", 8), status=500)
        body = await request.read()
        if len(body) > self.max_body_bytes:
            return web.json_response(_reply("Content too large", 27), status=413)
        items = split_events(body)
        if not items:
            return web.json_response(_reply("No data", 5), status=400)
        self.batch_sizes.append(len(items))
        for index, (raw, parsed) in enumerate(items):
            problem = self._problem(parsed)
            if problem is not None:
                text, code = problem
                self.rejected.append(parsed if isinstance(parsed, dict) else {"raw": raw.decode()})
                return web.json_response(_reply(text, code, **{"invalid-event-number": index}), status=400)
            self._index(raw, parsed, request, arrived)
        return web.json_response(_reply("Success", 0))

    def _problem(self, parsed: Any) -> tuple[str, int] | None:
        if not isinstance(parsed, dict):
            return "Invalid data format", 6
        if parsed.get("event") in (None, "", {}):
            return "Event field is required", 12
        fields = parsed.get("fields")
        if isinstance(fields, dict) and fields.get("event_id") in self.reject_event_ids:
            return "Invalid data format", 6
        return None

    def _index(self, raw: bytes, parsed: dict[str, Any], request: web.Request, arrived: float) -> None:
        fields = parsed.get("fields") if isinstance(parsed.get("fields"), dict) else {}
        assert isinstance(fields, dict)
        key = fields.get("ordering_key")
        event_id = fields.get("event_id")
        seq = downstream.default_seq(parsed.get("event"))
        if seq is None and isinstance(parsed.get("time"), int | float):
            seq = float(parsed["time"]) * 1000
        self.record(
            downstream.AcceptedRequest(
                key=str(key) if key is not None else None,
                event_id=str(event_id) if event_id is not None else None,
                body=raw,
                headers=dict(request.headers),
                received_at=arrived,
                seq=seq,
                path=request.path,
            )
        )
