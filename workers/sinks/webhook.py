"""The ``webhook`` sink: one POST per event, the wire format of docs/formats.md.

Body: the event payload as JSON. Headers: ``Content-Type: application/json``,
``Idempotency-Key: <event id>`` (the receiver deduplicates redeliveries with it),
``X-Fanout-Signature: sha256=<hex HMAC-SHA256 of the exact body bytes>`` when
``signingSecret`` is set, the spec's extra ``headers``, the ``secretHeaders`` (values read
from SecretRefs, e.g. an ``Authorization`` bearer token) and a W3C ``traceparent``.

Answers (docs/contracts.md, "Webhook sink"):

=====================================  =====================================================
2xx                                    Delivered
401, 403, 407                          Refused: our credential (sink-wide; circuit opens,
                                       nothing dead-lettered, secrets re-read on each probe)
408, 429, 503                          Retry(throttled) after ``Retry-After`` (seconds or
                                       HTTP-date), which pauses the whole sink
other 5xx, timeouts, connection errors Retry
other 4xx (and an unfollowed 3xx)      Permanent for that event (dead-lettered with the status)
=====================================  =====================================================
"""

from __future__ import annotations

import hashlib
import hmac
import json

import httpx

from fanout_core import spec
from workers import events, fleet, telemetry, throttling
from workers.sinks import base, exchange, secrets

NAME = "webhook"
CREDENTIAL_STATUSES = frozenset({401, 403, 407})
THROTTLE_STATUSES = frozenset({408, 429, 503})


class WebhookSink(exchange.ExchangeSink):
    """A :class:`~workers.sinks.base.Sink` posting each event to ``spec.url``."""

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
        self._url = sink.url
        self._signing = secrets.optional(sink.signing_secret, field="spec.sink.signingSecret")
        self._secret_headers = {
            name: secrets.Secret(ref, field=f"spec.sink.secretHeaders.{name}")
            for name, ref in sink.secret_headers.items()
        }
        self._secrets = tuple(self._secret_headers.values()) + (
            (self._signing,) if self._signing is not None else ()
        )
        for secret in self._secrets:
            secret.reveal()  # fail at start-up, not on the first event
        self._open_exchange(sink, replicas=replicas, clock=clock, transport=transport, metrics=metrics)

    async def deliver(self, event: events.Event, admit: base.Admission | None = None) -> events.Outcome:
        body = encode(event)

        async def prepare(permit: throttling.Permit) -> exchange.Request | None:
            if admit is not None and not await admit():
                return None
            if permit.probe:
                self.refresh_secrets()
            return exchange.Request(body, self._headers(event, body))

        return await self._exchange.send(
            "POST", self._url, prepare=prepare, judge=judge, unsent=events.NotSent()
        )

    def _headers(self, event: events.Event, body: bytes) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Idempotency-Key": event.event_id}
        for name, secret in self._secret_headers.items():
            headers[name] = secret.reveal()
        if self._signing is not None:
            headers["X-Fanout-Signature"] = signature(self._signing.reveal(), body)
        return headers


def encode(event: events.Event) -> bytes:
    """The body: the payload as compact JSON (UTF-8)."""
    return json.dumps(event.payload, separators=(",", ":"), ensure_ascii=False).encode()


def signature(secret: str, body: bytes) -> str:
    """``sha256=<hex HMAC-SHA256(secret, body)>``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def judge(answer: exchange.Answer) -> exchange.Judgement[events.Outcome]:
    """The mapping of webhook answers (docs/contracts.md) to outcomes and limiter signals."""
    Judgement, Result, Outcome = exchange.Judgement, throttling.Result, telemetry.SinkOutcome
    status = answer.status
    if status is None:
        result = Result.OVERLOADED if answer.timed_out else Result.FAILED
        return Judgement(events.Retry(answer.describe()), result, Outcome.ERROR)
    if 200 <= status < 300:
        return Judgement(events.Delivered(), Result.OK, Outcome.DELIVERED)
    if status in CREDENTIAL_STATUSES:
        return Judgement(
            events.Refused(f"HTTP {status} from webhook: credential refused"), Result.REFUSED, Outcome.REFUSED
        )
    if status in THROTTLE_STATUSES:
        delay = answer.retry_after()
        result = Result.THROTTLED if status == 429 else Result.OVERLOADED
        return Judgement(
            events.Retry(answer.describe(), delay_seconds=delay, throttled=True),
            result,
            Outcome.THROTTLED,
            pause=delay,
        )
    if status >= 500:
        return Judgement(events.Retry(answer.describe()), Result.FAILED, Outcome.RETRY)
    return Judgement(events.Permanent(f"HTTP {status} from webhook"), Result.REJECTED, Outcome.PERMANENT)
