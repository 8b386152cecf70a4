"""The ``siem`` sink: Splunk HTTP Event Collector, batched, answering per event.

``deliver`` adds the event to the open batch and waits for that batch's answer. A batch
is sent when it reaches ``maxBatchEvents``, when the next event would take it past
``maxBatchBytes`` (well under HEC's 1 MB), or ``lingerSeconds`` after its first event —
as one ``POST {url}/services/collector/event`` of concatenated event objects::

    {"time": <epoch s.ms>, "host", "source", "sourcetype", "index"?, "event": <payload>,
     "fields": {"event_type", "ordering_key", "event_id"}}

with ``Authorization: Splunk <token>``. Each batch takes one limiter permit; batches run
concurrently up to the limiter's concurrency (a conversation never has two events in
one batch: the runtime delivers one event per conversation at a time). When the permit
is granted, every event of the batch is admitted (claimed) at once; the ones refused
leave the batch before its body is built.

Answers (docs/formats.md, "Splunk HEC"), per event: 200/0 → all Delivered; 503 (code 9,
busy) and 429 → all Retry(throttled) after Retry-After; 400 with ``invalid-event-number``
k → events before k Delivered (HEC indexed them), event k Permanent, the rest Retry (not
indexed); 400 without a number, and 413, → the batch is split in halves and each half
sent again (a single event that is still refused is Permanent); 401/403 (codes 2, 3, 4:
the token) → Refused: a failure of the sink, never of the events — logged at ERROR, the
circuit opens, nothing is dead-lettered, and the token is re-read from its SecretRef
before each probe; other 5xx, timeouts, connection errors → Retry.

Shutdown: :meth:`HecSink.flush` sends the open batch at once; :meth:`HecSink.aclose`
abandons batches still waiting for a permit (their events answer Retry and go back to
the queue) instead of waiting behind an open circuit.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import socket
from collections.abc import Sequence
from typing import Any

import httpx

from fanout_core import spec
from workers import events, fleet, telemetry, throttling
from workers.sinks import base, exchange, secrets

NAME = "siem"
COLLECTOR_PATH = "/services/collector/event"
_REASON_LIMIT = 300

log = logging.getLogger(__name__)


@dataclasses.dataclass(slots=True)
class _Item:
    raw: bytes
    done: asyncio.Future[events.Outcome]
    admit: base.Admission | None
    admitted: bool = False


class HecSink(exchange.ExchangeSink):
    """A :class:`~workers.sinks.base.Sink` feeding a Splunk HEC endpoint in batches."""

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
        self._hec = sink.siem or spec.SiemSinkSpec()
        if self._hec.token is None:
            raise spec.ConfigError("spec.sink.siem.token: a HEC token (SecretRef) is required")
        self._token = secrets.Secret(self._hec.token, field="spec.sink.siem.token")
        self._token.reveal()  # fail at start-up, not on the first batch
        self._secrets = (self._token,)
        base = sink.url.rstrip("/")
        self._url = base if base.endswith(COLLECTOR_PATH) else base + COLLECTOR_PATH
        self._host = self._hec.host or socket.gethostname()
        self._open_exchange(sink, replicas=replicas, clock=clock, transport=transport, metrics=metrics)
        self._pending: list[_Item] = []
        self._pending_bytes = 0
        self._timer: asyncio.TimerHandle | None = None
        self._sending: set[asyncio.Task[None]] = set()
        self._closed = False

    # -- the Sink protocol ------------------------------------------------------------------

    async def deliver(self, event: events.Event, admit: base.Admission | None = None) -> events.Outcome:
        if self._closed:
            return events.Retry("sink closed")
        raw = self.encode(event)
        item = _Item(raw, asyncio.get_running_loop().create_future(), admit)
        if self._pending and self._pending_bytes + len(raw) > self._hec.max_batch_bytes:
            self._flush()
        self._pending.append(item)
        self._pending_bytes += len(raw)
        if len(self._pending) >= self._hec.max_batch_events:
            self._flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._hec.linger_seconds, self._flush)
        # The future is this event's alone: a cancelled deliverer cancels it, and the batch
        # goes on without it (``_settle`` skips a future already done) — no shield needed.
        return await item.done

    def events_per_request(self) -> float:
        """A full batch: what a request can carry is what the budget should make room for."""
        return float(self._hec.max_batch_events)

    async def flush(self) -> None:
        """Send the open batch now."""
        self._flush()

    async def aclose(self) -> None:
        """Abandon what is not sent yet (its events answer Retry), close the client.

        Nothing new is sent from here: the runtime calls this after its delete path closed,
        and an event delivered then could never be deleted. A batch already on the wire is
        cancelled too; its events come back from the queue (the downstream may see them
        twice, which a grace period longer than ``timeoutSeconds`` avoids).
        """
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        pending, self._pending, self._pending_bytes = self._pending, [], 0
        _settle(pending, [events.Retry("sink closed")] * len(pending))
        for task in list(self._sending):
            task.cancel()
        if self._sending:
            await asyncio.gather(*self._sending, return_exceptions=True)
        await super().aclose()

    # -- wire format -------------------------------------------------------------------------

    def encode(self, event: events.Event) -> bytes:
        """One HEC event object."""
        document: dict[str, Any] = {}
        if event.event_time_ms is not None:
            document["time"] = round(event.event_time_ms / 1000, 3)
        document["host"] = self._host
        document["source"] = self._hec.source
        document["sourcetype"] = self._hec.sourcetype
        if self._hec.index:
            document["index"] = self._hec.index
        document["event"] = event.payload
        fields = {"event_type": event.event_type, "event_id": event.event_id}
        if event.ordering_key is not None:
            fields["ordering_key"] = event.ordering_key
        document["fields"] = fields
        return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()

    # -- batches -----------------------------------------------------------------------------

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._pending:
            return
        items, self._pending, self._pending_bytes = self._pending, [], 0
        task = asyncio.get_running_loop().create_task(self._send(items))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, items: list[_Item]) -> None:
        try:
            await self._post(items)
        finally:
            # Whatever did not get an answer (cancelled, or a bug) goes back to the queue.
            _settle(items, [events.Retry("batch not sent")] * len(items))

    async def _post(self, items: list[_Item]) -> None:
        """Send ``items`` as one batch and settle each item's future with its outcome."""
        sent: list[_Item] = []

        async def prepare(permit: throttling.Permit) -> exchange.Request | None:
            sent.extend(await _admitted(items))
            if not sent:
                return None
            if permit.probe:
                self.refresh_secrets()
            headers = {"Authorization": f"Splunk {self._token.reveal()}", "Content-Type": "application/json"}
            return exchange.Request(b"".join(item.raw for item in sent), headers)

        def judge_sent(answer: exchange.Answer) -> exchange.Judgement[list[events.Outcome] | None]:
            return judge(answer, count=len(sent))

        unsent: list[events.Outcome] | None = [events.NotSent()] * len(items)
        outcomes = await self._exchange.send(
            "POST", self._url, prepare=prepare, judge=judge_sent, unsent=unsent
        )
        if not sent:
            _settle(items, [events.NotSent()] * len(items))
            return
        if outcomes is not None:
            _settle(sent, outcomes)
            return
        if len(sent) == 1:
            _settle(sent, [events.Permanent("HEC refused the event even alone (HTTP 400/413)")])
            return
        half = len(sent) // 2
        await asyncio.gather(self._post(sent[:half]), self._post(sent[half:]))


async def _admitted(items: list[_Item]) -> list[_Item]:
    """The items whose admission says send; the others answer NotSent now.

    A remote store (DynamoDB) is asked for the batch's events concurrently, one task each,
    so the batch waits one round trip, not one per event. Admissions that answer without
    I/O (the memory store) are asked in turn: the same answers, without a task and a turn
    of the event loop per event.
    """
    # A deliverer cancelled before its event was admitted gave its message back to the
    # queue: that event is neither claimed nor sent now.
    waiting = [item for item in items if not item.admitted and not item.done.done()]
    if all(item.admit is None or item.admit.immediate for item in waiting):
        answers = [await _admit(item) for item in waiting]
    else:
        answers = await asyncio.gather(*(_admit(item) for item in waiting))
    for item, admitted in zip(waiting, answers, strict=True):
        item.admitted = admitted
        if not admitted:
            _settle([item], [events.NotSent()])
    return [item for item in items if item.admitted]


async def _admit(item: _Item) -> bool:
    return True if item.admit is None else await item.admit()


def _settle(items: list[_Item], outcomes: Sequence[events.Outcome]) -> None:
    """Answer the items not answered yet; a cancelled deliverer's future is already done."""
    for item, outcome in zip(items, outcomes, strict=True):
        if not item.done.done():
            item.done.set_result(outcome)


def _reply(answer: exchange.Answer) -> tuple[int | None, str, int | None]:
    """HEC's ``{"text", "code", "invalid-event-number"?}``."""
    try:
        document = json.loads(answer.body)
    except ValueError:
        return None, "", None
    if not isinstance(document, dict):
        return None, "", None
    code = document.get("code")
    number = document.get("invalid-event-number")
    return (
        code if isinstance(code, int) else None,
        str(document.get("text", ""))[:_REASON_LIMIT],
        number if isinstance(number, int) and not isinstance(number, bool) else None,
    )


def judge(answer: exchange.Answer, *, count: int) -> exchange.Judgement[list[events.Outcome] | None]:
    """Per-event outcomes for a batch of ``count``; None asks for a split."""
    Judgement, Result, Outcome = exchange.Judgement, throttling.Result, telemetry.SinkOutcome

    def every(outcome: events.Outcome) -> list[events.Outcome]:
        return [outcome] * count

    status = answer.status
    if status is None:
        result = Result.OVERLOADED if answer.timed_out else Result.FAILED
        return Judgement(every(events.Retry(answer.describe())), result, Outcome.ERROR)
    if 200 <= status < 300:
        return Judgement(every(events.Delivered()), Result.OK, Outcome.DELIVERED)
    code, text, number = _reply(answer)
    reason = f"HEC {status} code {code}: {text}" if code is not None else f"HTTP {status}"
    if status in (429, 503):
        delay = answer.retry_after()
        result = Result.OVERLOADED if status == 503 else Result.THROTTLED
        retry = events.Retry(reason, delay_seconds=delay, throttled=True)
        return Judgement(every(retry), result, Outcome.THROTTLED, pause=delay)
    if status == 400 and number is not None and 0 <= number < count:
        outcomes: list[events.Outcome] = [events.Delivered()] * number
        outcomes.append(events.Permanent(f"{reason} (event {number} of a batch of {count})"))
        outcomes += [events.Retry("not indexed: an earlier event of its batch was invalid")] * (
            count - number - 1
        )
        return Judgement(outcomes, Result.REJECTED, Outcome.PERMANENT)
    if status in (400, 413):
        if count == 1:
            return Judgement([events.Permanent(reason)], Result.REJECTED, Outcome.PERMANENT)
        return Judgement(None, Result.REJECTED, Outcome.RETRY)
    if status in (401, 403):
        log.error(
            "HEC refused the token: check spec.sink.siem.token (re-read before each probe)",
            extra={"sink": NAME, "status": status, "hec_code": code},
        )
        return Judgement(every(events.Refused(f"{reason} (token refused)")), Result.REFUSED, Outcome.REFUSED)
    if status >= 500:
        return Judgement(every(events.Retry(reason)), Result.FAILED, Outcome.RETRY)
    return Judgement(every(events.Permanent(reason)), Result.REJECTED, Outcome.PERMANENT)
