"""What the tests and the benchmarks share: queues on the moto server, manifests, feeders
that keep a queue's backlog small, waiting, and checkers that compare what the downstream
accepted with what was sent.

``tests/`` imports this module as ``harness``; ``bench/_common.py`` builds its benchmark
pieces (child processes measured from outside, a receiver in its own process) on it. Feeders
keep the visible backlog under a bound because moto scans a whole queue for every message
it sends or returns: a long queue would measure moto, not the worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import json
import os
import pathlib
import random
import sys
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any

import yaml
from aiohttp import web

from fanout_core import spec as spec_model
from fanout_lab.simulators import aws, downstream, genesys
from workers import events, messages

make_queue = aws.create_queue
queue_counts = aws.queue_counts
BATCH = 10
"""SQS's largest send batch."""


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


@contextlib.asynccontextmanager
async def serving_app(app: web.Application) -> AsyncIterator[str]:
    """``app`` served on a free loopback port for the block; yields its base URL."""
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def wrap_spec(name: str, spec: dict[str, Any], *, namespace: str | None = None) -> dict[str, Any]:
    """The FanoutConsumer manifest document around ``spec``."""
    metadata = {"name": name} if namespace is None else {"name": name, "namespace": namespace}
    return {"apiVersion": "fanout.dev/v1alpha1", "kind": "FanoutConsumer", "metadata": metadata, "spec": spec}


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
    return wrap_spec(name, spec, namespace="contact-center")


def write_manifest(path: pathlib.Path, document: dict[str, Any]) -> pathlib.Path:
    path.write_text(yaml.safe_dump(document))
    return path


def consumer(document: dict[str, Any]) -> spec_model.FanoutConsumer:
    return spec_model.parse_manifest(document)


async def start_worker(
    config: pathlib.Path, *, environment: dict[str, str] | None = None, stderr: int | None = None
) -> asyncio.subprocess.Process:
    """``fanout-worker --config config`` in a child process (probes on a free port, one
    replica), with this process's environment plus ``environment`` (the AWS variables of a
    backend, when the test's own are not it); ``stderr`` DEVNULL unless asked for (PIPE)."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "workers",
        "--config",
        str(config),
        "--http-port",
        "0",
        env={**os.environ, **(environment or {}), "FANOUT_REPLICAS": "1"},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL if stderr is None else stderr,
    )


async def wait_for_room(
    sqs: Any, url: str, *, max_backlog: int, max_total: int | None = None, pause: float
) -> None:
    """Until fewer than ``max_backlog`` messages are visible in ``url`` (and, when given, fewer
    than ``max_total`` visible and in flight together)."""
    while True:
        visible, in_flight = await queue_counts(sqs, url)
        if visible < max_backlog and (max_total is None or visible + in_flight < max_total):
            return
        await asyncio.sleep(pause)


async def send_batch(sqs: Any, url: str, entries: list[dict[str, Any]]) -> None:
    """``SendMessageBatch`` (at most :data:`BATCH` entries); a refused entry is an error."""
    reply = await sqs.send_message_batch(QueueUrl=url, Entries=entries)
    if reply.get("Failed"):
        raise RuntimeError(f"send_message_batch failed: {reply['Failed']}")


async def send_bodies(
    sqs: Any,
    url: str,
    bodies: Sequence[str],
    *,
    max_backlog: int,
    max_total: int | None = None,
    pause: float = 0.02,
) -> None:
    """Send ``bodies`` in order, :data:`BATCH` per batch, each batch only once
    :func:`wait_for_room` says there is room."""
    for start in range(0, len(bodies), BATCH):
        await wait_for_room(sqs, url, max_backlog=max_backlog, max_total=max_total, pause=pause)
        chunk = bodies[start : start + BATCH]
        await send_batch(
            sqs, url, [{"Id": str(index), "MessageBody": body} for index, body in enumerate(chunk)]
        )


async def wait_until_empty(sqs: Any, url: str, *, timeout: float) -> bool:
    """Whether ``url`` had nothing visible and nothing in flight within ``timeout`` seconds."""

    async def empty() -> bool:
        return await queue_counts(sqs, url) == (0, 0)

    return await wait_until(empty, timeout=timeout, interval=0.1)


@dataclasses.dataclass
class Traffic:
    """What a feeder sent: the unique events, and how many duplicates and poison bodies."""

    events: list[genesys.GenesysEvent] = dataclasses.field(default_factory=list)
    duplicates: int = 0
    poison: int = 0

    @property
    def correlation_ids(self) -> set[str]:
        return {event.correlation_id for event in self.events}


def _conversations(generator: genesys.Generator, count: int, length: int) -> list[list[genesys.GenesysEvent]]:
    """``count`` conversations of ``length`` events each, starting a millisecond apart."""
    return [
        generator.conversation(start_ms=1_741_964_966_000 + index, length=length) for index in range(count)
    ]


def interleaved_bodies(count: int, *, length: int = 10, seed: int = 11) -> list[str]:
    """``count`` message bodies (EventBridge envelopes): conversations of ``length`` events,
    interleaved round by round — a backlog in which every conversation is under way at once."""
    generator = genesys.Generator(seed)
    flows = _conversations(generator, max(1, count // length), length)
    envelope = events.EnvelopeKind.EVENTBRIDGE
    bodies = [generator.body(flow[index], envelope) for index in range(length) for flow in flows]
    return bodies[:count]


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
    flows = _conversations(generator, conversations, length)
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
        for start in range(0, len(entries), BATCH):
            await wait_for_room(sqs, queue_url, max_backlog=max_backlog, pause=pause)
            await send_batch(sqs, queue_url, entries[start : start + BATCH])
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
    head_start: int = 0,
) -> Traffic:
    """Like :func:`feed` (no poison), but at about ``rate`` messages per second, not as fast as
    the backlog allows: a test can then tell "the workers stopped receiving" (the visible
    backlog grows) from "the workers' budgets are full". ``traffic`` fills as it goes;
    ``sent_at`` gets the ``time.monotonic()`` of every message sent.

    The first ``head_start`` messages go at once, and the pace counts from the moment they are
    in: a backlog from the start, which a feeder that falls behind on a busy machine (it drops
    lag of more than a second) cannot spend before the workers have taken it."""
    generator = genesys.Generator(seed)
    rng = random.Random(seed)
    traffic = traffic if traffic is not None else Traffic()
    flows = _conversations(generator, conversations, length)
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
    for start in range(0, len(entries), BATCH):
        batch = entries[start : start + BATCH]
        if start < head_start:
            due = loop.time()
        else:
            await asyncio.sleep(max(0.0, due - loop.time()))
            await wait_for_room(sqs, queue_url, max_backlog=max_backlog, pause=0.1)
        await send_batch(sqs, queue_url, [entry for _, entry in batch])
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


# --- the processor on its own --------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Settled:
    """One action a :class:`RecordingSettlement` took: ``delete``, ``retry_later``,
    ``give_back`` or ``dead_letter`` (with the delay or the reason class and reason)."""

    action: str
    message_id: str
    delay: float | None = None
    reason_class: events.ReasonClass | None = None
    reason: str | None = None


class RecordingSettlement:
    """Stands in for ``workers.settling.Settler`` where no SQS is wanted (the processor's
    tests, ``bench/ordering.py``): records what the processor settles, calls nothing.

    It keeps the settler's once-only rule (a message is settled by its first action; later
    ones are ignored) and its dead-letter record (``dead_letter_fails`` makes copies fail,
    as an unwritable dead-letter queue does). ``track`` is what the pollers do with a received
    message.
    """

    def __init__(self) -> None:
        self.in_hand: set[events.ReceiptHandle] = set()
        self.settled: list[Settled] = []
        self.dead_letter_fails = False
        self.changed = asyncio.Event()

    def track(self, message: messages.Message) -> None:
        self.in_hand.add(message.receipt_handle)

    def actions(self, message_id: str) -> list[Settled]:
        return [settled for settled in self.settled if settled.message_id == message_id]

    def count(self, action: str) -> int:
        return sum(1 for settled in self.settled if settled.action == action)

    def _settle(self, message: messages.Message, settled: Settled) -> bool:
        if message.receipt_handle not in self.in_hand:
            return False
        self.in_hand.discard(message.receipt_handle)
        self.settled.append(settled)
        self.changed.set()
        return True

    def delete(self, message: messages.Message) -> None:
        self._settle(message, Settled("delete", message.message_id))

    def retry_later(self, message: messages.Message, delay_seconds: float) -> None:
        self._settle(message, Settled("retry_later", message.message_id, delay=delay_seconds))

    def give_back(self, given: Sequence[messages.Message], *, delay_seconds: float = 0.0) -> None:
        for message in given:
            self._settle(message, Settled("give_back", message.message_id, delay=delay_seconds))

    async def dead_letter(
        self,
        message: messages.Message,
        event: events.Event | None,
        *,
        reason_class: events.ReasonClass,
        reason: str,
        backoff: float,
    ) -> bool:
        if message.receipt_handle not in self.in_hand:
            return True
        if self.dead_letter_fails:
            self.retry_later(message, backoff)
            return False
        self._settle(
            message, Settled("dead_letter", message.message_id, reason_class=reason_class, reason=reason)
        )
        return True

    def dead_lettered_before(self, message: messages.Message, *, backoff: float) -> None:
        self.delete(message)


def sqs_message(
    body: str, *, message_id: str | None = None, receive_count: int = 1, **system: str
) -> messages.Message:
    """A message as ``ReceiveMessage`` returns it, parsed; ``system`` adds system attributes
    (``SentTimestamp``, ``MessageGroupId``, ``SequenceNumber``...)."""
    identifier = message_id or f"m-{next(_message_serial)}"
    return messages.parse(
        {
            "MessageId": identifier,
            "ReceiptHandle": f"receipt-{identifier}-{receive_count}",
            "Body": body,
            "Attributes": {"ApproximateReceiveCount": str(receive_count), **system},
        }
    )


_message_serial = itertools.count(1)
