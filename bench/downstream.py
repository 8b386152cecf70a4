"""Feeding a rate-limited CRM: the limiter against a naive consumer, in the same run.

Three real :class:`workers.running.Worker` replicas (in this process) consume one SQS
queue on the moto server and upsert into one simulated CRM
(:class:`fanout_lab.simulators.crm.CrmSimulator`) that grants ``R`` requests per second with
a burst of ``B`` and answers anything above with 429 + Retry-After. A backlog of ``N``
Genesys events (EventBridge envelopes, conversations of ten events) is fed into the queue
while the replicas run; each phase ends when every event was accepted once (or after a
time bound). Two phases, each against a fresh CRM and queue:

* **fanout** — the ``crm`` sink as deployed: each replica told ``replicas=3`` takes a third
  of the fleet-wide ``rateLimit``; adaptive concurrency, Retry-After pause, circuit.
* **naive** — the same workers with a sink that sends as fast as it is given work and
  retries throttles with exponential backoff and full jitter (what the usual guidance
  recommends), ignoring Retry-After; no limiter.

Each replica holds at most 30 messages (``maxInFlight``, about two seconds of its share):
messages a replica cannot send yet stay in SQS, where a replica with spare share takes
them, instead of waiting behind one replica's limiter while another idles.

Prints, for each: goodput / R (unique events accepted per second over the phase, divided
by the granted rate; 1.0 = every granted request used) and the share of requests
answered 429.

    .venv/bin/python bench/downstream.py [--rate R] [--burst B] [--events N]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import random
import time
from typing import Any

import _common
import httpx

from fanout_core import spec
from fanout_lab import harness
from fanout_lab.simulators import crm
from workers import events, fleet, running
from workers.sinks import base
from workers.sinks import crm as crm_sink

REPLICAS = 3
LATENCY_SECONDS = 0.01
PHASE_TIMEOUT_SECONDS = 25.0
TOKEN_ENV = "FANOUT_BENCH_CRM_TOKEN"
NAIVE_BASE_SECONDS = 0.1
NAIVE_CAP_SECONDS = 5.0
NAIVE_ATTEMPTS = 8


@dataclasses.dataclass(frozen=True)
class PhaseResult:
    name: str
    unique: int
    seconds: float
    requests: int
    throttled: int
    duplicates: int

    def goodput(self, rate: float) -> float:
        return self.unique / self.seconds / rate if self.seconds > 0 else 0.0

    @property
    def throttled_share(self) -> float:
        return self.throttled / self.requests if self.requests else 0.0


class NaiveSink(_common.Unlimited):
    """No limiter: send at once, back off exponentially (full jitter) on any refusal."""

    def __init__(self, sink: spec.SinkSpec) -> None:
        self._fields = sink.crm or spec.CrmSinkSpec()
        self._shape = crm_sink.CrmSink(sink, replicas=fleet.FixedReplicas(1))  # for URLs only
        self._client = httpx.AsyncClient(timeout=sink.timeout_seconds)
        self._random = random.Random(7)

    @property
    def name(self) -> str:
        return "naive"

    async def deliver(self, event: events.Event, admit: base.Admission | None = None) -> events.Outcome:
        if not event.ordering_key:
            return events.Permanent("no external id")
        if admit is not None and not await admit():
            return events.NotSent()
        url = self._shape.upsert_url(event.ordering_key)
        body = json.dumps(crm_sink.map_fields(self._fields, event)).encode()
        headers = {
            "Authorization": f"Bearer {os.environ[TOKEN_ENV]}",
            "Content-Type": "application/json",
            "Idempotency-Key": event.event_id,
        }
        for attempt in range(NAIVE_ATTEMPTS):
            try:
                reply = await self._client.patch(url, content=body, headers=headers)
            except httpx.HTTPError:
                status = 0
            else:
                status = reply.status_code
            if 200 <= status < 300:
                return events.Delivered()
            if 400 <= status < 500 and status not in (403, 429):
                return events.Permanent(f"HTTP {status}")
            await asyncio.sleep(
                self._random.uniform(0, min(NAIVE_CAP_SECONDS, NAIVE_BASE_SECONDS * 2**attempt))
            )
        return events.Retry("gave up after backoff")

    async def aclose(self) -> None:
        await self._client.aclose()
        await self._shape.aclose()


def manifest(queue_url: str, crm_url: str, rate: float, burst: int, name: str) -> spec.FanoutConsumer:
    return spec.parse_manifest(
        {
            "apiVersion": "fanout.dev/v1alpha1",
            "kind": "FanoutConsumer",
            "metadata": {"name": name},
            "spec": {
                "queue": {
                    "url": queue_url,
                    "waitTimeSeconds": 1,
                    "maxMessages": 10,
                    "visibilityTimeoutSeconds": 30,
                    "pollers": 2,
                    "maxInFlight": 30,
                },
                "sink": {
                    "type": "crm",
                    "url": crm_url,
                    "rateLimit": {"requestsPerSecond": rate, "burst": burst},
                    "maxConcurrency": 16,
                    "timeoutSeconds": 5,
                    "crm": {"token": {"env": TOKEN_ENV}},
                },
                "retry": {"baseDelaySeconds": 1, "maxDelaySeconds": 5, "maxAttempts": 50},
            },
        }
    )


def traffic(count: int) -> list[str]:
    """``count`` Genesys events in EventBridge envelopes, conversations of ten, interleaved."""
    return harness.interleaved_bodies(count)


async def phase(name: str, sqs: Any, args: argparse.Namespace, bodies: list[str]) -> PhaseResult:
    async with crm.CrmSimulator(
        rate=args.rate, burst=args.burst, latency=LATENCY_SECONDS, throttle_status=429, retry_after=1
    ) as sim:
        os.environ[TOKEN_ENV] = sim.token
        queue_url = await _common.make_queue(sqs, f"downstream-{name}", visibility=30)
        consumer = manifest(queue_url, sim.url, args.rate, args.burst, f"bench-{name}")
        sinks: list[base.Sink] = [
            crm_sink.CrmSink(consumer.spec.sink, replicas=fleet.FixedReplicas(REPLICAS))
            if name == "fanout"
            else NaiveSink(consumer.spec.sink)
            for _ in range(REPLICAS)
        ]
        workers = [running.Worker(consumer, sink=sink, http_port=None) for sink in sinks]
        stop = asyncio.Event()
        tasks = [asyncio.create_task(worker.run(stop)) for worker in workers]
        feeder = asyncio.create_task(_common.feed(sqs, queue_url, bodies, max_backlog=100))
        deadline = time.monotonic() + PHASE_TIMEOUT_SECONDS
        finished = deadline
        for _ in range(int(PHASE_TIMEOUT_SECONDS / 0.05)):
            if len({item.event_id for item in sim.accepted}) >= len(bodies):
                finished = time.monotonic()
                break
            await asyncio.sleep(0.05)
        stop.set()
        feeder.cancel()
        await asyncio.gather(feeder, *tasks, return_exceptions=True)
        for sink in sinks:
            await sink.aclose()
    first_request = sim.request_times[0] if sim.request_times else finished
    last_accept = max((item.received_at for item in sim.accepted), default=finished)
    unique = len({item.event_id for item in sim.accepted})
    return PhaseResult(
        name=name,
        unique=unique,
        seconds=(last_accept if unique >= len(bodies) else finished) - first_request,
        requests=sim.requests_total,
        throttled=sim.status_counts[429],
        duplicates=sum(count - 1 for count in sim.duplicates().values()),
    )


async def run(args: argparse.Namespace) -> list[PhaseResult]:
    bodies = traffic(args.events)
    results = []
    async with _common.sqs_client() as sqs:
        for name in ("fanout", "naive"):
            results.append(await phase(name, sqs, args, bodies))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=40.0, help="requests per second the CRM grants (R)")
    parser.add_argument("--burst", type=int, default=8, help="burst the CRM grants (B)")
    parser.add_argument("--events", type=int, default=400, help="backlog of events (N)")
    args = parser.parse_args()
    logging.getLogger().setLevel(logging.ERROR)  # pause/resume warnings are expected here
    started = time.monotonic()
    with _common.aws_endpoint():
        results = asyncio.run(run(args))
    print(
        f"downstream: {REPLICAS} worker replicas, CRM grants R={args.rate:g} req/s burst B={args.burst}, "
        f"N={args.events} events, {LATENCY_SECONDS * 1000:.0f} ms latency"
    )
    for result in results:
        label = (
            "fanout (the fleet-wide rateLimit, shared by the work held)"
            if result.name == "fanout"
            else "naive (exp. backoff)"
        )
        print(f" {label}")
        print(
            _common.ratio_line(
                "goodput / R",
                result.goodput(args.rate),
                target=">= 0.95" if result.name == "fanout" else None,
            )
        )
        print(
            _common.ratio_line(
                "share of requests answered 429",
                result.throttled_share,
                target="<= 0.01" if result.name == "fanout" else None,
            )
        )
        print(
            _common.figure_line(
                "events accepted / requests / seconds",
                f"{result.unique}/{result.requests}/{result.seconds:.1f}",
            )
        )
        if result.duplicates:
            print(_common.figure_line("duplicate upserts", str(result.duplicates)))
    print(f" (run took {time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    main()
