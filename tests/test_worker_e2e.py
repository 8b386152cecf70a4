"""The worker end to end: SQS over HTTP (moto, and again LocalStack), a real webhook receiver on
loopback.

Hundreds of events over dozens of conversations, fed while the worker runs, in mixed
envelopes with duplicates (new envelope ids), poison bodies, transient 500s and 429s
with Retry-After: every unique event is delivered exactly once, in order per
conversation, poison goes to the dead-letter queue with its reason, and nothing is
left behind in the source queue.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from fanout_lab import harness
from fanout_lab.simulators import webhook
from tests import sqs_backends
from workers import running, telemetry


async def run_worker_until_done(
    sqs: Any, worker: running.Worker, queue_url: str, feeding: asyncio.Task[harness.Traffic], sim: Any
) -> harness.Traffic:
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        traffic = await feeding

        async def settled() -> bool:
            visible, in_flight = await harness.queue_counts(sqs, queue_url)
            delivered = set(harness.accepted_correlation_ids(sim.accepted))
            return visible == 0 and in_flight == 0 and traffic.correlation_ids <= delivered

        assert await harness.wait_until(settled, timeout=90), "the worker did not finish the backlog"
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=30)
    return traffic


# On the SQS doubles, FIFO order rests on windows in time (workers/ordering.py: how long a
# handed-back message is expected, how long a lone arrival settles); a second test process
# starving this one's event loop stretches them past what any worker on its own CPU sees.
@pytest.mark.parametrize(
    ("sqs_backend", "fifo"),
    [
        pytest.param("moto", False, id="moto-standard"),
        pytest.param("moto", True, id="moto-fifo", marks=pytest.mark.serial),
        pytest.param("localstack", False, id="localstack-standard"),
        pytest.param("localstack", True, id="localstack-fifo", marks=pytest.mark.serial),
    ],
    indirect=["sqs_backend"],
)
async def test_exactly_once_in_order_with_duplicates_poison_faults_and_throttles(
    sqs_backend: sqs_backends.SqsBackend, fifo: bool
) -> None:
    sqs = sqs_backend.sqs
    suffix = ".fifo" if fifo else ""
    name = f"e2e-{'fifo' if fifo else 'std'}"
    source = await harness.make_queue(sqs, name + suffix, fifo=fifo)
    dead = await harness.make_queue(sqs, name + "-dlq" + suffix, fifo=fifo)
    async with webhook.WebhookSimulator(fail_ratio=0.05, throttle_ratio=0.03, retry_after=1, seed=7) as sim:
        # Two pollers on FIFO queues too: moto can hand a second concurrent long poll a group's
        # next message while the previous one is in flight, and LocalStack serves a group's
        # later messages while its head waits out a visibility change. Order must not rest on
        # one reading of the group lock.
        document = harness.manifest(queue_url=source, sink_url=sim.url, dead_letter_url=dead)
        worker = running.Worker(harness.consumer(document), http_port=0)
        feeding = asyncio.create_task(
            harness.feed(sqs, source, conversations=40, length=8, fifo=fifo, poison_ratio=0.02, seed=3)
        )
        traffic = await run_worker_until_done(sqs, worker, source, feeding, sim)

        harness.check_exactly_once_in_order(sim, traffic)
        assert sim.status_counts.get(500, 0) > 0 and sim.status_counts.get(429, 0) > 0, "faults were injected"
        assert traffic.duplicates > 0 and traffic.poison > 0

    dead_letters = await harness.drain_queue(sqs, dead)
    assert len(dead_letters) == traffic.poison
    for message in dead_letters:
        attributes = message["MessageAttributes"]
        assert attributes["fanout.reason-class"]["StringValue"] == "poison"
        assert attributes["fanout.reason"]["StringValue"]
        assert attributes["fanout.source-queue"]["StringValue"] == source
        assert int(attributes["fanout.attempts"]["StringValue"]) >= 1
        if fifo:
            assert message["Attributes"]["MessageGroupId"]
            assert message["Attributes"]["MessageDeduplicationId"]


class FailFirstEventOnce:
    """A downstream's verdict: the first event the feeder sent fails once (500), then passes."""

    def __init__(self, traffic: harness.Traffic) -> None:
        self.traffic = traffic
        self.failed = False

    def __call__(self, document: Any) -> int | None:
        correlation_id = str(document.get("metadata", {}).get("CorrelationId"))
        if not self.failed and correlation_id == self.traffic.events[0].correlation_id:
            self.failed = True
            return 500
        return None


@pytest.mark.parametrize("sqs_backend", ["moto", "localstack"], indirect=True)
async def test_a_failed_event_keeps_its_place_while_the_worker_cannot_receive_it(
    sqs_backend: sqs_backends.SqsBackend,
) -> None:
    """A retried event is due back in a second, but the worker's in-flight budget is full of
    slow deliveries for longer than the failure's hold: the event is visible in the queue and
    nobody receives it. The conversation's next event, already in hand, must still wait for
    it: the worker has not had the chance to receive it, so it is not overdue."""
    sqs = sqs_backend.sqs
    source = await harness.make_queue(sqs, "e2e-starved")
    traffic = harness.Traffic()
    fail_first_event_once = FailFirstEventOnce(traffic)

    # Every answer takes 8 s: longer than the failure's hold by time (its 1 s retry delay
    # plus the 5 s redelivery grace), so the budget stays full past it.
    async with webhook.WebhookSimulator(reject=fail_first_event_once, latency=8.0) as sim:
        document = harness.manifest(
            queue_url=source,
            sink_url=sim.url,
            queue={"pollers": 1, "maxInFlight": 3},
            sink={"maxConcurrency": 3, "timeoutSeconds": 15},
            retry={"baseDelaySeconds": 1, "maxDelaySeconds": 1},
        )
        worker = running.Worker(harness.consumer(document), http_port=0)
        feeding = asyncio.create_task(
            harness.feed(
                sqs, source, conversations=3, length=2, duplicate_ratio=0, poison_ratio=0, traffic=traffic
            )
        )
        await run_worker_until_done(sqs, worker, source, feeding, sim)
        assert fail_first_event_once.failed, "the first event failed once"
        harness.check_exactly_once_in_order(sim, traffic)


async def test_a_worker_whose_hands_are_full_of_held_events_does_not_wait_out_the_hold_limit(
    sqs: Any,
) -> None:
    """The other side of the rule above: when every place in hand holds a later event of a
    blocked conversation, no receive can begin, so none can bring the failed event back. The
    hold then ends by its time (about 6 s here), not by the 120 s hold limit: the worker gives
    up that conversation's order rather than stall."""
    source = await harness.make_queue(sqs, "e2e-stalled")
    traffic = harness.Traffic()
    fail_first_event_once = FailFirstEventOnce(traffic)

    async with webhook.WebhookSimulator(reject=fail_first_event_once) as sim:
        document = harness.manifest(
            queue_url=source,
            sink_url=sim.url,
            queue={"pollers": 1, "maxInFlight": 2},
            ordering={"holdLimitSeconds": 120},
            retry={"baseDelaySeconds": 1, "maxDelaySeconds": 1},
        )
        worker = running.Worker(harness.consumer(document), http_port=0)
        feeding = asyncio.create_task(
            harness.feed(
                sqs, source, conversations=1, length=3, duplicate_ratio=0, poison_ratio=0, traffic=traffic
            )
        )
        stop = asyncio.Event()
        task = asyncio.create_task(worker.run(stop))
        try:
            await feeding

            async def settled() -> bool:
                delivered = set(harness.accepted_correlation_ids(sim.accepted))
                return (
                    await harness.queue_counts(sqs, source) == (0, 0) and traffic.correlation_ids <= delivered
                )

            assert await harness.wait_until(settled, timeout=60), "the worker waited for the hold limit"
        finally:
            stop.set()
            await asyncio.wait_for(task, timeout=30)
        assert fail_first_event_once.failed
        harness.check_exactly_once(sim, traffic)


async def test_permanent_failure_is_dead_lettered_and_does_not_block_its_conversation(
    sqs_backend: sqs_backends.SqsBackend,
) -> None:
    sqs = sqs_backend.sqs
    source = await harness.make_queue(sqs, "e2e-permanent")
    dead = await harness.make_queue(sqs, "e2e-permanent-dlq")
    traffic = harness.Traffic()

    def rejected() -> set[str]:
        # Each conversation's second event (the feeder sends round by round: events 2 and 3).
        return {event.correlation_id for event in traffic.events[2:4]}

    def reject(document: Any) -> int | None:
        # The downstream refuses those for good (422): a permanent failure of that event.
        return 422 if str(document.get("metadata", {}).get("CorrelationId")) in rejected() else None

    async with webhook.WebhookSimulator(reject=reject) as sim:
        document = harness.manifest(queue_url=source, sink_url=sim.url, dead_letter_url=dead)
        worker = running.Worker(harness.consumer(document))
        stop = asyncio.Event()
        task = asyncio.create_task(worker.run(stop))
        try:
            feeding = await harness.feed(
                sqs, source, conversations=2, length=3, duplicate_ratio=0, poison_ratio=0, traffic=traffic
            )

            async def settled() -> bool:
                # Count, not receive: a receive would hide the copies it saw from the next check.
                return sum(await harness.queue_counts(sqs, dead)) == 2 and (
                    await harness.queue_counts(sqs, source)
                ) == (0, 0)

            assert await harness.wait_until(settled, timeout=30)
        finally:
            stop.set()
            await asyncio.wait_for(task, timeout=30)
        delivered = harness.accepted_correlation_ids(sim.accepted)
        expected = [
            event.correlation_id for event in feeding.events if event.correlation_id not in rejected()
        ]
        assert sorted(delivered) == sorted(expected)
        assert sim.order_violations() == []
    for message in await harness.drain_queue(sqs, dead):
        attributes = message["MessageAttributes"]
        assert attributes["fanout.reason-class"]["StringValue"] == "permanent"
        assert "422" in attributes["fanout.reason"]["StringValue"]


async def _all_delivered(
    sqs: Any,
    source: str,
    sim: webhook.WebhookSimulator,
    document: dict[str, Any],
    *,
    events: int,
    timeout: float,
    metrics: telemetry.WorkerMetrics | None = None,
) -> bool:
    """Run one worker on ``document`` (writing to ``metrics``), feed ``events`` one-event
    conversations: were they all delivered within ``timeout`` seconds?"""
    worker = running.Worker(harness.consumer(document), metrics=metrics)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        traffic = await harness.feed(
            sqs, source, conversations=events, length=1, duplicate_ratio=0, poison_ratio=0
        )

        async def delivered() -> bool:
            return traffic.correlation_ids <= set(harness.accepted_correlation_ids(sim.accepted))

        return await harness.wait_until(delivered, timeout=timeout)
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=30)


async def test_a_short_throttle_is_waited_out_in_place_not_through_the_queue(sqs: Any) -> None:
    """A webhook granting one request per second answers the others 429 with Retry-After: 1.
    Each throttled event waits where it is and goes again: all three are delivered and none
    went back through SQS (each received once)."""
    source = await harness.make_queue(sqs, "e2e-in-place")
    async with webhook.WebhookSimulator(rate=1.0, burst=1) as sim:
        document = harness.manifest(queue_url=source, sink_url=sim.url)
        metrics = telemetry.WorkerMetrics()
        assert await _all_delivered(sqs, source, sim, document, events=3, timeout=30, metrics=metrics)
    assert sim.status_counts[429] >= 2
    queue = harness.consumer(document).spec.queue.name
    received = metrics.value("fanout_messages_received_total", queue=queue)
    assert received == 3, f"{received} receives of 3 messages: throttled events went back to SQS"


async def test_an_isolated_throttle_makes_its_event_wait_its_retry_after_not_a_backoff(sqs: Any) -> None:
    """A rate-limited sink met by one throttle now and then (Retry-After: 1) skips a beat and
    keeps taking work; the throttled event waits its Retry-After where it is. With a retry
    backoff of 30 s, an event that waited the backoff instead would still be waiting."""
    source = await harness.make_queue(sqs, "e2e-isolated-throttle")
    async with webhook.WebhookSimulator(throttle_ratio=0.1, retry_after=1.0, seed=3) as sim:
        document = harness.manifest(
            queue_url=source,
            sink_url=sim.url,
            sink={"rateLimit": {"requestsPerSecond": 20, "burst": 2}},
            retry={"baseDelaySeconds": 30, "maxDelaySeconds": 60},
        )
        assert await _all_delivered(sqs, source, sim, document, events=30, timeout=12)
    assert sim.status_counts[429] >= 1


async def test_a_receive_under_way_at_shutdown_strands_nothing(sqs: Any) -> None:
    """SIGTERM in the middle of a backlog, receives going on all the time (the budget holds a
    second of a 20/s grant): what a receive under way brings goes back to the queue at once,
    instead of staying invisible for the visibility timeout."""
    source = await harness.make_queue(sqs, "e2e-drain-receive", visibility=30)
    async with webhook.WebhookSimulator(rate=20.0, burst=5) as sim:
        document = harness.manifest(
            queue_url=source,
            sink_url=sim.url,
            queue={"visibilityTimeoutSeconds": 30, "maxMessages": 1, "pollers": 8},
            sink={"rateLimit": {"requestsPerSecond": 20, "burst": 5}},
        )
        worker = running.Worker(harness.consumer(document))
        stop = asyncio.Event()
        task = asyncio.create_task(worker.run(stop))
        traffic = await harness.feed(
            sqs, source, conversations=60, length=1, duplicate_ratio=0, poison_ratio=0, max_backlog=200
        )
        await harness.wait_until(lambda: len(sim.accepted) >= 20, timeout=20, interval=0.02)
        stop.set()
        await asyncio.wait_for(task, timeout=30)
        delivered = len(set(harness.accepted_correlation_ids(sim.accepted)))
    visible, in_flight = await harness.queue_counts(sqs, source)
    assert in_flight == 0, f"{in_flight} messages stranded until their visibility timeout"
    assert visible + delivered == len(traffic.events)


async def test_probes_and_metrics_are_served(sqs: Any) -> None:
    import httpx

    source = await harness.make_queue(sqs, "e2e-probes")
    async with webhook.WebhookSimulator() as sim:
        worker = running.Worker(
            harness.consumer(harness.manifest(queue_url=source, sink_url=sim.url)), http_port=0
        )
        stop = asyncio.Event()
        task = asyncio.create_task(worker.run(stop))
        try:
            await worker.wait_started()
            assert worker.http_url is not None
            async with httpx.AsyncClient(base_url=worker.http_url) as client:
                assert (await client.get("/healthz")).status_code == 200
                assert await harness.wait_until(lambda: worker.ready, timeout=10)
                ready = await client.get("/readyz")
                assert ready.status_code == 200 and json.loads(ready.text)["ready"] is True
                metrics = await client.get("/metrics")
                assert "fanout_messages_received_total" in metrics.text
                stop.set()
                await asyncio.wait_for(task, timeout=30)
        finally:
            stop.set()
            await asyncio.wait_for(task, timeout=30)
