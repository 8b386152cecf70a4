"""What the worker end-to-end tests share: queues on the moto server, a feeder, manifests,
and a checker that compares what the downstream accepted with what was sent."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import pathlib
import random
import time
from collections.abc import Iterable
from typing import Any

import yaml

from fanout_core import spec as spec_model
from workers.simulators import aws, downstream, genesys

make_queue = aws.create_queue
queue_counts = aws.queue_counts


async def drain_queue(sqs: Any, url: str) -> list[dict[str, Any]]:
    """Every message visible in ``url`` now (receives until empty)."""
    found: list[dict[str, Any]] = []
    while True:
        reply = await sqs.receive_message(
            QueueUrl=url,
            MaxNumberOfMessages=10,
            WaitTimeSeconds=0,
            MessageAttributeNames=["All"],
            MessageSystemAttributeNames=["All"],
        )
        messages = reply.get("Messages", [])
        if not messages:
            return found
        found.extend(messages)


def manifest(
    *,
    queue_url: str,
    sink_url: str,
    dead_letter_url: str | None = None,
    name: str = "crm-sync",
    **overrides: Any,
) -> dict[str, Any]:
    """A FanoutConsumer manifest tuned for tests: short polls, short visibility, quick retries."""
    spec: dict[str, Any] = {
        "queue": {
            "url": queue_url,
            "waitTimeSeconds": 1,
            "maxMessages": 10,
            "visibilityTimeoutSeconds": 6,
            "pollers": 2,
            "maxInFlight": 100,
        },
        "ordering": {"key": "conversationId", "holdLimitSeconds": 30},
        "sink": {"type": "webhook", "url": sink_url, "maxConcurrency": 16, "timeoutSeconds": 5},
        "retry": {"baseDelaySeconds": 1, "maxDelaySeconds": 2, "maxAttempts": 8},
        "shutdown": {"gracePeriodSeconds": 10},
    }
    if dead_letter_url:
        spec["deadLetter"] = {"queueUrl": dead_letter_url}
    for section, values in overrides.items():
        spec[section] = {**spec.get(section, {}), **values}
    return {
        "apiVersion": "fanout.dev/v1alpha1",
        "kind": "FanoutConsumer",
        "metadata": {"name": name, "namespace": "contact-center"},
        "spec": spec,
    }


def write_manifest(path: pathlib.Path, document: dict[str, Any]) -> pathlib.Path:
    path.write_text(yaml.safe_dump(document))
    return path


def consumer(document: dict[str, Any]) -> spec_model.FanoutConsumer:
    return spec_model.parse_manifest(document)


@dataclasses.dataclass
class Traffic:
    """What a feeder sent: the unique events, and how many duplicates and poison bodies."""

    events: list[genesys.GenesysEvent] = dataclasses.field(default_factory=list)
    duplicates: int = 0
    poison: int = 0

    @property
    def correlation_ids(self) -> set[str]:
        return {event.correlation_id for event in self.events}


async def feed(
    sqs: Any,
    queue_url: str,
    *,
    conversations: int,
    length: int,
    seed: int = 1,
    duplicate_ratio: float = 0.05,
    poison_ratio: float = 0.01,
    fifo: bool = False,
    pause: float = 0.05,
    max_backlog: int = 60,
    traffic: Traffic | None = None,
) -> Traffic:
    """Send conversations round by round (every conversation's next event per round), in
    event order per conversation, in mixed envelopes, with duplicates (new envelope ids)
    and poison bodies; keep the queue's backlog small (moto's receive cost grows with it)."""
    generator = genesys.Generator(seed)
    rng = random.Random(seed)
    traffic = traffic if traffic is not None else Traffic()
    flows = [
        generator.conversation(start_ms=1_741_964_966_000 + index, length=length)
        for index in range(conversations)
    ]
    serial = 0
    for round_index in range(length):
        entries: list[dict[str, Any]] = []
        for flow in flows:
            event = flow[round_index]
            traffic.events.append(event)
            copies = 2 if rng.random() < duplicate_ratio else 1
            traffic.duplicates += copies - 1
            for _ in range(copies):
                serial += 1
                entry = {"Id": str(serial), "MessageBody": generator.body(event, generator.any_envelope())}
                if fifo:
                    entry["MessageGroupId"] = event.conversation_id
                    entry["MessageDeduplicationId"] = f"m{serial}"
                entries.append(entry)
            if rng.random() < poison_ratio:
                serial += 1
                traffic.poison += 1
                entry = {"Id": str(serial), "MessageBody": generator.poison()}
                if fifo:
                    entry["MessageGroupId"] = "poison"
                    entry["MessageDeduplicationId"] = f"m{serial}"
                entries.append(entry)
        for start in range(0, len(entries), 10):
            while (await queue_counts(sqs, queue_url))[0] > max_backlog:  # noqa: ASYNC110 - remote state
                await asyncio.sleep(pause)
            reply = await sqs.send_message_batch(QueueUrl=queue_url, Entries=entries[start : start + 10])
            assert not reply.get("Failed"), reply.get("Failed")
        await asyncio.sleep(pause)
    return traffic


async def wait_until(predicate: Any, *, timeout: float, interval: float = 0.2) -> bool:
    """Poll an async or sync predicate until it holds or ``timeout`` passes."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return True
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(interval)


def accepted_correlation_ids(accepted: Iterable[downstream.AcceptedRequest]) -> list[str]:
    return [str(json.loads(request.body)["metadata"]["CorrelationId"]) for request in accepted]


def check_exactly_once(sim: downstream.DownstreamSimulator, traffic: Traffic) -> None:
    """Every unique event delivered exactly once (with its own Idempotency-Key), nothing else."""
    delivered = accepted_correlation_ids(sim.accepted)
    assert len(delivered) == len(set(delivered)), "an event was delivered twice"
    missing = traffic.correlation_ids - set(delivered)
    assert not missing, f"{len(missing)} events never delivered"
    assert set(delivered) == traffic.correlation_ids
    keys = {request.event_id for request in sim.accepted}
    assert None not in keys and len(keys) == len(delivered), "Idempotency-Key missing or repeated"


def check_exactly_once_in_order(sim: downstream.DownstreamSimulator, traffic: Traffic) -> None:
    """Exactly once, and each conversation's events accepted in event-time order."""
    check_exactly_once(sim, traffic)
    violations = sim.order_violations()
    assert not violations, f"{len(violations)} events accepted out of order, first: {violations[:3]}"


async def feed_paced(
    sqs: Any,
    queue_url: str,
    *,
    conversations: int,
    length: int,
    rate: float,
    seed: int = 1,
    duplicate_ratio: float = 0.05,
    fifo: bool = False,
    max_backlog: int = 200,
    traffic: Traffic | None = None,
    sent_at: list[float] | None = None,
) -> Traffic:
    """Like :func:`feed` (no poison), but at about ``rate`` messages per second, not as fast as
    the backlog allows: a test can then tell "the workers stopped receiving" (the visible
    backlog grows) from "the workers' budgets are full". ``traffic`` fills as it goes;
    ``sent_at`` gets the ``time.monotonic()`` of every message sent."""
    generator = genesys.Generator(seed)
    rng = random.Random(seed)
    traffic = traffic if traffic is not None else Traffic()
    flows = [
        generator.conversation(start_ms=1_741_964_966_000 + index, length=length)
        for index in range(conversations)
    ]
    entries: list[tuple[genesys.GenesysEvent, dict[str, Any]]] = []
    for round_index in range(length):
        for flow in flows:
            event = flow[round_index]
            for _ in range(2 if rng.random() < duplicate_ratio else 1):
                entry = {
                    "Id": str(len(entries)),
                    "MessageBody": generator.body(event, generator.any_envelope()),
                }
                if fifo:
                    entry["MessageGroupId"] = event.conversation_id
                    entry["MessageDeduplicationId"] = f"m{len(entries)}"
                entries.append((event, entry))
    loop = asyncio.get_running_loop()
    due = loop.time()
    for start in range(0, len(entries), 10):
        batch = entries[start : start + 10]
        await asyncio.sleep(max(0.0, due - loop.time()))
        while (await queue_counts(sqs, queue_url))[0] > max_backlog:  # noqa: ASYNC110 - remote state
            await asyncio.sleep(0.1)
        reply = await sqs.send_message_batch(QueueUrl=queue_url, Entries=[entry for _, entry in batch])
        assert not reply.get("Failed"), reply.get("Failed")
        if sent_at is not None:
            sent_at.extend([time.monotonic()] * len(batch))
        known = traffic.correlation_ids
        for event, _ in batch:
            if event.correlation_id in known:
                traffic.duplicates += 1
            else:
                traffic.events.append(event)
                known.add(event.correlation_id)
        due = max(due, loop.time() - 1.0) + len(batch) / rate
    return traffic
