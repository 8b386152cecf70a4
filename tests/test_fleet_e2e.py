"""Fleets of real workers sharing one downstream's limit.

Issue 11's acceptance (:func:`test_a_fleet_with_default_settings_uses_the_grant_over_the_whole_busy_period`):
three replicas with DEFAULT settings — the manifest names the queue, the webhook and its
``rateLimit``, nothing else — use at least 90% of what a webhook that answers 429 above its
limit grants over the whole busy period, tail included, with at most 1% of their requests
throttled (bench/fleet*.py carries the 95% figure, on a machine of its own).

Issue 3's acceptance, below: three replicas share one CRM's limit and ride out an outage.

Three :class:`workers.running.Worker` replicas run in this process, each with its own ``crm``
sink told ``replicas=3`` (so each takes a third of the fleet-wide ``rateLimit``), consuming
one SQS queue on the moto server and upserting into one
:class:`~fanout_lab.simulators.crm.CrmSimulator` that grants ``RATE`` requests per second with a
burst of ``BURST`` (429 + Retry-After above that). The fleet shares one DynamoDB idempotency
table. A backlog for the whole measured steady state is queued first, then events are fed at
a steady pace above the granted rate, so there is always work, and the pollers keep taking
the surplus from SQS. One run, three phases:

1. steady state, and the seconds after the outage: goodput >= 90% of the granted rate over
   both (95% in the soak run), <= 1% of requests throttled. The seconds after the outage
   count: each replica must find the CRM back by itself, at its own probe through the
   half-open circuit, and until then its part of the grant is lost;
2. a full outage (every request 503): every replica's circuit opens, only a few probes per
   second reach the CRM, the pollers stop receiving and the backlog waits in SQS;
3. recovery: every event delivered exactly once, the queue and the dead-letter queue empty.
   The feed carries duplicates (new envelope ids, same event), which land on any replica, and
   moto now and then hands one message to two concurrent receives (its receive checks and
   marks visibility without a lock): the shared DynamoDB table is what keeps either from being
   delivered twice, as a memory store could not across replicas.

Queue type. The acceptance test runs on a **standard** queue: goodput is a property of the
sinks' shared limiter and must be measured where the queue is not the bottleneck. On a FIFO
queue a fleet's throughput is also bounded by message groups x group cycle time (SQS hands out
a group's next message only once the previous one is deleted), and moto's FIFO receives are
slower still: measured here, FIFO runs reached 0.65-0.96 of R with no throttling at all. With
a standard queue and several replicas strict order is not guaranteed by design (README: that is
what FIFO queues are for), so order is not asserted there. The FIFO variant (soak) asserts
order per conversation, exactly-once delivery and the outage behaviour, and only reports its
goodput.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import pathlib
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiobotocore.session
import httpx
import pytest
from prometheus_client import parser

from fanout_core import spec as spec_model
from fanout_lab import harness
from fanout_lab.simulators import aws, crm, remote
from workers import fleet, running, sinks, throttling
from workers.sinks import base, exchange
from workers.sinks import crm as crm_sink

# Goodput measured in wall-clock time: run alone, after the parallel phase (make test).
pytestmark = pytest.mark.serial

REPLICAS = 3
RATE = 20.0
"""Low enough for this one process and moto to keep up on a loaded machine: at 30 the steady
window measured 0.89-0.93 at a load average above 5, the workers starved of CPU."""
BURST = 10
"""The fleet benchmarks' downstream's (``bench/_fleet.py``). With a burst of 6 (at 30 requests
per second) 1.0-1.6% of the requests were throttled in six runs at a load average of 2 to 5:
the fleet's buckets together save up to the whole burst (to make up for stalls), which leaves
the CRM's bucket little slack when three workers in this one process stall together."""
FEED_RATE = RATE * 1.5
WARMUP_SECONDS = 1.5
"""From the first request: the sinks start with a full burst and empty lanes."""
STEADY_SECONDS = 7.0
RECOVERY_SECONDS = 4.0
"""Measured after the outage, from its end: the replicas find the CRM back and resume."""
# One poller per replica asking for five messages: while a circuit is half-open its poller may
# take a batch (the probe must come from somewhere), and small batches keep that apart from
# what a poller that ignored the circuit would take from the steady feed.
POLLERS = 1
MAX_MESSAGES = 5


@dataclasses.dataclass(frozen=True)
class Scenario:
    fifo: bool
    conversations: int
    length: int
    outage_seconds: float
    open_seconds: float
    """``circuitOpenSeconds``: how long an open circuit waits before each probe."""
    recovery_timeout: float
    head_start: int = 0
    """Messages queued at once before the feeder's pace begins (``harness.feed_paced``)."""
    max_backlog: int = 200
    """The feeder waits while this many messages are visible (``harness.feed_paced``)."""


@dataclasses.dataclass
class Run:
    """What one fleet run measured."""

    sim: crm.CrmSimulator
    traffic: harness.Traffic
    sent_at: list[float]
    """When the feeder sent each message (``time.monotonic()``)."""
    steady: tuple[float, float]
    outage: tuple[float, float]
    recovery: tuple[float, float]
    circuits_in_outage: list[throttling.CircuitState]
    found_back: list[float]
    """Seconds from the outage's end until each replica's circuit closed (inf: not in the
    recovery window)."""
    received_in_outage: float
    """``fanout_messages_received_total`` growth from one second into the outage to its end."""
    visible_at_outage: tuple[int, int]
    """Visible backlog in SQS when the outage began and when it ended."""
    finished: bool
    left_in_queue: tuple[int, int]
    dead_letters: list[dict[str, Any]]
    duplicates_suppressed: float

    @property
    def goodput(self) -> float:
        """Events accepted per second in the steady window and the recovery window, over the
        granted rate."""
        return self.goodput_in(self.steady, self.recovery)

    def goodput_in(self, *windows: tuple[float, float]) -> float:
        """What the CRM accepted in ``windows`` over what it granted in them: the rate, and its
        burst once (its bucket fills up while it is down, and the fleet may spend it after)."""
        accepted = sum(
            1 for item in self.sim.accepted for start, end in windows if start <= item.received_at < end
        )
        granted = RATE * sum(end - start for start, end in windows)
        return accepted / (granted + (BURST if self.recovery in windows else 0))

    @property
    def throttled_share(self) -> float:
        return self.sim.throttled_count / max(1, self.sim.requests_total)

    @property
    def outage_measured(self) -> tuple[float, float]:
        """The outage without its first second (requests under way, the first failures)."""
        start, end = self.outage
        return start + 1.0, end

    @property
    def probes_per_second(self) -> float:
        start, end = self.outage_measured
        return self.sim.requests_between(start, end) / (end - start)

    @property
    def probes(self) -> int:
        return self.sim.requests_between(*self.outage_measured)

    @property
    def may_receive(self) -> int:
        """What the pollers may take while the circuits are open or half-open.

        Every request that reaches the CRM then is the probe of a half-open circuit, and
        while it is under way that replica's poller may take a batch (the probe must come from
        somewhere); one batch more per replica for a period that straddles the start.
        """
        batch = POLLERS * MAX_MESSAGES
        return batch * self.probes + REPLICAS * batch

    def fed_between(self, start: float, end: float) -> int:
        return sum(1 for moment in self.sent_at if start <= moment < end)

    @property
    def supply(self) -> float:
        """The backlog as each measured window began, over what the grant lets through in it
        (the lesser of the two): the events fed before it (duplicates aside), less those
        accepted before it. Below one, the window measures the feeder, not the fleet."""
        unique = 1.0 - self.traffic.duplicates / max(1, len(self.sent_at))

        def backlog(start: float, end: float) -> float:
            fed = self.fed_between(-math.inf, start) * unique
            before = sum(1 for item in self.sim.accepted if item.received_at < start)
            return (fed - before) / (RATE * (end - start) + BURST)

        return min(backlog(*self.steady), backlog(*self.recovery))

    def summary(self) -> str:
        start, end = self.outage
        return (
            f"goodput/R={self.goodput:.3f} (steady {self.goodput_in(self.steady):.3f},"
            f" after the outage {self.goodput_in(self.recovery):.3f}) supply={self.supply:.2f}"
            f" throttled={self.sim.throttled_count}/{self.sim.requests_total}"
            f" probes/s={self.probes_per_second:.2f} (503s: {self.sim.outage_count})"
            f" received_in_outage={self.received_in_outage:g} (may {self.may_receive},"
            f" fed {self.fed_between(*self.outage_measured)})"
            f" visible={self.visible_at_outage} (fed {self.fed_between(start, end)})"
            f" circuits={[state.name for state in self.circuits_in_outage]}"
            f" found back after {[round(seconds, 2) for seconds in self.found_back]} s"
            f" events={len(self.traffic.events)} duplicates_fed={self.traffic.duplicates}"
            f" suppressed={self.duplicates_suppressed:g} accepted={len(self.sim.accepted)}"
            f" order_violations={len(self.sim.order_violations())}"
        )


@pytest.fixture(scope="module")
def long_queue_moto(moto_server: aws.MotoServer) -> Iterator[aws.MotoServer]:
    """A moto that keeps up with a queue of hundreds of messages (the session's scans the whole
    queue several times per message: 360 queued would make moto, not the fleet, set the pace)."""
    with aws.MotoServer(long_queues=True) as server:
        yield server


@pytest.fixture
async def long_queue_sqs(long_queue_moto: aws.MotoServer) -> AsyncIterator[Any]:
    """An SQS client on it; the workers the test starts meanwhile use it too (the environment)."""
    with aws.environment({"AWS_ENDPOINT_URL": long_queue_moto.endpoint_url}):
        async with aiobotocore.session.get_session().create_client("sqs") as client:
            yield client


@pytest.fixture
async def long_queue_dynamodb(long_queue_moto: aws.MotoServer, long_queue_sqs: Any) -> AsyncIterator[Any]:
    """A DynamoDB client on the same server (its conditional writes made atomic there)."""
    async with aiobotocore.session.get_session().create_client("dynamodb") as client:
        yield client


async def _create_table(dynamodb: Any) -> str:
    """The idempotency table as docs/contracts.md has users create it: partition key ``id`` (S)."""
    name = f"fleet-e2e-{uuid.uuid4().hex[:8]}"
    await dynamodb.create_table(
        TableName=name,
        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
        BillingMode="PAY_PER_REQUEST",
    )
    return name


async def _messages_received(clients: list[httpx.AsyncClient], queue: str) -> float:
    """``fanout_messages_received_total`` for ``queue``, summed over the replicas' /metrics
    (each worker has a registry of its own): the fleet's total."""
    total = 0.0
    for client in clients:
        text = (await client.get("/metrics")).text
        samples = [
            sample
            for family in parser.text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == "fanout_messages_received_total" and sample.labels.get("queue") == queue
        ]
        if not samples:
            raise AssertionError("fanout_messages_received_total not exported")
        total += sum(float(sample.value) for sample in samples)
    return total


async def _run_fleet(sqs: Any, dynamodb: Any, tmp_path: pathlib.Path, scenario: Scenario) -> Run:
    suffix = ".fifo" if scenario.fifo else ""
    name = f"fleet-e2e-{uuid.uuid4().hex[:8]}"
    source = await harness.make_queue(sqs, name + suffix, fifo=scenario.fifo)
    dead = await harness.make_queue(sqs, name + "-dlq" + suffix, fifo=scenario.fifo)
    table = await _create_table(dynamodb)
    token_file = tmp_path / "crm-token"
    # The CRM serves from a thread of its own: in this loop, beside three workers, a stall of
    # the loop handed its rate limit a burst of requests that never was on the wire.
    async with remote.in_thread(
        crm.CrmSimulator(rate=RATE, burst=BURST, latency=0.01, throttle_status=429, retry_after=1)
    ) as sim:
        token_file.write_text(sim.token)
        document = harness.manifest(
            queue_url=source,
            sink_url=sim.url,
            dead_letter_url=dead,
            name="fleet-e2e",
            # Room for the surplus the pollers take in steady state, so that what stops them
            # in the outage is the open circuit, not a full budget.
            queue={"maxInFlight": 60, "pollers": POLLERS, "maxMessages": MAX_MESSAGES},
            sink={
                "type": "crm",
                "rateLimit": {"requestsPerSecond": RATE, "burst": BURST},
                "maxConcurrency": 8,
                "circuitFailureThreshold": 3,
                "circuitOpenSeconds": scenario.open_seconds,
                "crm": {"token": {"file": str(token_file)}},
            },
            retry={"maxAttempts": 20},
            idempotency={"store": "dynamodb", "table": table},
        )
        consumer = harness.consumer(document)
        queue_name = consumer.spec.queue.name
        sinks = [
            crm_sink.CrmSink(consumer.spec.sink, replicas=fleet.FixedReplicas(REPLICAS))
            for _ in range(REPLICAS)
        ]
        workers = [running.Worker(consumer, sink=sink, http_host="127.0.0.1", http_port=0) for sink in sinks]
        stop = asyncio.Event()
        traffic = harness.Traffic()
        sent_at: list[float] = []
        feeder = asyncio.create_task(
            harness.feed_paced(
                sqs,
                source,
                conversations=scenario.conversations,
                length=scenario.length,
                rate=FEED_RATE,
                fifo=scenario.fifo,
                traffic=traffic,
                sent_at=sent_at,
                head_start=scenario.head_start,
                max_backlog=scenario.max_backlog,
            )
        )
        tasks: list[asyncio.Task[None]] = []
        try:
            # the head start is in the queue before the first worker starts
            head_start_in = await harness.wait_until(
                lambda: len(sent_at) >= scenario.head_start, timeout=60, interval=0.05
            )
            assert head_start_in, f"the feeder queued {len(sent_at)} of {scenario.head_start} in 60 s"
            tasks = [asyncio.create_task(worker.run(stop)) for worker in workers]
            for worker in workers:
                await worker.wait_started()
            urls = [worker.http_url for worker in workers]
            assert None not in urls
            async with contextlib.AsyncExitStack() as clients:
                metrics = [
                    await clients.enter_async_context(httpx.AsyncClient(base_url=url)) for url in urls if url
                ]
                assert await harness.wait_until(lambda: bool(sim.request_times), timeout=15, interval=0.05)
                steady_start = sim.request_times[0] + WARMUP_SECONDS
                await asyncio.sleep(max(0.0, steady_start + STEADY_SECONDS - time.monotonic()))

                sim.set_outage(True)
                outage_start = time.monotonic()
                visible_before = (await harness.queue_counts(sqs, source))[0]
                await asyncio.sleep(max(0.0, outage_start + 1.0 - time.monotonic()))
                received_before = await _messages_received(metrics, queue_name)
                await asyncio.sleep(max(0.0, outage_start + scenario.outage_seconds - time.monotonic()))
                circuits = [sink.limiter.core.circuit(sink.limiter.now()) for sink in sinks]
                received_after = await _messages_received(metrics, queue_name)
                visible_after = (await harness.queue_counts(sqs, source))[0]
                outage_end = time.monotonic()
                sim.set_outage(False)

                found_back = [math.inf] * len(sinks)
                while time.monotonic() < outage_end + RECOVERY_SECONDS:
                    for index, sink in enumerate(sinks):
                        closed = (
                            sink.limiter.core.circuit(sink.limiter.now()) is throttling.CircuitState.CLOSED
                        )
                        if closed and math.isinf(found_back[index]):
                            found_back[index] = time.monotonic() - outage_end
                    await asyncio.sleep(0.02)
                await feeder

                async def all_done() -> bool:
                    delivered = {item.event_id for item in sim.accepted}
                    if not traffic.correlation_ids <= delivered:
                        return False
                    return await harness.queue_counts(sqs, source) == (0, 0)

                finished = await harness.wait_until(all_done, timeout=scenario.recovery_timeout)
        finally:
            stop.set()
            feeder.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await feeder
            await asyncio.wait_for(asyncio.gather(*tasks), timeout=30)
            for sink in sinks:
                await sink.aclose()
        left = await harness.queue_counts(sqs, source)
    suppressed = sum(
        worker.metrics.value("fanout_duplicates_suppressed_total", queue=queue_name) for worker in workers
    )
    return Run(
        sim=sim,
        traffic=traffic,
        sent_at=sent_at,
        steady=(steady_start, outage_start),
        outage=(outage_start, outage_end),
        recovery=(outage_end, outage_end + RECOVERY_SECONDS),
        circuits_in_outage=circuits,
        found_back=found_back,
        received_in_outage=received_after - received_before,
        visible_at_outage=(visible_before, visible_after),
        finished=finished,
        left_in_queue=left,
        dead_letters=await harness.drain_queue(sqs, dead),
        duplicates_suppressed=suppressed or 0.0,
    )


# The acceptance figure (issue 3) is goodput >= 95% of the granted rate. Goodput is a wall-clock
# rate: on a loaded 2-core machine the workers themselves fall behind, whatever the limiter does.
# The soak runs (and bench/downstream.py, which prints it) hold the fleet to 0.95; the suite's
# short run keeps a margin for a busy machine. Throttling is not load-sensitive (a slow fleet is
# throttled less, not more), so its bound is the acceptance one everywhere.
SUITE_MIN_GOODPUT = 0.9
ACCEPTANCE_MIN_GOODPUT = 0.95
MIN_SUPPLY = 1.2
"""The backlog each measured window starts with, over what the grant lets through in it."""


def _check_rate(run: Run, *, min_goodput: float, steady_only: bool = False) -> None:
    """The fleet uses the granted rate (in the steady window and after the outage, or in the
    steady window alone) and is (almost) never throttled."""
    goodput = run.goodput_in(run.steady) if steady_only else run.goodput
    assert goodput >= min_goodput, run.summary()
    assert run.throttled_share <= 0.01, run.summary()


def _check_outage(run: Run, scenario: Scenario) -> None:
    """Circuits open, only probes reach the CRM, the pollers stop, the backlog waits in SQS."""
    sim = run.sim
    assert all(state is not throttling.CircuitState.CLOSED for state in run.circuits_in_outage), run.summary()
    assert sim.outage_count >= REPLICAS, "every replica met the outage"
    # after the first open period, one probe per replica per short period (``throttling``:
    # a quarter of its slice of the rate at most), plus the probes of periods that began before
    # the measured part of the outage
    every = throttling.outage_probe_seconds(
        scenario.open_seconds, RATE / REPLICAS, throttling.OUTAGE_PROBE_SHARE
    )
    probe_ceiling = REPLICAS / every + REPLICAS / (scenario.outage_seconds - 1.0)
    assert run.probes_per_second <= probe_ceiling, run.summary()
    assert run.received_in_outage <= run.may_receive, run.summary()
    # the feed went on meanwhile, and most of it waits in SQS (the pollers took some before
    # the circuits opened, and failed messages come back after their backoff)
    visible_before, visible_after = run.visible_at_outage
    assert visible_after >= visible_before + 0.5 * run.fed_between(*run.outage), run.summary()


FOUND_BACK_SLACK_SECONDS = 0.5
"""A probe may leave late on a loaded machine (its task waits for the loop)."""


def _check_found_back(run: Run, scenario: Scenario) -> None:
    """Each replica finds the CRM back by itself within one short probe period of its return
    (``throttling.outage_probe_seconds``, jittered), not an open period later: the seconds
    its part of the grant is lost. (One probe per open period: up to 3 s here.)"""
    every = throttling.outage_probe_seconds(
        scenario.open_seconds, RATE / REPLICAS, throttling.OUTAGE_PROBE_SHARE
    )
    within = every * (1 + throttling.OPEN_JITTER) + FOUND_BACK_SLACK_SECONDS
    assert max(run.found_back) <= within, f"found back later than {within:.2f} s: {run.summary()}"


def _check_recovery(run: Run, *, ordered: bool) -> None:
    """Every event delivered once, nothing left in the queue, nothing dead-lettered."""
    sim = run.sim
    assert run.finished, f"the fleet did not deliver everything after the outage: {run.summary()}"
    assert {item.event_id for item in sim.accepted} == run.traffic.correlation_ids, "events lost"
    assert sim.duplicates() == {}, f"delivered twice: {sim.duplicates()}"
    assert run.traffic.duplicates > 0 and run.duplicates_suppressed >= run.traffic.duplicates, run.summary()
    assert run.left_in_queue == (0, 0)
    assert run.dead_letters == []
    if ordered:
        assert sim.order_violations() == [], sim.order_violations()[:5]


async def test_three_replicas_share_the_limit_and_ride_out_an_outage(
    long_queue_sqs: Any, long_queue_dynamodb: Any, tmp_path: pathlib.Path
) -> None:
    """Issue 3's fleet, on a moto that keeps up with a backlog of hundreds (its receives no
    longer scan the whole queue per message, and its conditional writes are atomic)."""
    # The backlog for the whole steady window is queued first: the window then measures the
    # fleet, not how fast a feeder sharing this event loop with three workers gets its batches
    # into moto (with two seconds of the grant queued first it fed 0.94-1.16 of the grant
    # under load, and the window measured that). The paced feed after it runs through the
    # outage; it never waits for room (``max_backlog``): the backlog must grow in the outage.
    head_start = math.ceil(MIN_SUPPLY * (RATE * (WARMUP_SECONDS + STEADY_SECONDS) + BURST))
    scenario = Scenario(
        fifo=False,
        conversations=56,
        length=10,
        outage_seconds=3.0,
        open_seconds=2.0,
        recovery_timeout=40.0,
        head_start=head_start,
        max_backlog=10_000,
    )
    run = await _run_fleet(long_queue_sqs, long_queue_dynamodb, tmp_path, scenario)
    print(run.summary())
    assert run.supply >= MIN_SUPPLY, run.summary()  # the scenario itself kept a backlog
    # the feed outran the pollers' leeway, so the outage checks below can fail
    assert run.fed_between(*run.outage_measured) > run.may_receive, run.summary()
    _check_rate(run, min_goodput=SUITE_MIN_GOODPUT)
    _check_outage(run, scenario)
    _check_found_back(run, scenario)
    _check_recovery(run, ordered=False)


@pytest.mark.soak
async def test_a_sixty_second_outage_soak(sqs: Any, dynamodb: Any, tmp_path: pathlib.Path) -> None:
    scenario = Scenario(
        fifo=False, conversations=40, length=10, outage_seconds=60.0, open_seconds=5.0, recovery_timeout=150.0
    )
    run = await _run_fleet(sqs, dynamodb, tmp_path, scenario)
    print(run.summary())
    # the steady state alone, as before (the summary reports the seconds after the outage)
    _check_rate(run, min_goodput=ACCEPTANCE_MIN_GOODPUT, steady_only=True)
    _check_outage(run, scenario)
    _check_recovery(run, ordered=False)


@pytest.mark.soak
async def test_a_fifo_fleet_keeps_each_conversation_in_order_through_an_outage(
    sqs: Any, dynamodb: Any, tmp_path: pathlib.Path
) -> None:
    # Many short conversations: a FIFO fleet can only work on as many groups as it holds.
    scenario = Scenario(
        fifo=True, conversations=100, length=4, outage_seconds=3.0, open_seconds=1.0, recovery_timeout=60.0
    )
    run = await _run_fleet(sqs, dynamodb, tmp_path, scenario)
    print(run.summary())  # goodput is reported, not asserted: see the module docstring
    assert run.throttled_share <= 0.01, run.summary()
    _check_outage(run, scenario)
    _check_recovery(run, ordered=True)


# --------------------------------------------------------------------------- issue 11
DEFAULT_RATE = 30.0
DEFAULT_BURST = 10
DEFAULT_EVENTS = 360


@dataclasses.dataclass(frozen=True)
class DefaultRun:
    goodput: float
    throttled: float
    finished: bool
    peak_rates: list[float]
    """Each replica's highest rate limit while it ran (requests per second)."""
    summary: str


async def _default_fleet(sqs: Any, *, events_queued: int, starts: list[float]) -> DefaultRun:
    """``events_queued`` events already queued, then replicas started at ``starts`` (seconds),
    each told the fleet has ``len(starts)`` replicas and nothing else but the queue, the
    webhook and its rateLimit. Goodput is over the whole busy period (first request to last
    acceptance, tail included).

    The webhook runs in its own process, so that a stall of this process (the workers share
    it) does not hand the webhook's rate limit a burst that never was on the wire.
    """
    source = await harness.make_queue(sqs, f"fleet-default-{uuid.uuid4().hex[:8]}")
    bodies = harness.interleaved_bodies(events_queued, length=8)
    await harness.send_bodies(sqs, source, bodies, max_backlog=len(bodies) + 1)
    with remote.WebhookProcess(rate=DEFAULT_RATE, burst=DEFAULT_BURST, latency=0.01) as sim:
        consumer = spec_model.parse_manifest(
            harness.wrap_spec(
                "fleet-default",
                {
                    "queue": {"url": source},
                    "sink": {
                        "type": "webhook",
                        "url": sim.url + "/events",
                        "rateLimit": {"requestsPerSecond": DEFAULT_RATE, "burst": DEFAULT_BURST},
                    },
                },
            )
        )
        told = fleet.FixedReplicas(len(starts))
        fleet_sinks = [sinks.build_sink(consumer.spec.sink, replicas=told) for _ in starts]
        peaks = [0.0 for _ in starts]
        stop = asyncio.Event()

        async def replica(index: int, sink: base.Sink) -> None:
            await asyncio.sleep(starts[index])
            await running.Worker(consumer, sink=sink, http_port=None).run(stop)

        tasks = [asyncio.create_task(replica(index, sink)) for index, sink in enumerate(fleet_sinks)]
        async with httpx.AsyncClient(timeout=10) as control:

            async def all_done() -> bool:
                for index, sink in enumerate(fleet_sinks):
                    assert isinstance(sink, exchange.ExchangeSink)
                    peaks[index] = max(peaks[index], sink.limiter.snapshot().rate or 0.0)
                return (await sim.stats(control)).unique >= len(bodies)

            try:
                finished = await harness.wait_until(all_done, timeout=60, interval=0.1)
            finally:
                stop.set()
                await asyncio.wait_for(asyncio.gather(*tasks), timeout=30)
                for sink in fleet_sinks:
                    await sink.aclose()
            stats = await sim.stats(control, full=True)
    goodput = stats.unique / (DEFAULT_RATE * stats.busy_seconds)
    throttled = stats.throttled / stats.requests
    summary = (
        f"goodput {goodput:.3f} over {stats.busy_seconds:.1f} s,"
        f" {throttled:.1%} of {stats.requests} requests throttled, peak rates {peaks}"
    )
    print(summary)
    return DefaultRun(goodput, throttled, finished, peaks, summary)


async def test_a_fleet_with_default_settings_uses_the_grant_over_the_whole_busy_period(
    long_queue_sqs: Any,
) -> None:
    """360 events already queued; three replicas told nothing but the queue, the webhook and its
    rateLimit: goodput over the whole busy period >= 0.90 of the grant, <= 1% of the requests
    throttled."""
    run = await _default_fleet(long_queue_sqs, events_queued=DEFAULT_EVENTS, starts=[0.0, 0.0, 0.0])
    assert run.finished, run.summary
    assert run.goodput >= SUITE_MIN_GOODPUT, run.summary
    assert run.throttled <= 0.01, run.summary


async def test_a_replica_alone_in_a_fleet_counted_as_three_takes_the_whole_grant(long_queue_sqs: Any) -> None:
    """One replica finds the whole backlog; the two others the count speaks of start 4 s
    later. Alone, it reads that it holds everything the fleet holds and sends at the whole
    rate, not at its third; when the others come, the fleet shares the grant without a flood.
    (Told the count alone, the first replica stays at 10 of 30 requests per second.)"""
    run = await _default_fleet(long_queue_sqs, events_queued=DEFAULT_EVENTS, starts=[0.0, 4.0, 4.0])
    assert run.finished, run.summary
    assert run.peak_rates[0] >= 0.9 * DEFAULT_RATE, run.summary
    # Not the fleet's goodput: over this 13 s run the 4 s alone and the join weigh three times
    # what they do at the size, and it measured 0.745-0.96 there (bench/fleet_uneven.py
    # carries the figure: 0.991 at 900 events). What this test names is the lone replica's rate.
    assert run.throttled <= 0.03, run.summary  # a join costs a few 429s (bench/fleet_uneven.py)
