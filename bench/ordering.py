"""Ordered throughput: 500 conversations, 20 ms per delivery, 64 at once.

The ideal for a sink with 20 ms latency and ``maxConcurrency: 64`` is 64 / 0.020 s =
3,200 events per second, reached only if the per-conversation lanes always have 64
different conversations ready. The traffic is 500 conversations of ten events, round by
round (every conversation's next event), so each conversation's events arrive in order.
Two measurements, printed apart:

1. **The ordering layer** — the target ratio. The real ``workers.processing.Processor``
   (real ``workers.ordering.Lanes``, a real memory idempotency store, the real envelope
   decoder, metrics; state lines at WARNING, as the end-to-end worker below) in this
   process, fed SQS-shaped messages ten at a time with at most ``maxInFlight`` (4 x 64) in
   hand, as the pollers do. The sink sleeps
   20 ms per event (``asyncio.sleep``; an HTTP stack would measure HTTP CPU, not the lanes)
   and checks what a receiver would: order within a conversation, and never two events of
   one conversation at once. The settler is a stand-in that records deletes instead of
   calling SQS (the Processor takes its settler as a parameter). Prints throughput / 3,200
   (target >= 0.9), the violations, and what it ran at: mean concurrent deliveries, mean
   time per delivery, CPU share and CPU per event. Then the ceiling of that figure: the
   same sleeping sink driven by 64 bare tasks (``asyncio.sleep`` wakes late by the event
   loop's timer granularity, so even that stays near 0.95), and the ratio to it.
2. **End to end through SQS** — not the target: the same traffic through a queue on the
   moto server consumed by ``fanout-worker`` (a child process, the real CLI) delivering to
   a webhook receiver that takes 20 ms per request and records the order it accepted
   events in (backlog kept bounded: moto scans the whole queue for every message it
   moves). Printed with its ceiling measured in the same run — a bare receive-and-delete
   loop on the same moto — and the ratio to it; moto on a small machine serves a few
   hundred receive+delete per second, so this figure measures moto more than the worker.
   Also: the CPU shares of moto, the worker and this process, and the worker's events per
   CPU-second.

    .venv/bin/python bench/ordering.py [--conversations 500] [--skip-end-to-end]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import pathlib
import statistics
import sys
import time
from typing import Any

import _common

from fanout_core import idempotency
from fanout_core import spec as spec_model
from fanout_lab import harness
from fanout_lab.simulators import genesys, webhook
from workers import events, processing, telemetry
from workers.sinks import base

LATENCY = 0.020
CONCURRENCY = 64
EVENTS_PER_CONVERSATION = 10
MAX_BACKLOG = 150
POLLERS = 4


def traffic(conversations: int) -> list[str]:
    """Round-robin: the k-th event of every conversation, then the (k+1)-th..."""
    generator = genesys.Generator(seed=11)
    flows = [
        generator.conversation(start_ms=1_741_964_966_000 + index * 1000, length=EVENTS_PER_CONVERSATION)
        for index in range(conversations)
    ]
    return [
        generator.body(flow[step], events.EnvelopeKind.EVENTBRIDGE)
        for step in range(EVENTS_PER_CONVERSATION)
        for flow in flows
    ]


def moto_pid() -> int:
    """The moto server child of this process (found through /proc, like any child)."""
    for stat in pathlib.Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == os.getpid():
                command = (stat.parent / "cmdline").read_bytes()
                if b"moto.server" in command:
                    return int(stat.parent.name)
    raise RuntimeError("moto server process not found")


def cpu_of(pid: int) -> float:
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _common.CLOCK_TICKS


async def bare_drain(sqs: Any, queue_url: str, bodies: list[str]) -> float:
    """Messages per second a receive → delete loop (POLLERS of them) gets from moto."""
    done = asyncio.Event()
    received = 0

    async def poll() -> None:
        nonlocal received
        while not done.is_set():
            reply = await sqs.receive_message(
                QueueUrl=queue_url,
                MaxNumberOfMessages=10,
                WaitTimeSeconds=1,
                MessageSystemAttributeNames=["All"],
                MessageAttributeNames=["All"],
            )
            messages = reply.get("Messages", [])
            if messages:
                await sqs.delete_message_batch(
                    QueueUrl=queue_url,
                    Entries=[
                        {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)
                    ],
                )
                received += len(messages)
                if received >= len(bodies):
                    done.set()

    started = time.monotonic()
    pollers = [asyncio.create_task(poll()) for _ in range(POLLERS)]
    await _common.feed(sqs, queue_url, bodies, max_backlog=MAX_BACKLOG)
    await asyncio.wait_for(done.wait(), timeout=120)
    elapsed = time.monotonic() - started
    for task in pollers:
        task.cancel()
    await asyncio.gather(*pollers, return_exceptions=True)
    return len(bodies) / elapsed


# ------------------------------------------------------------------ 1. the ordering layer
@dataclasses.dataclass
class SleepingSink(_common.Unlimited):
    """A downstream taking ``latency`` per event that checks order as a receiver would."""

    latency: float
    running: set[str] = dataclasses.field(default_factory=set)
    last_time: dict[str, int] = dataclasses.field(default_factory=dict)
    seen: set[str] = dataclasses.field(default_factory=set)
    violations: int = 0
    overlaps: int = 0
    delivered: int = 0
    in_flight: int = 0
    durations: list[float] = dataclasses.field(default_factory=list)

    @property
    def name(self) -> str:
        return "webhook"

    async def deliver(self, event: events.Event, admit: base.Admission | None = None) -> events.Outcome:
        if admit is not None and not await admit():  # claimed when its turn comes, as a real sink
            return events.NotSent()
        key = event.ordering_key or event.event_id
        if key in self.running:
            self.overlaps += 1
        self.running.add(key)
        self.in_flight += 1
        started = time.monotonic()
        try:
            await asyncio.sleep(self.latency)
        finally:
            self.in_flight -= 1
            self.running.discard(key)
        self.durations.append(time.monotonic() - started)
        if event.event_id not in self.seen:  # a redelivery is a duplicate, not a violation
            self.seen.add(event.event_id)
            moment = event.event_time_ms or 0
            if moment < self.last_time.get(key, moment):
                self.violations += 1
            else:
                self.last_time[key] = moment
        self.delivered += 1
        return events.Delivered()

    async def aclose(self) -> None:
        return None


async def sink_alone(events_count: int) -> float:
    """Events per second of the sleeping sink driven by 64 bare tasks: no decoding, lanes,
    store or telemetry. What ``asyncio.sleep`` itself allows (its wake-ups run late by the
    event loop's timer granularity), the ceiling of the ordering-layer figure."""
    sink = SleepingSink(LATENCY)
    remaining = events_count

    async def slot(index: int) -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            event = events.Event(events.EventId(f"e-{remaining}"), "bench", {}, ordering_key=f"c-{index}")
            await sink.deliver(event)

    started = time.monotonic()
    await asyncio.gather(*(slot(index) for index in range(CONCURRENCY)))
    return events_count / (time.monotonic() - started)


@dataclasses.dataclass(frozen=True)
class LayerResult:
    events: int
    seconds: float
    cpu_seconds: float
    violations: int
    overlaps: int
    unexpected: list[str]
    mean_concurrency: float
    mean_delivery_seconds: float


async def ordering_layer(bodies: list[str], *, max_in_flight: int) -> LayerResult:
    """The Processor on its own: fed like the pollers feed it, timed until all is settled."""
    spec = spec_model.FanoutConsumerSpec.model_validate(
        {
            "queue": {
                "url": "https://sqs.us-east-1.amazonaws.com/123456789012/ordering",
                "maxInFlight": max_in_flight,
            },
            "sink": {"type": "webhook", "url": "http://127.0.0.1:9/events", "maxConcurrency": CONCURRENCY},
            "ordering": {"key": "conversationId"},
            "idempotency": {"store": "memory", "ttlSeconds": 3600},
        }
    )
    sink = SleepingSink(LATENCY)
    settler = harness.RecordingSettlement()
    processor = processing.Processor(
        spec=spec,
        sink=sink,
        store=idempotency.MemoryStore(ttl_seconds=3600),
        settler=settler,
        telemetry=telemetry.WorkerTelemetry(queue_url=spec.queue.url, sink_name="webhook"),
    )
    dispatcher = asyncio.create_task(processor.run())
    concurrency: list[int] = []

    async def sample() -> None:
        while True:
            concurrency.append(sink.in_flight)
            await asyncio.sleep(0.005)

    # What SQS would hand over, made beforehand: the time below is the Processor's.
    sent_ms = int(time.time() * 1000)
    received = [harness.sqs_message(body, SentTimestamp=str(sent_ms)) for body in bodies]
    sampler = asyncio.create_task(sample())
    started, cpu_started = time.monotonic(), time.process_time()
    for start in range(0, len(received), 10):
        batch = received[start : start + 10]
        while len(settler.in_hand) + len(batch) > max_in_flight:  # the in-flight budget
            settler.changed.clear()
            await settler.changed.wait()
        for message in batch:
            settler.track(message)
            processor.submit([message])
        await asyncio.sleep(0)  # a receive is an await
    deadline = time.monotonic() + 120
    while settler.in_hand:
        if time.monotonic() > deadline:
            raise RuntimeError(f"ordering layer: {len(settler.in_hand)} messages unsettled after 120 s")
        settler.changed.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(settler.changed.wait(), 1.0)
    seconds, cpu_seconds = time.monotonic() - started, time.process_time() - cpu_started
    sampler.cancel()
    await processor.drain(5.0)
    dispatcher.cancel()
    await asyncio.gather(sampler, dispatcher, return_exceptions=True)
    busy = [value for value in concurrency if value > 0]
    return LayerResult(
        events=settler.count("delete"),
        seconds=seconds,
        cpu_seconds=cpu_seconds,
        violations=sink.violations,
        overlaps=sink.overlaps,
        unexpected=[str(settled) for settled in settler.settled if settled.action != "delete"],
        mean_concurrency=statistics.fmean(busy) if busy else 0.0,
        mean_delivery_seconds=statistics.fmean(sink.durations) if sink.durations else 0.0,
    )


def report_layer(result: LayerResult, total: int, alone: float) -> bool:
    ideal = CONCURRENCY / LATENCY
    throughput = result.events / result.seconds
    print(
        "[1] the ordering layer (the target): real Processor + Lanes + memory idempotency store in\n"
        f"    this process; sink = {LATENCY * 1000:.0f} ms asyncio sleep checking order; settler stand-in\n"
        f"    records deletes; fed 10 messages at a time, at most {4 * CONCURRENCY} in hand"
    )
    print(_common.figure_line("events settled (deleted) / submitted", f"{result.events} / {total}"))
    print(_common.figure_line("events per second", f"{throughput:,.0f}"))
    print(
        _common.ratio_line(
            f"throughput / ({CONCURRENCY} / {LATENCY * 1000:.0f} ms = {ideal:,.0f}/s)",
            throughput / ideal,
            target=">= 0.9",
        )
    )
    print(_common.figure_line("ordering violations", str(result.violations)))
    print(_common.figure_line("two events of one conversation in the sink at once", str(result.overlaps)))
    print(_common.figure_line("retried / given back / dead-lettered", str(len(result.unexpected))))
    print(_common.figure_line("mean concurrent deliveries (while any)", f"{result.mean_concurrency:.1f}"))
    print(
        _common.figure_line(
            "mean time per delivery (20 ms asked)", f"{result.mean_delivery_seconds * 1000:.1f} ms"
        )
    )
    share = result.cpu_seconds / result.seconds
    print(_common.figure_line("CPU share of one core (this process)", f"{share:.0%}"))
    per_event = result.cpu_seconds / max(result.events, 1) * 1e6
    print(
        _common.figure_line("CPU per event (decode, lanes, store, telemetry, tasks)", f"{per_event:.0f} us")
    )
    print(
        _common.ratio_line(
            f"ceiling: the sink alone, {CONCURRENCY} bare tasks / {ideal:,.0f}/s", alone / ideal
        )
    )
    print(_common.ratio_line("ordering layer / that ceiling", throughput / alone))
    for line in result.unexpected[:5]:
        print(f"    unexpected: {line}")
    return (
        result.violations == 0 and result.overlaps == 0 and not result.unexpected and result.events == total
    )


# ------------------------------------------------------------------------- 2. end to end
async def end_to_end(conversations: int, bodies: list[str]) -> bool:
    ideal = CONCURRENCY / LATENCY
    with _common.aws_endpoint():
        async with _common.sqs_client() as sqs, webhook.WebhookSimulator(latency=LATENCY) as receiver:
            moto = moto_pid()
            # The ceiling: the same traffic through a bare loop, on a queue of its own.
            ceiling_queue = await _common.make_queue(sqs, "ordering-ceiling")
            ceiling = await bare_drain(sqs, ceiling_queue, bodies[: len(bodies) // 5])

            queue_url = await _common.make_queue(sqs, "ordering", visibility=60)
            spec = {
                "queue": {
                    "url": queue_url,
                    "waitTimeSeconds": 1,
                    "maxMessages": 10,
                    "visibilityTimeoutSeconds": 60,
                    "pollers": POLLERS,
                    "maxInFlight": 4 * CONCURRENCY,
                },
                "sink": {
                    "type": "webhook",
                    "url": f"{receiver.url}/events",
                    "maxConcurrency": CONCURRENCY,
                    "timeoutSeconds": 10,
                },
                "ordering": {"key": "conversationId"},
                "workload": {"logLevel": "WARNING"},
            }
            worker = _common.WorkerProcess(_common.write_manifest(spec, "ordering"), name="ordering")
            with worker:
                worker.wait_ready()
                cpu_before = {
                    "moto": cpu_of(moto),
                    "worker": worker.cpu_seconds(),
                    "here": time.process_time(),
                }
                started = time.monotonic()
                await _common.feed(sqs, queue_url, bodies, max_backlog=MAX_BACKLOG)
                deadline = time.monotonic() + 120
                while len({item.event_id for item in receiver.accepted}) < len(bodies):
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"not all delivered within 120 s; see {worker.log_path}")
                    await asyncio.sleep(0.05)
                wall = time.monotonic() - started
                cpu = {
                    "moto": cpu_of(moto) - cpu_before["moto"],
                    "worker": worker.cpu_seconds() - cpu_before["worker"],
                    "here": time.process_time() - cpu_before["here"],
                }
            accepted = receiver.accepted
            first, last = accepted[0].received_at, accepted[-1].received_at
            throughput = len(accepted) / max(last - first, 1e-9)
            violations = receiver.order_violations()
            duplicates = receiver.duplicates()

    print(
        "[2] end to end through SQS (not the target: moto sets the pace): fanout-worker child process,\n"
        f"    moto SQS, webhook receiver taking {LATENCY * 1000:.0f} ms, {POLLERS} pollers"
    )
    print(_common.figure_line("events delivered per second", f"{throughput:,.0f}"))
    print(
        _common.ratio_line(
            f"throughput / ({CONCURRENCY} / {LATENCY * 1000:.0f} ms = {ideal:,.0f}/s)", throughput / ideal
        )
    )
    print(_common.figure_line("ordering violations seen by the receiver", str(len(violations))))
    print(_common.figure_line("events delivered twice", str(sum(n - 1 for n in duplicates.values()))))
    print(_common.figure_line("most concurrent requests at the receiver", str(receiver.max_in_flight)))
    print(
        _common.figure_line(
            "ceiling: bare receive+delete loop on the same moto (events/s)", f"{ceiling:,.0f}"
        )
    )
    print(_common.ratio_line("worker throughput / that ceiling", throughput / ceiling))
    for name, label in (("moto", "moto server"), ("worker", "fanout-worker"), ("here", "receiver + feeder")):
        print(_common.figure_line(f"CPU share of one core: {label}", f"{cpu[name] / wall:.0%}"))
    per_cpu_second = len(bodies) / cpu["worker"]
    print(
        _common.figure_line("worker events per CPU-second (one process's ceiling)", f"{per_cpu_second:,.0f}")
    )
    print(
        f"  limits: SQS here is one moto process that hands out ~{ceiling:,.0f} events/s to a bare loop; "
        f"one worker process would need {ideal / per_cpu_second:.1f} cores' worth of CPU for {ideal:,.0f}/s"
    )
    return not violations


async def run(conversations: int, *, end_to_end_too: bool) -> int:
    bodies = traffic(conversations)
    print(
        f"bench/ordering.py: {conversations} conversations x {EVENTS_PER_CONVERSATION} events, "
        f"{LATENCY * 1000:.0f} ms per delivery, maxConcurrency {CONCURRENCY}"
    )
    # First, alone on the machine: nothing else of this benchmark is running yet.
    layer = await ordering_layer(bodies, max_in_flight=4 * CONCURRENCY)
    alone = await sink_alone(len(bodies))
    ok = report_layer(layer, len(bodies), alone)
    if end_to_end_too:
        ok = await end_to_end(conversations, bodies) and ok
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conversations", type=int, default=500)
    parser.add_argument("--skip-end-to-end", action="store_true", help="measure the ordering layer only")
    args = parser.parse_args()
    return asyncio.run(run(args.conversations, end_to_end_too=not args.skip_end_to_end))


if __name__ == "__main__":
    sys.exit(main())
