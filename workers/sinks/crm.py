"""The ``crm`` sink: a Salesforce-style upsert by external id, one request per event.

``PATCH {url}/services/data/{apiVersion}/sobjects/{objectName}/{externalIdField}/{key}``
where ``key`` is the event's ordering key (the conversation id), so every event of a
conversation updates the same record and a redelivery is harmless. The body comes from
the spec's declarative ``fieldMapping`` (CRM field → event field): a dotted path into the
payload (looked up in the payload, then its ``eventBody``, then ``detail.eventBody``), or
one of ``eventType``, ``eventTime`` (ISO 8601 UTC), ``eventTimeMs``, ``orderingKey``,
``eventId``. Fields that resolve to nothing are left out (the CRM keeps their value); the
external id field never goes in the body. An ``Idempotency-Key: <event id>`` header rides
along (Salesforce ignores it; proxies and the simulator use it).

Answers: 201/200/204 → Delivered. 403 ``REQUEST_LIMIT_EXCEEDED``, 429 and 503 → throttle
(Retry, limiter shrinks, Retry-After pauses). 401 ``INVALID_SESSION_ID`` → refresh the
token (OAuth client-credentials ``POST tokenUrl``, else re-read the token's SecretRef) and
retry once; still 401, any other 403 and 407 → Refused: our credential, a failure of the
sink and never of the event (logged at ERROR; the circuit opens, nothing is dead-lettered,
and each probe through the half-open circuit fetches or re-reads the token first). 300,
400, 404 and other 4xx → Permanent with the status, error code and message. Every reply's
``Sforce-Limit-Info: api-usage=used/limit`` feeds the limiter's scale: past
``slowDownAtUsage`` of the daily limit the sink slows down linearly, to 5% at the limit.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import functools
import json
import logging
import re
import urllib.parse
from collections.abc import Mapping
from typing import Any

import httpx

from fanout_core import spec
from workers import events, fleet, telemetry, throttling
from workers.sinks import base, exchange, secrets

NAME = "crm"
MIN_SCALE = 0.05
_REASON_LIMIT = 300
_LIMIT_INFO = re.compile(r"api-usage=(\d+)/(\d+)")
_THROTTLE_CODES = frozenset({"REQUEST_LIMIT_EXCEEDED"})

log = logging.getLogger(__name__)


class CrmAuthError(Exception):
    """No usable access token (token endpoint refused, or no way to get one)."""


@dataclasses.dataclass(slots=True)
class _Attempt:
    """What one delivery's tries share: whether it was admitted, which token it last sent."""

    admitted: bool = False
    refresh: bool = False
    token: str | None = None


class CrmSink(exchange.ExchangeSink):
    """A :class:`~workers.sinks.base.Sink` upserting each event into one sObject."""

    kind = NAME

    def __init__(
        self,
        sink: spec.SinkSpec,
        *,
        replicas: fleet.Replicas,
        clock: throttling.Clock | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        metrics: telemetry.WorkerMetrics | None = None,
    ) -> None:
        self._crm = sink.crm or spec.CrmSinkSpec()
        self._base = sink.url.rstrip("/")
        self._token_secret = secrets.optional(self._crm.token, field="spec.sink.crm.token")
        self._client_id = secrets.optional(self._crm.client_id, field="spec.sink.crm.clientId")
        self._client_secret = secrets.optional(self._crm.client_secret, field="spec.sink.crm.clientSecret")
        oauth = self._crm.token_url is not None
        if oauth and (self._client_id is None or self._client_secret is None):
            raise spec.ConfigError("spec.sink.crm: tokenUrl needs clientId and clientSecret")
        if not oauth and self._token_secret is None:
            raise spec.ConfigError("spec.sink.crm: set token, or tokenUrl with clientId and clientSecret")
        for secret in (self._token_secret, self._client_id, self._client_secret):
            if secret is not None:
                secret.reveal()  # fail at start-up, not on the first event
        self._token: str | None = self._token_secret.reveal() if self._token_secret is not None else None
        self._refresh_lock = asyncio.Lock()
        self._usage: float | None = None
        self._open_exchange(sink, replicas=replicas, clock=clock, transport=transport, metrics=metrics)

    # -- the Sink protocol ------------------------------------------------------------------

    @property
    def api_usage(self) -> float | None:
        """The last ``Sforce-Limit-Info`` usage share seen (0..1), if any."""
        return self._usage

    async def deliver(self, event: events.Event, admit: base.Admission | None = None) -> events.Outcome:
        if not event.ordering_key:
            return events.Permanent("no external id: the event has no ordering key")
        url = self.upsert_url(event.ordering_key)
        body = json.dumps(map_fields(self._crm, event), separators=(",", ":"), ensure_ascii=False).encode()
        attempt = _Attempt()

        async def prepare(
            permit: throttling.Permit,
        ) -> exchange.Request | exchange.Judgement[events.Outcome | None] | None:
            if not attempt.admitted:
                if admit is not None and not await admit():
                    return None
                attempt.admitted = True
            try:
                if permit.probe or attempt.refresh:
                    # A probe after refusals, or the second try after a 401: a new token first.
                    await self._refresh(stale=attempt.token or self._token)
                attempt.token = await self._current_token()
            except CrmAuthError as error:
                log.error("crm access token unavailable", extra={"sink": NAME, "reason": str(error)})
                return exchange.Judgement(
                    events.Refused(f"no CRM access token: {error}"),
                    throttling.Result.REFUSED,
                    telemetry.SinkOutcome.REFUSED,
                )
            headers = {
                "Authorization": f"Bearer {attempt.token}",
                "Content-Type": "application/json",
                "Idempotency-Key": event.event_id,
            }
            return exchange.Request(body, headers)

        unsent: events.Outcome | None = events.NotSent()
        for refresh in (False, True):
            attempt.refresh = refresh
            outcome = await self._exchange.send(
                "PATCH",
                url,
                prepare=prepare,
                judge=functools.partial(self._judge, refreshed=refresh),
                unsent=unsent,
            )
            if outcome is not None:
                return outcome
        raise AssertionError("unreachable: the answer after a refresh is always an outcome")

    def upsert_url(self, key: str) -> str:
        crm = self._crm
        return (
            f"{self._base}/services/data/{crm.api_version}/sobjects/{crm.object_name}/"
            f"{crm.external_id_field}/{urllib.parse.quote(key, safe='')}"
        )

    # -- answers ------------------------------------------------------------------------------

    def _judge(
        self, answer: exchange.Answer, *, refreshed: bool
    ) -> exchange.Judgement[events.Outcome | None]:
        """Outcome for the answer; None asks for a token refresh and one more try."""
        Judgement, Result, Outcome = exchange.Judgement, throttling.Result, telemetry.SinkOutcome
        self._read_limit_info(answer)
        status = answer.status
        if status is None:
            result = Result.OVERLOADED if answer.timed_out else Result.FAILED
            return Judgement(events.Retry(answer.describe()), result, Outcome.ERROR)
        if status in (200, 201, 204):
            return Judgement(events.Delivered(), Result.OK, Outcome.DELIVERED)
        code, message = _error(answer)
        reason = f"HTTP {status} {code}: {message}".strip()[:_REASON_LIMIT]
        if status == 401 and not refreshed:
            return Judgement(None, Result.REJECTED, Outcome.RETRY)
        if status in (429, 503) or (status == 403 and code in _THROTTLE_CODES):
            delay = answer.retry_after()
            result = Result.OVERLOADED if status == 503 else Result.THROTTLED
            return Judgement(
                events.Retry(reason, delay_seconds=delay, throttled=True),
                result,
                Outcome.THROTTLED,
                pause=delay,
            )
        if status in (401, 403, 407):
            log.error("crm refused our credentials: check them", extra={"sink": NAME, "status": status})
            return Judgement(events.Refused(reason), Result.REFUSED, Outcome.REFUSED)
        if status >= 500:
            return Judgement(events.Retry(reason), Result.FAILED, Outcome.RETRY)
        return Judgement(events.Permanent(reason), Result.REJECTED, Outcome.PERMANENT)

    def _read_limit_info(self, answer: exchange.Answer) -> None:
        match = _LIMIT_INFO.search(answer.header("Sforce-Limit-Info") or "")
        if match is None or int(match.group(2)) <= 0:
            return
        usage = int(match.group(1)) / int(match.group(2))
        previous = self._usage
        self._usage = usage
        scale = usage_scale(usage, self._crm.slow_down_at_usage)
        if previous is None or usage_scale(previous, self._crm.slow_down_at_usage) != scale:
            self._exchange.limiter.set_scale(scale)
            if scale < 1.0 and (previous is None or previous < self._crm.slow_down_at_usage):
                log.warning(
                    "crm api usage near the daily limit: slowing down",
                    extra={"sink": NAME, "usage": round(usage, 4), "scale": round(scale, 3)},
                )

    # -- tokens -------------------------------------------------------------------------------

    async def _current_token(self) -> str:
        if self._token is None:
            await self._refresh(stale=None)
        assert self._token is not None
        return self._token

    async def _refresh(self, *, stale: str | None) -> None:
        async with self._refresh_lock:
            if self._token is not None and self._token != stale:
                return  # another delivery refreshed it meanwhile
            if self._crm.token_url is not None:
                self._token = await self._fetch_token(self._crm.token_url)
            elif self._token_secret is not None:
                try:
                    self._token = self._token_secret.refresh()
                except secrets.SecretError as error:
                    raise CrmAuthError(str(error)) from None
            else:  # pragma: no cover - the constructor refuses this
                raise CrmAuthError("no token source")

    async def _fetch_token(self, token_url: str) -> str:
        assert self._client_id is not None
        assert self._client_secret is not None
        try:
            form = urllib.parse.urlencode(
                {
                    "grant_type": "client_credentials",
                    "client_id": self._client_id.refresh(),
                    "client_secret": self._client_secret.refresh(),
                }
            ).encode()
        except secrets.SecretError as error:
            raise CrmAuthError(str(error)) from None
        answer = await self._exchange.request(
            "POST", token_url, content=form, headers={"Content-Type": "application/x-www-form-urlencoded"}
        )
        if answer.status != 200:
            raise CrmAuthError(f"token endpoint answered {answer.describe()}")
        try:
            token = json.loads(answer.body)["access_token"]
        except (ValueError, KeyError, TypeError):
            raise CrmAuthError("token endpoint answered without access_token") from None
        if not isinstance(token, str) or not token:
            raise CrmAuthError("token endpoint answered an empty access_token")
        return token


def usage_scale(usage: float, slow_down_at: float) -> float:
    """1 below ``slow_down_at``; then down linearly to :data:`MIN_SCALE` at the limit."""
    if usage < slow_down_at or slow_down_at >= 1.0:
        return 1.0
    return max(MIN_SCALE, (1.0 - usage) / (1.0 - slow_down_at))


def map_fields(crm: spec.CrmSinkSpec, event: events.Event) -> dict[str, Any]:
    """The upsert body from ``fieldMapping`` (the external id field left out)."""
    body: dict[str, Any] = {}
    for target, source in crm.field_mapping.items():
        if target == crm.external_id_field:
            continue
        value = resolve(event, source)
        if value is not None:
            body[target] = value
    return body


def resolve(event: events.Event, source: str) -> Any:
    """One mapping source: a special name or a dotted path into the payload."""
    if source == "eventType":
        return event.event_type
    if source == "eventTime":
        return None if event.event_time_ms is None else iso_time(event.event_time_ms)
    if source == "eventTimeMs":
        return event.event_time_ms
    if source == "orderingKey":
        return event.ordering_key
    if source == "eventId":
        return event.event_id
    path = tuple(source.split("."))
    for root in ((), ("eventBody",), ("detail", "eventBody")):
        value = _dig(event.payload, root + path)
        if value is not None:
            return value
    return None


def iso_time(epoch_ms: int) -> str:
    """``2023-11-14T22:13:20.000Z`` (what a Salesforce DateTime field takes)."""
    moment = datetime.datetime.fromtimestamp(epoch_ms / 1000, tz=datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _dig(document: Any, path: tuple[str, ...]) -> Any:
    for step in path:
        if not isinstance(document, Mapping) or step not in document:
            return None
        document = document[step]
    return document


def _error(answer: exchange.Answer) -> tuple[str, str]:
    """Salesforce's ``[{"errorCode", "message"}]`` body, as (code, message)."""
    try:
        document = json.loads(answer.body)
    except ValueError:
        return "", ""
    if isinstance(document, list) and document and isinstance(document[0], dict):
        first = document[0]
        return str(first.get("errorCode", "")), str(first.get("message", ""))
    if isinstance(document, list) and answer.status == 300:
        return "MULTIPLE_CHOICES", f"{len(document)} records match the external id"
    return "", ""
