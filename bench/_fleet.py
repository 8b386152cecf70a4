"""A fleet against one rate-limited webhook: how much of the grant it uses, however the work is spread.

The harness of ``bench/fleet.py`` (1, 3 and 10 replicas), ``bench/fleet_uneven.py`` (one
replica first, no replica count, a late count after a scale-up) and
``bench/fleet_changes.py`` (scale in, a replica replaced, a full outage): three files so
that each stays near a minute. Each takes the same options, and ``--scenario`` names any
scenario of the three.

Every scenario runs replicas as separate processes — ``fanout-worker --config FILE``,
exactly as a user runs it — with DEFAULT settings: the manifest holds only the queue URL,
the sink URL and ``rateLimit: {requestsPerSecond: R, burst: B}``. The downstream is a
:class:`fanout_lab.simulators.webhook.WebhookSimulator` in its own process that grants R
requests per second with a burst of B and answers 429 + ``Retry-After`` (whole seconds)
above that. N events are queued as the scenario starts; a timeline starts replicas, sends
one of them SIGTERM (it drains and exits), rewrites the replica count a replica reads
(``FANOUT_REPLICAS_FILE``, as the operator's ConfigMap does — possibly late, possibly
wrong) and switches the downstream off (every request answered 503) and on.

Each scenario runs twice on the same moto server, against two simulators — the replicas of
both start together, then they take turns (two fleets working side by side on two cores
measure the machine, not the fleets): **fanout** (the worker as shipped) and
**per-instance** (the naive baseline: the same
worker runtime whose sink limits itself to ``R / replicas`` with its own token bucket —
what a per-pod limiter gives with KEDA, Lambda reserved concurrency, Spring Cloud AWS or
Shoryuken — and retries a 429 after its Retry-After).

Prints, per scenario and variant: goodput = unique events accepted / (R x busy seconds),
where the busy period runs from the first request to the last event's first acceptance,
tail included, minus the outage (the grant is zero then); the share of requests answered
429; what the run took. A goodput slightly above 1 is the downstream's initial burst (B
requests on top of R x seconds).

    .venv/bin/python bench/fleet.py [--full] [--candidates] [--scenario NAME ...]
                                    [--variant V ...] [--trace]

``--full`` runs the issue's sizes (900 events, 6 replicas too, changes at 12 s, a 20 s
outage); the default (300 events) keeps each file near a minute. ``--candidates`` adds the
designs that were weighed and not shipped (``bench/_candidates.py``). ``--trace`` prints
every second: requests accepted and throttled, the queue, each replica's rate limit (from
its ``/metrics``).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import pathlib
import random
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal

import _candidates
import _common
import aiobotocore.session
import httpx
import yaml

from fanout_core import spec
from fanout_lab import harness
from fanout_lab.simulators import aws, remote
from workers import events, fleet, running
from workers.sinks import base
from workers.sinks import webhook as webhook_sink

RATE = 30.0
BURST = 10
LATENCY_SECONDS = 0.01
RAMP_SECONDS = 3.0
START_TIMEOUT = 90.0

Action = Literal["start", "sigterm", "tell", "outage", "recover"]


@dataclasses.dataclass(frozen=True)
class Step:
    """At ``at`` seconds after the scenario starts, do ``action`` (to ``replica``)."""

    at: float
    action: Action
    replica: int = 0
    count: int = 0
    """For ``start`` and ``tell``: the replica count the replica reads."""


@dataclasses.dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    steps: tuple[Step, ...]

    @property
    def outage_seconds(self) -> float:
        starts = [step.at for step in self.steps if step.action == "outage"]
        ends = [step.at for step in self.steps if step.action == "recover"]
        return sum(end - start for start, end in zip(starts, ends, strict=True))


def _all(replicas: int, *, told: int | None = None) -> tuple[Step, ...]:
    count = replicas if told is None else told
    return tuple(Step(0.0, "start", index, count) for index in range(replicas))


def scenarios(full: bool) -> list[Scenario]:
    """The timeline of each scenario; ``full`` stretches them to the issue's sizes."""
    change = 12.0 if full else 4.0
    outage = 20.0 if full else 6.0
    lag = 6.0
    return [
        Scenario("one", "1 replica", _all(1)),
        Scenario("three", "3 replicas", _all(3)),
        *([Scenario("six", "6 replicas", _all(6))] if full else []),
        Scenario("ten", "10 replicas", _all(10)),
        Scenario(
            "head-start",
            "3 replicas, two start 2 s after the first (which finds the whole backlog)",
            (Step(0, "start", 0, 3), Step(2, "start", 1, 3), Step(2, "start", 2, 3)),
        ),
        Scenario(
            "scale-up",
            f"1 → 3 replicas at {change:g} s; the first reads the new count {lag:g} s late",
            (
                Step(0, "start", 0, 1),
                Step(change, "start", 1, 3),
                Step(change, "start", 2, 3),
                Step(change + lag, "tell", 0, 3),
            ),
        ),
        Scenario(
            "scale-in",
            f"3 → 2 replicas at {change:g} s (SIGTERM); the others read the new count {lag:g} s late",
            (
                *_all(3),
                Step(change, "sigterm", 2),
                Step(change + lag, "tell", 0, 2),
                Step(change + lag, "tell", 1, 2),
            ),
        ),
        Scenario(
            "sigterm",
            f"3 replicas, one replaced at {change:g} s (SIGTERM; the new process starts at once)",
            (*_all(3), Step(change, "sigterm", 2), Step(change, "start", 3, 3)),
        ),
        Scenario(
            "count-missing",
            "3 replicas, no replica count (no file, FANOUT_REPLICAS missing)",
            _all(3, told=0),
        ),
        Scenario(
            "outage",
            f"3 replicas; the webhook answers 503 for {outage:g} s from {change:g} s",
            (*_all(3), Step(change, "outage"), Step(change + outage, "recover")),
        ),
    ]


# ---------------------------------------------------------------------------------- variants
class PerInstanceSink(_common.Unlimited):
    """The naive baseline: ``R / replicas`` per instance (read at start), retry on 429.

    A token bucket per replica, as a per-pod limiter (aiolimiter, Resilience4j,
    Shoryuken's throttling) gives; a throttled or failed request is a retry after the
    Retry-After (or 1 s), decided per request — nothing slows down the other requests. It
    holds up to ``maxInFlight``, as a worker without a budget that follows its rate does.
    """

    def __init__(self, sink: spec.SinkSpec, replicas: fleet.Replicas) -> None:
        assert sink.rate_limit is not None
        count = replicas.current()
        self._rate = sink.rate_limit.requests_per_second / count
        self._burst = max(1, sink.rate_limit.burst // count)
        self._tokens = float(self._burst)
        self._at = time.monotonic()
        self._lock = asyncio.Lock()
        self._url = sink.url
        self._client = httpx.AsyncClient(timeout=sink.timeout_seconds)

    @property
    def name(self) -> str:
        return "per-instance"

    async def _token(self) -> None:
        async with self._lock:
            while True:
                now = time.monotonic()
                self._tokens = min(float(self._burst), self._tokens + (now - self._at) * self._rate)
                self._at = now
                if self._tokens >= 1.0:
                    self._tokens -= 1.0
                    return
                await asyncio.sleep((1.0 - self._tokens) / self._rate)

    async def deliver(self, event: events.Event, admit: base.Admission | None = None) -> events.Outcome:
        await self._token()
        if admit is not None and not await admit():
            return events.NotSent()
        headers = {"Content-Type": "application/json", "Idempotency-Key": event.event_id}
        try:
            reply = await self._client.post(self._url, content=webhook_sink.encode(event), headers=headers)
        except httpx.HTTPError as error:
            return events.Retry(type(error).__name__)
        if 200 <= reply.status_code < 300:
            return events.Delivered()
        if reply.status_code in (429, 503) or reply.status_code >= 500:
            after = reply.headers.get("Retry-After")
            delay = float(after) if after and after.isdigit() else 1.0
            return events.Retry(f"HTTP {reply.status_code}", delay_seconds=delay, throttled=True)
        return events.Permanent(f"HTTP {reply.status_code}")

    async def aclose(self) -> None:
        await self._client.aclose()


SinkFactory = Callable[[spec.SinkSpec, fleet.Replicas], base.Sink]


@dataclasses.dataclass(frozen=True)
class Variant:
    """How a variant's replicas run: ``fanout-worker`` as shipped (``sink`` None), or the worker
    runtime with another sink; ``coordinate`` every so many seconds (``_candidates``)."""

    name: str
    sink: SinkFactory | None = None
    coordinate: float | None = None


VARIANTS = {
    variant.name: variant
    for variant in (
        Variant("fanout"),
        Variant("per-instance", PerInstanceSink),
        Variant("probe-1%", _candidates.probing(0.01)),
        Variant("probe-10%", _candidates.probing(0.10)),
        Variant("lease", _candidates.LeaseSink),
        Variant("shares-15s", _candidates.probing(0.01), coordinate=15.0),
        Variant("shares-2s", _candidates.probing(0.01), coordinate=2.0),
    )
}
DEFAULT_VARIANTS = ("fanout", "per-instance")
CANDIDATES = ("probe-1%", "probe-10%", "lease", "shares-15s", "shares-2s")


class Replica:
    """One replica process and the file it reads its replica count from."""

    def __init__(self, variant: str, config: pathlib.Path, count: int, name: str, lease_key: str) -> None:
        """``count`` 0: no count at all (no file, no ``FANOUT_REPLICAS``)."""
        folder = pathlib.Path(tempfile.mkdtemp(prefix="fanout-bench-"))
        self.count_file = folder / "replicas"
        self.stats_file = folder / "stats.json"
        if count:
            self.tell(count)
        env = {
            fleet.REPLICAS_FILE_ENV: str(self.count_file),
            _candidates.STATS_ENV: str(self.stats_file),
            _candidates.LEASE_KEY_ENV: lease_key,
        }
        if VARIANTS[variant].sink is None:
            self.process: _common.Child = _common.WorkerProcess(config, env=env, name=name)
            self.http_port = self.process.http_port  # type: ignore[attr-defined]
        else:
            self.http_port = aws.free_port()
            command = [sys.executable, str(pathlib.Path(__file__)), "replica", "--variant", variant]
            command += ["--config", str(config), "--http-port", str(self.http_port)]
            self.process = _common.Child(command, env=env, log_name=name)

    def tell(self, count: int) -> None:
        """Rewrite the count file (a new file moved in place, as a ConfigMap update is)."""
        fresh = self.count_file.with_suffix(".new")
        fresh.write_text(f"{count}\n")
        os.replace(fresh, self.count_file)

    async def started(self, client: httpx.AsyncClient) -> bool:
        """Its probes answer: it is polling (``/readyz`` waits for a first receive, which on an
        empty queue is a whole long poll)."""
        try:
            reply = await client.get(f"http://127.0.0.1:{self.http_port}/healthz", timeout=1)
        except httpx.HTTPError:
            return False
        return reply.status_code == 200

    async def rate(self, client: httpx.AsyncClient) -> float | None:
        try:
            reply = await client.get(f"http://127.0.0.1:{self.http_port}/metrics", timeout=1)
        except httpx.HTTPError:
            return None
        for line in reply.text.splitlines():
            if line.startswith("fanout_sink_rate_limit{"):
                return float(line.rsplit(" ", 1)[1])
        return None

    def alive(self) -> bool:
        return self.process.process.poll() is None

    def sigterm(self) -> None:
        if self.alive():
            self.process.process.send_signal(signal.SIGTERM)

    def stats(self) -> dict[str, float]:
        """What a candidate's replica counted (written when it stopped), or nothing."""
        try:
            loaded: dict[str, float] = json.loads(self.stats_file.read_text())
        except (OSError, ValueError):
            return {}
        return loaded

    def stop(self) -> None:
        self.process.stop()


# ------------------------------------------------------------------------------------ a run
@dataclasses.dataclass(frozen=True)
class Outcome:
    scenario: str
    variant: str
    unique: int
    events: int
    busy_seconds: float
    after_ramp: int
    """Events first accepted more than :data:`RAMP_SECONDS` after the first request."""
    outage_seconds: float
    requests: int
    throttled: int
    duplicates: int
    finished: bool
    store_requests_per_second: float | None = None
    """lease: DynamoDB requests per second of the run, the whole fleet."""

    @property
    def goodput(self) -> float:
        granted = self.busy_seconds - self.outage_seconds
        return self.unique / (RATE * granted) if granted > 0 else 0.0

    @property
    def goodput_after_ramp(self) -> float:
        """The issue's first measure: the first :data:`RAMP_SECONDS` left out."""
        granted = self.busy_seconds - self.outage_seconds - RAMP_SECONDS
        return self.after_ramp / (RATE * granted) if granted > 0 else 0.0

    @property
    def throttled_share(self) -> float:
        return self.throttled / self.requests if self.requests else 0.0


def manifest(queue_url: str, sink_url: str, name: str) -> dict[str, Any]:
    """DEFAULT settings: only what cannot have a default, and the downstream's limit."""
    return {
        "apiVersion": "fanout.dev/v1alpha1",
        "kind": "FanoutConsumer",
        "metadata": {"name": name},
        "spec": {
            "queue": {"url": queue_url},
            "sink": {
                "type": "webhook",
                "url": sink_url,
                "rateLimit": {"requestsPerSecond": RATE, "burst": BURST},
            },
        },
    }


def traffic(count: int) -> list[str]:
    """``count`` Genesys events in EventBridge envelopes, conversations of ten, interleaved."""
    return harness.interleaved_bodies(count)


async def enqueue(sqs: Any, url: str, bodies: Sequence[str]) -> None:
    for start in range(0, len(bodies), 10):
        entries = [{"Id": str(n), "MessageBody": body} for n, body in enumerate(bodies[start : start + 10])]
        await sqs.send_message_batch(QueueUrl=url, Entries=entries)


@dataclasses.dataclass
class Fleet:
    """One variant's run of one scenario: its downstream, queue, manifest and replicas."""

    scenario: Scenario
    variant: str
    sim: remote.WebhookProcess
    control: httpx.AsyncClient
    queue_url: str
    config: pathlib.Path
    replicas: dict[int, Replica] = dataclasses.field(default_factory=dict)

    def start(self, step: Step) -> None:
        name = f"{self.scenario.name}-{self.variant}-{step.replica}"
        lease_key = self.queue_url.rsplit("/", 1)[-1]
        self.replicas[step.replica] = Replica(self.variant, self.config, step.count, name, lease_key)

    async def apply(self, step: Step) -> None:
        if step.action == "start":
            self.start(step)
        elif step.action == "sigterm":
            self.replicas[step.replica].sigterm()
        elif step.action == "tell":
            self.replicas[step.replica].tell(step.count)
        else:
            await self.sim.set_outage(self.control, step.action == "outage")

    async def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while not all([await replica.started(self.control) for replica in self.replicas.values()]):
            for replica in self.replicas.values():
                if not replica.alive():
                    raise RuntimeError(f"a replica exited; see {replica.process.log_path}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"replicas not ready within {START_TIMEOUT:g} s")
            await asyncio.sleep(0.1)


async def run_scenario(
    sqs: Any,
    scenario: Scenario,
    variant: str,
    bodies: list[str],
    *,
    timeout: float,
    trace: bool,
    turn: asyncio.Lock,
) -> Outcome:
    with remote.WebhookProcess(rate=RATE, burst=BURST, latency=LATENCY_SECONDS) as sim:
        async with httpx.AsyncClient(timeout=10) as control:
            name = f"fleet-{scenario.name}-{variant.replace('%', 'pct')}-{random.randrange(10**6)}"
            queue_url = await _common.make_queue(sqs, name)
            config = pathlib.Path(tempfile.mkdtemp(prefix="fanout-bench-")) / "consumer.yaml"
            config.write_text(yaml.safe_dump(manifest(queue_url, sim.url + "/events", name)))
            run = Fleet(scenario, variant, sim, control, queue_url, config)
            try:
                outcome = await _run(sqs, run, bodies, timeout, trace, turn)
            finally:
                for replica in run.replicas.values():
                    replica.stop()
    counted = [replica.stats() for replica in run.replicas.values()]
    requests = sum(stats.get("requests", 0.0) for stats in counted)
    if not requests:
        return outcome
    seconds = max(stats.get("seconds", 0.0) for stats in counted)
    return dataclasses.replace(outcome, store_requests_per_second=requests / seconds if seconds else None)


async def _run(
    sqs: Any, run: Fleet, bodies: list[str], timeout: float, trace: bool, turn: asyncio.Lock
) -> Outcome:
    """Start the replicas, then (one variant at a time: ``turn``) queue the events and play
    the timeline until every event was accepted."""
    pending = sorted(run.scenario.steps, key=lambda step: step.at)
    while pending and pending[0].at <= 0:
        run.start(pending.pop(0))
    await run.wait_ready()
    async with turn:
        return await _measure(sqs, run, pending, bodies, timeout, trace)


async def _measure(
    sqs: Any, run: Fleet, pending: list[Step], bodies: list[str], timeout: float, trace: bool
) -> Outcome:
    started = time.monotonic()
    feeding = asyncio.create_task(enqueue(sqs, run.queue_url, bodies))
    every = VARIANTS[run.variant].coordinate
    coordinator = (
        asyncio.create_task(_candidates.coordinate(run.replicas, every, run.control))  # type: ignore[arg-type]
        if every is not None
        else None
    )
    deadline = started + timeout
    traced = (started, 0, 0)
    stats = await run.sim.stats(run.control)
    while time.monotonic() < deadline and stats.unique < len(bodies):
        while pending and pending[0].at <= time.monotonic() - started:
            await run.apply(pending.pop(0))
        if trace and time.monotonic() - traced[0] >= 1.0:
            traced = await _trace(sqs, run, stats, started, traced)
        await asyncio.sleep(0.1)
        stats = await run.sim.stats(run.control)
    ended = time.monotonic()
    if coordinator is not None:
        coordinator.cancel()
    await feeding
    await run.sim.set_outage(run.control, False)
    stats = await run.sim.stats(run.control, full=True)
    finished = stats.unique >= len(bodies)
    first_seen = stats.first_accepted
    first_request = stats.first_request if stats.first_request is not None else ended
    last = max(first_seen.values()) if finished else ended
    return Outcome(
        scenario=run.scenario.name,
        variant=run.variant,
        unique=len(first_seen),
        events=len(bodies),
        busy_seconds=last - first_request,
        after_ramp=sum(1 for moment in first_seen.values() if moment >= first_request + RAMP_SECONDS),
        outage_seconds=run.scenario.outage_seconds,
        requests=stats.requests,
        throttled=stats.throttled,
        duplicates=stats.accepted - len(first_seen),
        finished=finished,
    )


async def _trace(
    sqs: Any, run: Fleet, stats: remote.WebhookStats, started: float, last: tuple[float, int, int]
) -> tuple[float, int, int]:
    """One line per second: what the downstream saw, the queue, each replica's rate limit."""
    now = time.monotonic()
    visible, in_flight = await _common.queue_counts(sqs, run.queue_url)
    rates = [await replica.rate(run.control) for replica in run.replicas.values()]
    shown = " ".join("  -  " if rate is None else f"{rate:5.1f}" for rate in rates)
    print(
        f"    {run.variant[:6]} t={now - started:5.1f}"
        f" ok/s={(stats.accepted - last[1]) / (now - last[0]):5.1f}"
        f" 429={stats.throttled - last[2]:<3} queue={visible}+{in_flight:<4} rates={shown}",
        flush=True,
    )
    return now, stats.accepted, stats.throttled


async def run(args: argparse.Namespace) -> list[Outcome]:
    chosen = [item for item in scenarios(args.full) if not args.scenario or item.name in args.scenario]
    bodies = traffic(args.events)
    results: list[Outcome] = []
    if "lease" in args.variant:
        async with aiobotocore.session.get_session().create_client("dynamodb") as dynamodb:
            await _candidates.create_lease_table(dynamodb)
    async with _common.sqs_client() as sqs:
        for scenario in chosen:
            timeout = 3 * len(bodies) / RATE + 20 + scenario.outage_seconds
            # The variants' replicas start together (starting is most of the CPU a run costs),
            # then take turns: a fleet measured while another one works beside it on two cores
            # measures the machine (ten replicas: 0.74 of the grant side by side, 0.99 alone).
            turn = asyncio.Lock()
            outcomes = await asyncio.gather(
                *(
                    run_scenario(sqs, scenario, variant, bodies, timeout=timeout, trace=args.trace, turn=turn)
                    for variant in args.variant
                )
            )
            results.extend(outcomes)
            print(f"  {scenario.title}")
            for outcome in outcomes:
                print(_line(outcome), flush=True)
    return results


def _line(outcome: Outcome) -> str:
    mark = "" if outcome.finished else f"  (unfinished: {outcome.unique}/{outcome.events})"
    if outcome.store_requests_per_second is not None:
        mark += f"  DynamoDB {outcome.store_requests_per_second:.1f} req/s"
    return _common.figure_line(
        f"  {outcome.variant:<13} goodput / 429 share",
        f"{outcome.goodput:5.3f} / {outcome.throttled_share:6.2%}   ({outcome.requests} requests,"
        f" {outcome.busy_seconds:.1f} s, after {RAMP_SECONDS:g} s {outcome.goodput_after_ramp:5.3f}){mark}",
    )


def replica_main(argv: Sequence[str]) -> None:
    """A baseline or candidate replica: the worker runtime with that sink; SIGTERM drains."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--variant", choices=[name for name, v in VARIANTS.items() if v.sink], required=True)
    parser.add_argument("--config", required=True)
    parser.add_argument("--http-port", type=int, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    consumer = spec.load_manifest(args.config)
    factory = VARIANTS[args.variant].sink
    assert factory is not None
    sink = factory(consumer.spec.sink, fleet.ReplicaCount.from_environment())

    async def serve() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        try:
            await running.Worker(consumer, sink=sink, http_host="127.0.0.1", http_port=args.http_port).run(
                stop
            )
        finally:
            await sink.aclose()

    asyncio.run(serve())


GROUPS = {
    "fleet": ("one", "three", "six", "ten"),
    "fleet_uneven": ("head-start", "count-missing", "scale-up"),
    "fleet_changes": ("scale-in", "sigterm", "outage"),
}


def main(group: str) -> None:
    """One benchmark file: its scenarios, unless ``--scenario`` names others."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="the issue's sizes: 900 events, 20 s outage")
    parser.add_argument("--events", type=int, default=None, help="events queued (default 300; --full 900)")
    parser.add_argument("--scenario", action="append", help="run only these (repeatable)")
    parser.add_argument(
        "--variant", action="append", choices=list(VARIANTS), help="default: fanout and per-instance"
    )
    parser.add_argument(
        "--candidates", action="store_true", help="also: " + ", ".join(CANDIDATES).replace("%", "%%")
    )
    parser.add_argument("--trace", action="store_true", help="print each second of each run")
    args = parser.parse_args()
    args.scenario = args.scenario or list(GROUPS[group])
    args.events = args.events or (900 if args.full else 300)
    args.variant = args.variant or [*DEFAULT_VARIANTS, *(CANDIDATES if args.candidates else ())]
    started = time.monotonic()
    print(
        f"fleet: webhook grants R={RATE:g} req/s burst B={BURST} (429 above), {LATENCY_SECONDS * 1000:.0f} ms"
        f" latency; N={args.events} events queued; replicas are processes with DEFAULT settings"
    )
    # SIGTERM ends the run like ^C: the replicas, the webhook and moto are stopped on the way out.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    with _common.aws_endpoint(long_queues=True):
        asyncio.run(run(args))
    print(f" (run took {time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    if sys.argv[1:2] == ["replica"]:
        replica_main(sys.argv[2:])
    else:
        print("bench/_fleet.py: the harness of bench/fleet*.py (nothing to measure alone)")
