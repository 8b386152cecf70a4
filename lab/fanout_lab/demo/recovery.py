"""The demo's incident and its recovery: some CRM records are duplicated, their events are
dead-lettered, the duplicates are merged, and the dead letters are redriven — the way an
operator would.

``session`` calls :func:`break_crm` before the day starts and :func:`redrive` once
everything else has drained:

1. a botched data import left two CRM records with the external id of a few conversations
   (:func:`affected_conversations`: every twentieth, at least one): every upsert for them is
   answered ``300 Multiple Choices``, which the ``crm`` sink judges permanent, so the worker
   dead-letters those events with the CRM's reason while the other conversations go on;
2. after the day has drained, the duplicates are merged (the fix) and the dead-letter queue is
   redriven with the same engine and the same defaults as ``fanout dlq redrive --config
   crm-sync.yaml --reason-class permanent`` (``fanout_core.redriving``; pace: what the CRM's
   rate limit leaves room for), while the workers run; the poison messages stay where they are.

The cause is chosen by conversation, not by time, so the incident is the same on a fast
machine and a loaded one. The referee then checks that every refused event was delivered
exactly once after all.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from fanout_cli import dlq
from fanout_core import deadletters, pacing, redrive_reports, redriving
from fanout_core import spec as spec_model
from fanout_lab.demo import traffic
from fanout_lab.simulators import crm

EVERY = 20


def affected_conversations(day: traffic.Day) -> frozenset[str]:
    """The conversations whose CRM record is duplicated: every :data:`EVERY`-th of the day's
    (the import came after the backlog's records), at least one."""
    first: dict[str, int] = {}
    for event in day.day_events:
        if event.category is traffic.Category.CONVERSATION:
            first[event.key] = min(first.get(event.key, event.sequence), event.sequence)
    return frozenset(sorted(first, key=first.__getitem__)[::EVERY])


def break_crm(simulator: crm.CrmSimulator, conversations: frozenset[str]) -> None:
    """Duplicate the CRM records of ``conversations``: their upserts are answered 300."""
    simulator.ambiguous = set(conversations)


def fix_crm(simulator: crm.CrmSimulator) -> None:
    """Merge the duplicates."""
    simulator.ambiguous = set()


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
