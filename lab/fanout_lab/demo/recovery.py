"""The demo's incident and its recovery: a CRM field goes missing, events are dead-lettered,
the field comes back, and the dead letters are redriven — the way an operator would.

``session`` starts :func:`break_crm_field` beside the publisher and calls :func:`redrive`
once everything else has drained:

1. for a stretch of the day (:data:`BROKEN_FROM` to :data:`BROKEN_UNTIL`) the CRM simulator
   has no ``Disconnect_Type__c`` column (a deploy dropped it): every upsert carrying that
   field — the ``*.end`` events — is answered ``400 INVALID_FIELD``, which the ``crm`` sink
   judges permanent, so the worker dead-letters those events with the CRM's reason while
   the rest of their conversations go on;
2. the column is restored (the fix);
3. after the day has drained, the dead-letter queue is redriven with the same engine and
   the same defaults as ``fanout dlq redrive --config crm-sync.yaml --reason-class
   permanent`` (``fanout_core.redriving``; pace: what the CRM's rate limit leaves room for),
   while the workers run; the poison messages stay where they are.

The referee then checks that every refused event was delivered exactly once after all.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from typing import Any

from fanout_cli import dlq
from fanout_core import deadletters, pacing, redrive_reports, redriving
from fanout_core import spec as spec_model
from fanout_lab.simulators import crm

BROKEN_FROM = 0.15
BROKEN_UNTIL = 0.30
"""Shares of the day (10:00 to about 11:50) during which the CRM lacks the column."""
MISSING_FIELD = "Disconnect_Type__c"


@dataclasses.dataclass(frozen=True)
class Figures:
    """One consumer's redrive, for the report."""

    consumer: str
    refused: frozenset[str]
    """Correlation ids of the events it found dead-lettered with reason class permanent."""
    moved: int
    seconds: float
    rate_why: str
    poison_left: int
    command: str
    complete: bool


async def break_crm_field(
    simulator: crm.CrmSimulator,
    fields: set[str],
    *,
    day_seconds: float,
    schedule_time: Callable[[], float],
    publishing_done: Callable[[], bool],
) -> None:
    """Drop :data:`MISSING_FIELD` from the CRM for the broken stretch of the day, then restore it."""
    try:
        while schedule_time() < BROKEN_FROM * day_seconds and not publishing_done():  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        simulator.fields = fields - {MISSING_FIELD}
        while schedule_time() < BROKEN_UNTIL * day_seconds and not publishing_done():  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    finally:
        simulator.fields = None


async def redrive(
    sqs: Any,
    consumer: spec_model.FanoutConsumer,
    *,
    config_name: str,
    on_progress: Callable[[redrive_reports.Progress], None],
) -> Figures:
    """Redrive ``consumer``'s permanent dead letters, as ``fanout dlq redrive`` would."""
    dead_letter_url = consumer.spec.dead_letter.queue_url
    assert dead_letter_url is not None
    identify = dlq.identifier(consumer)
    before = await redriving.peek(sqs, dead_letter_url, identify, limit=10_000)
    refused = frozenset(
        letter.identity.event_id
        for letter in before.letters
        if letter.reason_class == "permanent" and letter.identity is not None and letter.identity.event_id
    )
    limit = consumer.spec.sink.rate_limit
    choice = pacing.choose_rate(explicit=None, rate_limit=limit.requests_per_second if limit else None)
    engine = redriving.Redrive(
        sqs,
        dead_letter_url=dead_letter_url,
        source_url=consumer.spec.queue.url,
        selection=deadletters.Selection(reason_classes=frozenset({"permanent"})),
        rate=choice,
        identify=identify,
        visibility_seconds=10,
        on_progress=on_progress,
    )
    report = await engine.run()
    return Figures(
        consumer=consumer.metadata.name,
        refused=refused,
        moved=report.moved,
        seconds=report.elapsed_seconds,
        rate_why=choice.why,
        poison_left=report.skipped + report.held,
        command=f"fanout dlq redrive --config {config_name} --reason-class permanent",
        complete=report.complete,
    )
