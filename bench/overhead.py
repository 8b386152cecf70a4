"""Worker CPU per event against a bare loop doing the same I/O on the same endpoints.

Every variant runs as a child process and are measured from outside (``/proc/<pid>/stat``,
user + system CPU) over the same traffic: N Genesys events in EventBridge envelopes, fed
into a fresh queue on the moto server while the variant runs, each delivered to the same
zero-latency HTTP receiver running in a third process (its CPU is not counted).

* **bare loop** — aiobotocore ``ReceiveMessage`` (same arguments as the worker) →
  ``json.loads`` → one httpx ``POST`` per event → ``DeleteMessageBatch``; nothing else.
  This is the baseline of the target ratio.
* **bare loop, worker's HTTP transport** — the same loop with its httpx client on the
  transport the worker's sinks use (:class:`workers.sinks.transport.PooledTransport`,
  httpx's pool on plain asyncio sockets, much cheaper than httpx's default). The worker
  beating the bare loop says little by itself; against this variant the ratio is what the
  worker costs beyond the same I/O done the same way.
* **fanout-worker** — the real CLI, as deployed without an OTLP collector: decode, filter,
  order, deduplicate, limiter, metrics, one JSON log line per state change (INFO), batched
  settling; no OTLP endpoint is set, so no span is recorded (process spans pass the
  producer's context on). With an endpoint the SDK records and exports spans: ~80 us more
  per event, measured in-process (not here: it would need a collector).
* **fanout-worker, quiet** — the same at log level WARNING: what the INFO lines cost.

Prints events per CPU-second of each, the ratio worker / bare loop (target: at most 1.3),
and the worker against the bare loop on the worker's transport.

    .venv/bin/python bench/overhead.py [--events N]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from typing import Any

import _common
import aiobotocore.config
import aiobotocore.session
import httpx

from fanout_lab.simulators import genesys
from workers import events
from workers.sinks import transport

POLLERS = 2
WAIT_SECONDS = 1
MAX_BACKLOG = 60


# ------------------------------------------------------------------------ the bare loop
async def bare_loop(queue_url: str, endpoint: str, *, pooled: bool) -> None:
    """The baseline, run in its own process: receive → json.loads → POST → delete.

    ``pooled``: the httpx client runs on the worker's sink transport instead of httpx's default.
    """
    session = aiobotocore.session.get_session()
    config = aiobotocore.config.AioConfig(max_pool_connections=POLLERS + 10)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    limits = httpx.Limits(max_connections=2 * 10)
    async with (
        session.create_client("sqs", config=config) as sqs,
        httpx.AsyncClient(
            limits=limits, transport=transport.PooledTransport(limits=limits) if pooled else None
        ) as http,
    ):

        async def post(message: dict[str, Any]) -> None:
            event = json.loads(message["Body"])
            reply = await http.post(endpoint, json=event)
            reply.raise_for_status()

        async def poll() -> None:
            while True:
                reply = await sqs.receive_message(
                    QueueUrl=queue_url,
                    MaxNumberOfMessages=10,
                    WaitTimeSeconds=WAIT_SECONDS,
                    MessageSystemAttributeNames=["All"],
                    MessageAttributeNames=["All"],
                )
                messages = reply.get("Messages", [])
                if not messages:
                    continue
                await asyncio.gather(*(post(message) for message in messages))
                await sqs.delete_message_batch(
                    QueueUrl=queue_url,
                    Entries=[
                        {"Id": str(index), "ReceiptHandle": message["ReceiptHandle"]}
                        for index, message in enumerate(messages)
                    ],
                )

        pollers = [asyncio.create_task(poll()) for _ in range(POLLERS)]
        print("ready", flush=True)
        await stop.wait()
        for task in pollers:
            task.cancel()
        await asyncio.gather(*pollers, return_exceptions=True)


# ------------------------------------------------------------------------------ measuring
def traffic(count: int) -> list[str]:
    generator = genesys.Generator(seed=7)
    bodies: list[str] = []
    for event in generator.day(conversations=(count + 9) // 10):
        bodies.append(generator.body(event, events.EnvelopeKind.EVENTBRIDGE))
    return bodies[:count]


def worker_spec(queue_url: str, endpoint: str, *, quiet: bool) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "queue": {
            "url": queue_url,
            "waitTimeSeconds": WAIT_SECONDS,
            "maxMessages": 10,
            "visibilityTimeoutSeconds": 30,
            "pollers": POLLERS,
            "maxInFlight": 100,
        },
        "sink": {"type": "webhook", "url": endpoint, "maxConcurrency": 2 * 10, "timeoutSeconds": 10},
        "idempotency": {"store": "memory", "ttlSeconds": 3600},
    }
    if quiet:
        spec["workload"] = {"logLevel": "WARNING"}
    return spec


async def measure(
    name: str, child: _common.Child, sqs: Any, queue_url: str, receiver: _common.Receiver, bodies: list[str]
) -> tuple[float, float]:
    """(CPU seconds, wall seconds) the child spent on ``bodies``, from first send to empty queue.

    SQS is at-least-once (moto, like SQS, now and then hands one message to two concurrent
    receives): the bare loop may POST an event twice, which only makes it look slower.
    """
    answered = receiver.stats()["answered"]
    cpu_before = child.cpu_seconds()
    started = time.monotonic()
    await _common.feed(sqs, queue_url, bodies, max_backlog=MAX_BACKLOG)
    deadline = time.monotonic() + 120
    while receiver.stats()["answered"] < answered + len(bodies) or await _common.queue_counts(
        sqs, queue_url
    ) != (0, 0):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name}: not done within 120 s; see {child.log_path}")
        await asyncio.sleep(0.05)
    cpu = child.cpu_seconds() - cpu_before
    wall = time.monotonic() - started
    return cpu, wall


BARE = "bare loop"
BARE_POOLED = "bare loop, worker's HTTP transport"
VARIANTS = (BARE, BARE_POOLED, "fanout-worker", "fanout-worker, quiet")


def start_variant(name: str, index: int, queue_url: str, receiver: _common.Receiver) -> _common.Child:
    if name in (BARE, BARE_POOLED):
        command = [sys.executable, __file__, "--bare-loop", queue_url, receiver.url]
        if name == BARE_POOLED:
            command.append("--pooled")
        child = _common.Child(command, log_name=f"bare-loop-{index}")
        if child.read_line() != "ready":
            raise RuntimeError(f"bare loop did not start; see {child.log_path}")
        return child
    quiet = name.endswith("quiet")
    manifest = _common.write_manifest(worker_spec(queue_url, receiver.url, quiet=quiet), f"overhead-{index}")
    worker = _common.WorkerProcess(manifest, name=f"overhead-{index}")
    worker.wait_ready()
    return worker


async def run(count: int, rounds: int) -> int:
    """Every variant runs all the time; rounds take turns, so a busy moment of the machine
    (other processes on the same cores) falls on all variants alike."""
    bodies = traffic(count)
    chunk = (len(bodies) + rounds - 1) // rounds
    cpu = dict.fromkeys(VARIANTS, 0.0)
    wall = dict.fromkeys(VARIANTS, 0.0)
    per_round: list[float] = []
    with contextlib.ExitStack() as stack:
        stack.enter_context(_common.aws_endpoint())
        receiver = stack.enter_context(_common.Receiver())
        async with _common.sqs_client() as sqs:
            children: dict[str, tuple[_common.Child, str]] = {}
            for index, name in enumerate(VARIANTS):
                queue_url = await _common.make_queue(sqs, f"overhead-{index}")
                child = stack.enter_context(start_variant(name, index, queue_url, receiver))
                children[name] = (child, queue_url)
            for round_index in range(rounds):
                part = bodies[round_index * chunk : (round_index + 1) * chunk]
                spent: dict[str, float] = {}
                for name in VARIANTS:
                    child, queue_url = children[name]
                    spent[name], seconds = await measure(name, child, sqs, queue_url, receiver, part)
                    cpu[name] += spent[name]
                    wall[name] += seconds
                per_round.append(spent["fanout-worker"] / spent[BARE])

    print(
        f"bench/overhead.py — {count} events per variant in {rounds} rounds; moto SQS; "
        "zero-latency receiver in another process"
    )
    for name in VARIANTS:
        label = f"{name}: events per CPU-second ({cpu[name]:.2f} CPU s, {wall[name]:.1f} s wall)"
        print(_common.figure_line(label, f"{count / cpu[name]:,.0f}"))
    bare = cpu[BARE]
    ratio = cpu["fanout-worker"] / bare
    print(_common.ratio_line("worker CPU per event / bare loop CPU per event", ratio, target="<= 1.3"))
    print(_common.figure_line("  the same, round by round", " ".join(f"{value:.2f}" for value in per_round)))
    quiet = cpu["fanout-worker, quiet"] / bare
    print(_common.ratio_line("quiet worker (WARNING logs) / bare loop", quiet))
    print(_common.ratio_line("bare loop on the worker's transport / bare loop", cpu[BARE_POOLED] / bare))
    print(
        _common.ratio_line(
            "worker / bare loop on the worker's transport", cpu["fanout-worker"] / cpu[BARE_POOLED]
        )
    )
    print(
        "  (the worker's sinks send through PooledTransport; the second ratio is what the worker\n"
        "   costs beyond the same receive/POST/delete done on the same HTTP transport)"
    )
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--bare-loop", nargs=2, metavar=("QUEUE_URL", "ENDPOINT"), help=argparse.SUPPRESS)
    parser.add_argument("--pooled", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare_loop:
        asyncio.run(bare_loop(*args.bare_loop, pooled=args.pooled))
        return 0
    return asyncio.run(run(args.events, args.rounds))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    sys.exit(main())
