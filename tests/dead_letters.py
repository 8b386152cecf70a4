"""Dead-letter queues filled the way the worker fills them, for the ``fanout dlq`` tests.

Each message is written with the worker's own request builder
(``workers.settling.dead_letter_request``), so the tests read exactly the format a worker
writes: body unchanged, ``fanout.*`` reason attributes, FIFO group and deduplication id.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from typing import Any

from fanout_lab.simulators import genesys
from workers import envelopes, events, messages, settling, telemetry

_serial = itertools.count(1)


@dataclasses.dataclass(frozen=True)
class Written:
    """One dead letter a test wrote: what it should look like after a redrive."""

    body: str
    reason_class: str
    reason: str
    group: str | None
    event_type: str | None
    correlation_id: str | None


async def write(
    sqs: Any,
    *,
    dead_letter_url: str,
    source_url: str,
    body: str,
    reason_class: str,
    reason: str,
    group: str | None = None,
    receive_count: int = 1,
    attributes: dict[str, dict[str, str]] | None = None,
) -> Written:
    """One dead letter, as a worker that gave up on ``body`` writes it."""
    message: dict[str, Any] = {
        "MessageId": f"source-{next(_serial)}",
        "ReceiptHandle": "unused",
        "Body": body,
        "Attributes": {"ApproximateReceiveCount": str(receive_count)},
        "MessageAttributes": attributes or {},
    }
    if group is not None:
        message["Attributes"]["MessageGroupId"] = group
    event: events.Event | None
    try:
        event = envelopes.decode(body)
    except envelopes.PoisonMessage:
        event = None
    request = settling.dead_letter_request(
        messages.parse(message),
        event,
        dead_letter_url=events.QueueUrl(dead_letter_url),
        source_queue_url=events.QueueUrl(source_url),
        reason_class=telemetry.ReasonClass(reason_class),
        reason=reason,
    )
    await sqs.send_message(**request)
    correlation_id = None
    if event is not None:
        correlation_id = str(event.payload.get("metadata", {}).get("CorrelationId"))
    return Written(
        body=body,
        reason_class=reason_class,
        reason=reason,
        group=request.get("MessageGroupId"),
        event_type=event.event_type if event is not None else None,
        correlation_id=correlation_id,
    )


@dataclasses.dataclass
class Incident:
    """A dead-letter queue after an incident: permanent rejections of ``*.end`` events, a few
    poison bodies, and exhausted retries of ``acw`` events."""

    written: list[Written]

    def of(self, reason_class: str) -> list[Written]:
        return [item for item in self.written if item.reason_class == reason_class]


PERMANENT_REASON = "HTTP 400 INVALID_FIELD: No such column 'Disconnect_Type__c' on Genesys_Conversation__c"
EXHAUSTED_REASON = "HTTP 503 after 5 attempts"


async def incident(
    sqs: Any,
    *,
    dead_letter_url: str,
    source_url: str,
    conversations: int,
    poison: int = 2,
    seed: int = 7,
) -> Incident:
    """Dead letters of ``conversations`` conversations: every ``customer.end`` permanent, every
    ``acw`` exhausted, plus ``poison`` undecodable bodies (FIFO: grouped by conversation)."""
    generator = genesys.Generator(seed)
    written: list[Written] = []
    for index in range(conversations):
        flow = generator.conversation(start_ms=1_741_964_966_000 + index * 1000)
        for event in flow:
            if event.suffix == "customer.end":
                reason_class, reason = "permanent", PERMANENT_REASON
            elif event.suffix == "acw":
                reason_class, reason = "exhausted", EXHAUSTED_REASON
            else:
                continue
            body = json.dumps(generator.eventbridge(event))
            written.append(
                await write(
                    sqs,
                    dead_letter_url=dead_letter_url,
                    source_url=source_url,
                    body=body,
                    reason_class=reason_class,
                    reason=reason,
                    group=event.conversation_id,
                )
            )
    for _ in range(poison):
        written.append(
            await write(
                sqs,
                dead_letter_url=dead_letter_url,
                source_url=source_url,
                body=generator.poison(),
                reason_class="poison",
                reason="body is not JSON (Expecting value at char 0)",
            )
        )
    return Incident(written)
