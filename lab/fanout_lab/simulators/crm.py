"""A Salesforce-compatible CRM, as much of it as the ``crm`` sink meets.

``PATCH /services/data/vXX.X/sobjects/<Object>/<ExternalIdField>/<value>`` upserts a
record by external id with a Bearer token: 201 ``created: true``, 200 ``created: false``
(204 for API versions before v46.0), 300 when several records match (keys listed in
``ambiguous``), 404 ``NOT_FOUND`` for an unknown object, 400 for a body that is not JSON,
carries the external id, or names a field outside ``fields``; 401 ``INVALID_SESSION_ID``
for an unknown or expired token. ``POST /services/oauth2/token`` (client credentials)
issues new tokens. Every reply carries ``Sforce-Limit-Info: api-usage=<used>/<limit>``.

The rate limit answers ``403 REQUEST_LIMIT_EXCEEDED`` (Salesforce's own answer, without
Retry-After) unless ``throttle_status`` asks for 429/503 with Retry-After; the outage
answers 503 ``SERVER_UNAVAILABLE``. Accepted upserts are recorded per external id in
arrival order (``sim.accepted``, ``sim.records``), with the ``Idempotency-Key`` header
the sink sends as the event id, so tests can check order, duplicates and loss.
"""

from __future__ import annotations

import datetime
import itertools
import json
import secrets
import time
import typing
from typing import Any

from aiohttp import web

from fanout_lab.simulators import downstream

_UPSERT = "/services/data/{version}/sobjects/{object}/{field}/{value}"


def _errors(code: str, message: str, status: int, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response([{"message": message, "errorCode": code}], status=status, headers=headers)


def _version_number(version: str) -> float:
    try:
        return float(version.lstrip("v"))
    except ValueError:
        return 0.0


class CrmSimulator(downstream.DownstreamSimulator):
    """``async with CrmSimulator(rate=20, burst=5) as sim: sim.url, sim.token ...``"""

    default_throttle_status = 403

    uncounted_paths = frozenset({"/services/oauth2/token"})

    def __init__(
        self,
        *,
        token: str | None = None,
        client_id: str = "fanout-client",
        client_secret: str = "fanout-client-secret",
        objects: set[str] | None = None,
        fields: set[str] | None = None,
        ambiguous: set[str] | None = None,
        api_limit: int = 100_000,
        api_used: int = 0,
        seq_field: str | None = "Last_Event_Time__c",
        **behaviour: typing.Unpack[downstream.Behaviour],
    ) -> None:
        super().__init__(**behaviour)
        self.token = token or secrets.token_urlsafe(16)
        """The currently valid access token (tests put it where the sink's SecretRef reads)."""
        self._valid_tokens = {self.token}
        self.client_id = client_id
        self.client_secret = client_secret
        self.objects = objects
        self.fields = fields
        self.ambiguous = ambiguous or set()
        self.api_limit = api_limit
        self.api_used = api_used
        self.seq_field = seq_field
        self.records: dict[tuple[str, str], dict[str, Any]] = {}
        """(object, external id) → the record's fields."""
        self.token_requests = 0
        self.unauthorized_count = 0
        self._ids = itertools.count(1)

    def routes(self) -> list[web.RouteDef]:
        return [
            web.patch(_UPSERT, self._upsert),
            web.post("/services/oauth2/token", self._token),
        ]

    def expire_tokens(self) -> None:
        """Every issued token stops working (the session expired); a new one is minted."""
        self.token = secrets.token_urlsafe(16)
        self._valid_tokens = set()

    def rotate_token(self) -> str:
        """Expire every token and make a new one valid (a rotated Secret); returns it."""
        self.expire_tokens()
        self._valid_tokens.add(self.token)
        return self.token

    def limit_info(self) -> dict[str, str]:
        return {"Sforce-Limit-Info": f"api-usage={self.api_used}/{self.api_limit}"}

    async def _token(self, request: web.Request) -> web.Response:
        self.token_requests += 1
        form = await request.post()
        if (
            form.get("grant_type") != "client_credentials"
            or form.get("client_id") != self.client_id
            or form.get("client_secret") != self.client_secret
        ):
            return web.json_response(
                {"error": "invalid_client", "error_description": "invalid client credentials"}, status=400
            )
        self._valid_tokens.add(self.token)
        return web.json_response(
            {
                "access_token": self.token,
                "instance_url": self.url,
                "token_type": "Bearer",
                "issued_at": str(int(time.time() * 1000)),
            }
        )

    async def _upsert(self, request: web.Request) -> web.Response:
        arrived = time.monotonic()
        self.api_used += 1
        limits = self.limit_info()
        body = await request.read()
        authorization = request.headers.get("Authorization", "")
        if not authorization.startswith("Bearer ") or authorization[7:] not in self._valid_tokens:
            self.unauthorized_count += 1
            return _errors("INVALID_SESSION_ID", "Session expired or invalid", 401, limits)
        verdict = await self.admit()
        if verdict.admission is downstream.Admission.OUTAGE:
            return _errors(
                "SERVER_UNAVAILABLE",
                "Service unavailable",
                503,
                {**limits, **self.retry_after_header(verdict.retry_after)},
            )
        if verdict.admission is downstream.Admission.THROTTLED:
            if self.throttle_status == 403:
                return _errors("REQUEST_LIMIT_EXCEEDED", "TotalRequests Limit exceeded.", 403, limits)
            return _errors(
                "REQUEST_LIMIT_EXCEEDED",
                "Too many requests",
                self.throttle_status,
                {**limits, **self.retry_after_header(verdict.retry_after)},
            )
        if verdict.admission is downstream.Admission.FAULT:
            return _errors("UNKNOWN_EXCEPTION", "An unexpected error occurred", 500, limits)
        info = request.match_info
        object_name, field, value = info["object"], info["field"], info["value"]
        if self.objects is not None and object_name not in self.objects:
            return _errors("NOT_FOUND", "The requested resource does not exist", 404, limits)
        try:
            document = json.loads(body)
        except ValueError:
            return _errors("JSON_PARSER_ERROR", "Unexpected character", 400, limits)
        if not isinstance(document, dict):
            return _errors("JSON_PARSER_ERROR", "Expected an object", 400, limits)
        if field in document:
            return _errors("INVALID_FIELD", f"{field} must not be in the body of an upsert", 400, limits)
        unknown = sorted(set(document) - self.fields) if self.fields is not None else []
        if unknown:
            return _errors("INVALID_FIELD", f"No such column '{unknown[0]}' on sobject", 400, limits)
        if value in self.ambiguous:
            return web.json_response(
                [f"/services/data/v60.0/sobjects/{object_name}/a0{n}" for n in range(2)],
                status=300,
                headers=limits,
            )
        key = (object_name, value)
        created = key not in self.records
        record = self.records.setdefault(key, {"Id": f"a00{next(self._ids):012d}"})
        record.update(document)
        self.record(
            downstream.AcceptedRequest(
                key=value,
                event_id=request.headers.get("Idempotency-Key"),
                body=body,
                headers=dict(request.headers),
                received_at=arrived,
                seq=self._seq(document),
                path=request.path,
            )
        )
        if created:
            return web.json_response(
                {"id": record["Id"], "success": True, "errors": [], "created": True},
                status=201,
                headers=limits,
            )
        if _version_number(request.match_info["version"]) < 46.0:
            return web.Response(status=204, headers=limits)
        return web.json_response(
            {"id": record["Id"], "success": True, "errors": [], "created": False}, status=200, headers=limits
        )

    def _seq(self, document: dict[str, Any]) -> float | None:
        if self.seq_field is None:
            return None
        value = document.get(self.seq_field)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return datetime.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() * 1000
            except ValueError:
                return None
        return None
