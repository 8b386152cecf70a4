"""Ordered throughput: 500 conversations through one worker, 20 ms per delivery, 64 at once.

The ideal for a sink with 20 ms latency and ``maxConcurrency: 64`` is 64 / 0.020 s =
3,200 events per second, reached only if the per-conversation lanes always have 64
different conversations ready. The benchmark feeds 500 conversations of ten events
(round by round — every conversation's next event — so each conversation's events enter
the queue in order, keeping the visible backlog bounded: the moto server scans the whole
queue for every message it moves) into a queue consumed by ``fanout-worker`` (a child
process, the real CLI), delivering to a webhook receiver that takes 20 ms per request and
records the order it accepted events in. It prints:

* throughput / 3,200 (target >= 0.9) and the ordering violations the receiver saw (0);
* what held it back, measured in the same run: the CPU share of the moto server, of the
  worker and of this process (receiver + feeder), a bare receive-and-delete loop's
  throughput on the same moto server (the most SQS hands any consumer here), and the
  worker's events per CPU-second (the most one worker process could do on one core).

    .venv/bin/python bench/ordering.py [--conversations 500]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import pathlib
import sys
import time
from typing import Any

import _common

from workers import events
from workers.simulators import genesys, webhook

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


async def run(conversations: int) -> int:
    bodies = traffic(conversations)
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
        f"bench/ordering.py: {conversations} conversations x {EVENTS_PER_CONVERSATION} events, "
        f"{LATENCY * 1000:.0f} ms per delivery, maxConcurrency {CONCURRENCY}, {POLLERS} pollers"
    )
    print(_common.figure_line("events delivered per second", f"{throughput:,.0f}"))
    print(
        _common.ratio_line(
            f"throughput / ({CONCURRENCY} / {LATENCY * 1000:.0f} ms = {ideal:,.0f}/s)",
            throughput / ideal,
            target=">= 0.9",
        )
    )
    print(_common.figure_line("ordering violations seen by the receiver", str(len(violations))))
    print(_common.figure_line("events delivered twice", str(sum(n - 1 for n in duplicates.values()))))
    print(_common.figure_line("most concurrent requests at the receiver", str(receiver.max_in_flight)))
    print(_common.figure_line("bare receive+delete loop on the same moto (events/s)", f"{ceiling:,.0f}"))
    print(_common.ratio_line("worker throughput / bare loop throughput", throughput / ceiling))
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
    return 0 if not violations else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conversations", type=int, default=500)
    args = parser.parse_args()
    return asyncio.run(run(args.conversations))


if __name__ == "__main__":
    sys.exit(main())
