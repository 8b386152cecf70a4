"""One run of the demo, start to finish: AWS resources, simulators, workers, publishing,
watching, draining, judging.

``fanout_lab.demo.command.main`` builds :class:`Options` and calls :func:`run`; :func:`run` returns
one :class:`Outcome` (a :class:`~fanout_lab.demo.referee.Verdict` per consumer) and hands a
:class:`Snapshot` to ``on_progress`` twice a second while it runs. In order:

1. a moto server child process on a free loopback port, mended for long queues (the standard
   ``AWS_*`` variables point at it for the run) and one SNS topic; the CRM, Splunk HEC and
   webhook simulators on loopback ports, with rate limits and latency (their credentials
   reach the sinks through environment variables, as secrets do);
2. per consumer, its topology built from its manifest's ``spec.topology`` by
   ``fanout_core.provisioning`` — the code the operator runs: the queue, its dead-letter
   queue and redrive policy, the queue policy for the topic, the subscription with its filter
   policy, the dashboard's DynamoDB idempotency table — then verified by
   ``fanout_core.findings``: the run stops if anything is found;
3. the front door (``fanout_ingest``, in this process) on a loopback port, publishing to the
   topic and offloading the large transcripts to an S3 bucket;
4. the workers, in this process (``running.Worker``, the runtime ``fanout-worker`` runs),
   each replica with its own sink told the replica count, so it takes its share of the
   fleet-wide rate limit — first those of the consumers that run all along (the dashboard);
5. the catch-up (:meth:`_Run.catch_up`): the hour before the day (``--backlog``
   conversations) goes through the front door while the late consumers' workers are down
   (the CRM's and the SIEM's: an upgrade from 07:00 to 08:00), so their queues hold more than
   their downstreams take in seconds; at 08:00 their workers start, and the day waits until
   every queue is empty. That is when each of them is driven at its downstream's limit, and
   what the report's goodput line measures (:func:`referee.goodput`);
6. the day: its events sent to the front door as signed Genesys webhooks (a 503 is retried
   after its Retry-After, as Genesys does), with a few requests signed with a stale secret,
   which it must refuse (401); the poison bodies, which it would refuse too, are published
   to SNS directly, as another producer's; each at its time — but never while a queue holds
   more than ``backlog_cap`` messages (the moto server scans a whole queue for every message
   it moves, so a long queue would make it, not the workers, the bottleneck): a pause
   stretches the day, and the report says by how much;
7. the wait until every consumer has everything (or ``drain_timeout``) — except the events
   of the conversations whose CRM records are duplicated (:mod:`recovery`), which are in the
   CRM's dead-letter queue; then the fix and the redrive of those, with the workers still
   running, and the wait until they are delivered too;
8. the workers' drain (SIGTERM's path), the dead-letter queues read, the verdicts.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
import os
import pathlib
import secrets
import time
from collections.abc import Callable
from typing import Any

import aiobotocore.session

from fanout_core import awsclients, findings, inspecting, provisioning, topology
from fanout_core import spec as spec_model
from fanout_ingest import config as ingest_config
from fanout_ingest import serving
from fanout_lab.demo import consumers, recovery, referee, stage, traffic
from fanout_lab.simulators import aws, crm, downstream, webhooks
from workers import fleet, running, sinks, telemetry, throttling
from workers.sinks import exchange

TOPIC = "genesys-interactions"
PAYLOAD_BUCKET = "genesys-large-events"
FORGED_REQUESTS = 3
"""Requests signed with a stale secret, spread over the day: the front door must refuse them."""
_DOOR_ATTEMPTS = 10
ACCOUNT = "123456789012"
"""moto's account."""
MONITOR_INTERVAL = 0.5
OUTAGE_AT = 0.55  # share of the day when the SIEM is busy for a while


@dataclasses.dataclass(frozen=True)
class Options:
    conversations: int = 150
    seconds: float = 40.0
    seed: int = 1
    drain_timeout: float = 60.0
    backlog_cap: int = 300
    outage_seconds: float = 3.0
    backlog: int = 20
    """Conversations of the hour before the day, queued while the consumers were down."""
    log_path: pathlib.Path | None = None


@dataclasses.dataclass
class ConsumerState:
    """One consumer while the demo runs."""

    plan: consumers.Plan
    simulator: downstream.DownstreamSimulator
    expected_events: frozenset[str]
    consumer: spec_model.FanoutConsumer | None = None
    queue_url: str = ""
    dead_letter_url: str = ""
    visible: int = 0
    in_flight: int = 0
    dead: int = 0
    samples: list[referee.Sample] = dataclasses.field(default_factory=list)
    delivered: set[str] = dataclasses.field(default_factory=set)
    limiters: list[throttling.AsyncLimiter] = dataclasses.field(default_factory=list)
    """Its replicas' sink limiters (to tell when the downstream's grant held it back)."""
    workers: list[running.Worker] = dataclasses.field(default_factory=list)
    _seen: int = 0
    _outages_seen: int = 0

    def catch_up(self) -> None:
        accepted = self.simulator.accepted
        for item in accepted[self._seen :]:
            if item.event_id is not None:
                self.delivered.add(item.event_id)
        self._seen = len(accepted)

    @property
    def requests_ok(self) -> int:
        return sum(count for status, count in self.simulator.status_counts.items() if 200 <= status < 300)

    @property
    def rate_bound_seconds(self) -> float:
        """Seconds its replicas' requests waited for their rate, per replica (so far)."""
        if not self.limiters:
            return 0.0
        return sum(limiter.rate_bound_seconds() for limiter in self.limiters) / len(self.limiters)

    @property
    def refused(self) -> int:
        """Throttle and outage answers (429 / 503 / 403 REQUEST_LIMIT_EXCEEDED)."""
        return self.simulator.throttled_count + self.simulator.outage_count

    def metric(self, name: str, **labels: str) -> float:
        """A worker metric of this consumer, summed over its replicas (each has its registry)."""
        return sum(worker.metrics.value(name, queue=self.plan.queue, **labels) for worker in self.workers)

    @property
    def refused_for_good(self) -> int:
        """Events this consumer's workers dead-lettered as permanent (the CRM's missing column)."""
        return int(self.metric("fanout_dead_lettered_total", reason_class="permanent"))

    def drained(self, poison: int) -> bool:
        """Queue empty; every expected event delivered or dead-lettered as permanent."""
        permanent = self.refused_for_good
        return (
            self.visible == 0
            and self.in_flight == 0
            and len(self.delivered & self.expected_events) + permanent >= len(self.expected_events)
            and self.dead >= poison + permanent
        )

    @property
    def done(self) -> bool:
        return self.expected_events <= self.delivered and self.visible == 0 and self.in_flight == 0


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """What the live view shows."""

    elapsed: float
    clock: str
    published: int
    total: int
    burst: bool
    outage: bool
    paused_seconds: float
    consumers: list[ConsumerState]
    redrive: str | None = None
    """The redrive under way, as the headline shows it."""
    catching_up: bool = False
    """The consumers are draining the backlog of the hour before the day."""


@dataclasses.dataclass
class DoorCounts:
    """What the front door answered."""

    accepted: int = 0
    refused_forged: int = 0
    retried: int = 0
    offloaded: int = 0


@dataclasses.dataclass(frozen=True)
class Outcome:
    day: traffic.Day
    plans: list[consumers.Plan]
    verdicts: dict[str, referee.Verdict]
    duplicates_suppressed: dict[str, int]
    filtered: dict[str, int]
    refused: dict[str, int]
    status_counts: dict[str, dict[int, int]]
    elapsed: float
    paused_seconds: float
    publishing_seconds: float
    catch_up_seconds: float
    """From the workers' start until every queue was empty of the backlog."""
    door: DoorCounts
    timed_out: bool
    log_path: pathlib.Path | None
    redrives: dict[str, recovery.Figures] = dataclasses.field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.timed_out and all(verdict.ok for verdict in self.verdicts.values())


class _Run:
    def __init__(self, options: Options, day: traffic.Day, clients: dict[str, Any]) -> None:
        self.options = options
        self.day = day
        self.sns = clients["sns"]
        self.sqs = clients["sqs"]
        self.states: list[ConsumerState] = []
        self.published = 0
        self.published_at: dict[str, float] = {}
        self.poison_ids: dict[int, str] = {}
        self.schedule_time = 0.0
        self.paused_seconds = 0.0
        self.started = time.monotonic()
        self.outage = False
        self.publishing_done = False
        self.publishing_seconds = 0.0
        self.catching_up = False
        self.catch_up_seconds = 0.0
        self.observed_from = 0.0
        """When the last complete observation of every queue began."""
        self.sender: webhooks.Sender | None = None
        self.door = DoorCounts()
        self.redrive_line: str | None = None
        self.redrives: dict[str, recovery.Figures] = {}

    # -- AWS resources -------------------------------------------------------------------

    async def create_resources(self, endpoint_url: str) -> str:
        """The topic, then each consumer's topology as its manifest declares it (see step 2)."""
        topic = await self.sns.create_topic(Name=TOPIC)
        topic_arn = str(topic["TopicArn"])
        async with awsclients.open_clients(aws.DEFAULT_REGION) as clients:
            for state in self.states:
                plan = state.plan
                queue_url = f"{endpoint_url}/{ACCOUNT}/{plan.queue}"
                document = consumers.manifest(
                    plan,
                    queue_url=queue_url,
                    dead_letter_url=f"{endpoint_url}/{ACCOUNT}/{plan.dead_letter_queue}",
                    sink_url=state.simulator.url,
                    region=aws.DEFAULT_REGION,
                    topic_arn=topic_arn,
                )
                consumer = spec_model.parse_manifest(document)
                owner = f"{consumer.metadata.namespace}/{consumer.metadata.name}"
                desired = topology.desired(consumer.spec, owner=owner, place=clients.place)
                await provisioning.provision(clients, desired)
                report = findings.check(consumer.spec, desired, await inspecting.inspect(clients, desired))
                if not report.ok:
                    problems = "; ".join(finding.line() for finding in report.findings)
                    raise RuntimeError(f"{plan.name}: the topology just built has problems: {problems}")
                state.consumer = consumer
                state.queue_url = desired.queue.url
                state.dead_letter_url = desired.dead_letter.url
        return topic_arn

    # -- publishing ------------------------------------------------------------------------

    def busiest_queue(self) -> int:
        return max((state.visible + state.in_flight for state in self.states), default=0)

    async def catch_up(self, start_late_workers: Callable[[], None]) -> None:
        """The hour before the day: its events go through the front door while the late
        consumers' workers are down; then they start, and the day waits until every queue
        is empty again."""
        backlog = self.day.backlog
        by_key: dict[str, list[traffic.Publication]] = {}
        for publication in backlog:
            by_key.setdefault(publication.group, []).append(publication)
        clock_start = time.monotonic()
        await asyncio.gather(*(self._send_on_clock(group, clock_start) for group in by_key.values()))
        started = time.monotonic()
        start_late_workers()
        if not backlog:
            return
        self.catching_up = True
        try:
            while not (self.observed_from > started and self.busiest_queue() == 0):
                if time.monotonic() - started > self.options.drain_timeout:
                    break  # the verdicts will say what is left
                await asyncio.sleep(0.1)
        finally:
            self.catching_up = False
            self.catch_up_seconds = time.monotonic() - started

    async def publish(self, topic_arn: str) -> None:
        publications = self.day.publications
        index = 0
        clock_start = time.monotonic()
        while index < len(publications):
            if self.busiest_queue() >= self.options.backlog_cap:
                pause_start = time.monotonic()
                while self.busiest_queue() >= self.options.backlog_cap * 0.8:  # noqa: ASYNC110 - observe() refreshes
                    await asyncio.sleep(0.1)
                self.paused_seconds += time.monotonic() - pause_start
            now = time.monotonic() - clock_start - self.paused_seconds
            self.schedule_time = now
            if publications[index].at > now:
                await asyncio.sleep(min(publications[index].at - now, 0.05))
                continue
            batch: list[traffic.Publication] = []
            while index < len(publications) and len(batch) < 10 and publications[index].at <= now:
                batch.append(publications[index])
                index += 1
            sent_at = time.monotonic()
            door = [publication for publication in batch if publication.event is not None]
            by_key: dict[str, list[traffic.Publication]] = {}
            for publication in door:
                by_key.setdefault(publication.group, []).append(publication)
            # Different conversations at once; one conversation's events one after the other,
            # as a sender keeps them (concurrent requests may reach SNS in either order).
            await asyncio.gather(*(self._send_in_turn(group) for group in by_key.values()))
            for publication in door:  # (the backlog's are not here: its wait is no latency)
                assert publication.event is not None
                self.published_at.setdefault(publication.event.correlation_id, sent_at)
            poison = [publication for publication in batch if publication.event is None]
            if poison:
                await self._publish_directly(topic_arn, poison)
            self.published += len(batch)
            if self.door.refused_forged < FORGED_REQUESTS * index // len(publications):
                await self._forged_request()
        self.schedule_time = self.day.seconds
        self.publishing_seconds = time.monotonic() - clock_start
        self.publishing_done = True

    async def _send_on_clock(self, publications: list[traffic.Publication], clock_start: float) -> None:
        """One conversation's publications of the backlog, each at its ``at``."""
        for publication in publications:
            delay = clock_start + publication.at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await self._through_the_door(publication)
            self.published += 1

    async def _send_in_turn(self, publications: list[traffic.Publication]) -> None:
        for publication in publications:
            await self._through_the_door(publication)

    async def _through_the_door(self, publication: traffic.Publication) -> None:
        """POST one event as Genesys does: signed; a 503 retried after its Retry-After."""
        assert self.sender is not None
        body = publication.message.encode()
        for _ in range(_DOOR_ATTEMPTS):
            answer = await self.sender.post_body(body)
            if answer.status == 202:
                self.door.accepted += 1
                if len(body) > traffic.TRANSCRIPT_BYTES // 2:
                    self.door.offloaded += 1
                return
            if answer.status != 503:
                raise RuntimeError(f"the front door answered {answer.status}: {answer.body}")
            self.door.retried += 1
            await asyncio.sleep(min(1.0, float(answer.retry_after or 1)))
        raise RuntimeError(f"the front door kept answering 503 ({_DOOR_ATTEMPTS} attempts)")

    async def _forged_request(self) -> None:
        assert self.sender is not None
        body = json.dumps({"topicName": "v2.detail.events.conversation.forged.acw", "eventBody": {}}).encode()
        answer = await self.sender.post_body(body, secret=b"a-stale-secret")
        if answer.status != 401:
            raise RuntimeError(f"the front door answered {answer.status} to a forged signature")
        self.door.refused_forged += 1

    async def _publish_directly(self, topic_arn: str, batch: list[traffic.Publication]) -> None:
        """Poison bodies reach SNS from another producer (the front door refuses them)."""
        entries = []
        for position, publication in enumerate(batch):
            entries.append(
                {
                    "Id": str(position),
                    "Message": publication.message,
                    "MessageAttributes": {
                        "eventCategory": {"DataType": "String", "StringValue": str(publication.category)}
                    },
                }
            )
        reply = await self.sns.publish_batch(TopicArn=topic_arn, PublishBatchRequestEntries=entries)
        if reply.get("Failed"):
            raise RuntimeError(f"SNS PublishBatch refused entries: {reply['Failed']}")
        message_ids = {item["Id"]: item["MessageId"] for item in reply.get("Successful", [])}
        for position, publication in enumerate(batch):
            self.poison_ids[int(publication.group.rsplit("-", 1)[1])] = message_ids[str(position)]

    async def siem_outage(self, simulator: downstream.DownstreamSimulator) -> None:
        """The SIEM is busy (every request answered 503, code 9) for a few seconds."""
        if self.options.outage_seconds <= 0 or self.day.seconds < 10:
            return
        while self.schedule_time < OUTAGE_AT * self.day.seconds and not self.publishing_done:  # noqa: ASYNC110
            await asyncio.sleep(0.1)
        simulator.set_outage(True)
        self.outage = True
        try:
            await asyncio.sleep(self.options.outage_seconds)
        finally:
            simulator.set_outage(False)
            self.outage = False

    # -- watching --------------------------------------------------------------------------

    async def observe(self) -> None:
        began = time.monotonic()
        for state in self.states:
            state.visible, state.in_flight = await aws.queue_counts(self.sqs, state.queue_url)
            state.dead = sum(await aws.queue_counts(self.sqs, state.dead_letter_url))
            state.catch_up()
            # An outage touched the interval if the downstream refused a request for it since
            # the last sample, or is refusing now.
            outages = state.simulator.outage_count
            outage = state.simulator.outage or outages > state._outages_seen
            state._outages_seen = outages
            state.samples.append(
                referee.Sample(
                    time.monotonic(),
                    state.visible + state.in_flight,
                    state.requests_ok,
                    outage=outage,
                    rate_bound_seconds=state.rate_bound_seconds,
                )
            )
        self.observed_from = began

    def snapshot(self) -> Snapshot:
        burst_start, burst_end = self.day.burst
        return Snapshot(
            elapsed=time.monotonic() - self.started,
            clock=self.day.clock(min(self.schedule_time, self.day.seconds)),
            published=self.published,
            total=len(self.day.backlog) + len(self.day.publications),
            burst=burst_start <= self.schedule_time <= burst_end and not self.publishing_done,
            outage=self.outage,
            paused_seconds=self.paused_seconds,
            consumers=self.states,
            redrive=self.redrive_line,
            catching_up=self.catching_up,
        )


async def run(options: Options, on_progress: Callable[[Snapshot], None]) -> Outcome:
    """The whole demo; see the module docstring."""
    day = traffic.build(
        conversations=options.conversations,
        seconds=options.seconds,
        seed=options.seed,
        backlog=options.backlog,
    )
    plans = consumers.plans(day)
    with (
        aws.MotoServer(long_queues=True) as server,
        aws.environment(server.environment()),
        stage.worker_logs(options.log_path),
    ):
        for name in ("AWS_ENDPOINT_URL_SQS", "AWS_ENDPOINT_URL_SNS", "AWS_ENDPOINT_URL_DYNAMODB"):
            os.environ.pop(name, None)
        async with stage.clients() as clients, contextlib.AsyncExitStack() as stack:
            run_ = _Run(options, day, clients)
            for plan in plans:
                simulator = await stack.enter_async_context(stage.simulator(plan, options.seed))
                keep = plan.keep
                expected = {
                    event.correlation_id
                    for event in day.events.values()
                    if event.category in plan.categories
                    and (keep is None or referee.type_matches(event.event_type, keep))
                }
                run_.states.append(ConsumerState(plan, simulator, frozenset(expected)))
            topic_arn = await run_.create_resources(server.endpoint_url)
            stack.enter_context(aws.environment(stage.secrets_of(state.simulator for state in run_.states)))
            await _open_the_door(run_, stack, topic_arn)
            return await _run_workers(run_, stack, topic_arn, on_progress)
    raise AssertionError("unreachable")  # pragma: no cover


async def _open_the_door(run_: _Run, stack: contextlib.AsyncExitStack, topic_arn: str) -> None:
    """The front door on a loopback port, its signing secret in the environment, and the sender."""
    session_ = aiobotocore.session.get_session()
    async with session_.create_client("s3") as s3:
        await s3.create_bucket(Bucket=PAYLOAD_BUCKET)
    secret = secrets.token_hex(16)
    stack.enter_context(aws.environment({"FANOUT_DEMO_WEBHOOK_SECRET": secret}))
    manifest = ingest_config.parse(
        {
            "apiVersion": "fanout.dev/v1alpha1",
            "kind": "FanoutIngest",
            "metadata": {"name": "genesys-ingest"},
            "spec": {
                "topic": {"arn": topic_arn},
                "sources": [{"name": "genesys", "secrets": [{"env": "FANOUT_DEMO_WEBHOOK_SECRET"}]}],
                "offload": {"bucket": PAYLOAD_BUCKET, "keyPrefix": "transcripts/"},
                # The day's redeliveries stand for what reaches the topic from every path
                # (EventBridge has no door): they go through, and the report shows the
                # workers dropping them. The door's own deduplication: tests/test_ingest_dedupe.py.
                "idempotency": {"enabled": False},
            },
        }
    )
    gateway = await stack.enter_async_context(
        serving.running(serving.Gateway(manifest, http_host="127.0.0.1", http_port=0))
    )
    run_.sender = await stack.enter_async_context(
        webhooks.Sender(f"{gateway.url}/events", secret.encode(), connections=20)
    )


async def _run_workers(
    run_: _Run, stack: contextlib.AsyncExitStack, topic_arn: str, on_progress: Callable[[Snapshot], None]
) -> Outcome:
    options, day = run_.options, run_.day
    stop = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []
    manifests: dict[str, spec_model.FanoutConsumer] = {}
    crm_simulator = next(s.simulator for s in run_.states if isinstance(s.simulator, crm.CrmSimulator))
    recovery.break_crm(crm_simulator, recovery.affected_conversations(day))
    for state in run_.states:
        assert state.consumer is not None, "create_resources() sets it"
        manifests[state.plan.name] = state.consumer

    def start_workers(*, late: bool) -> None:
        """The replicas of the consumers that start now, each with its own sink told the
        replica count (so it takes its share of the fleet-wide rate limit)."""
        for state in run_.states:
            consumer = state.consumer
            if state.plan.late_start != late or consumer is None:
                continue
            for _ in range(state.plan.replicas):
                metrics = telemetry.WorkerMetrics()  # the worker's and its sink's series, one registry
                sink = sinks.build_sink(
                    consumer.spec.sink, replicas=fleet.FixedReplicas(state.plan.replicas), metrics=metrics
                )
                if isinstance(sink, exchange.ExchangeSink):
                    state.limiters.append(sink.limiter)
                stack.push_async_callback(sink.aclose)
                worker = running.Worker(consumer, sink=sink, metrics=metrics)
                state.workers.append(worker)
                tasks.append(asyncio.create_task(worker.run(stop)))

    async def the_day() -> None:
        start_workers(late=False)
        await run_.catch_up(functools.partial(start_workers, late=True))
        await run_.publish(topic_arn)

    siem = next(state.simulator for state in run_.states if state.plan.name == "siem-audit")
    helpers = [asyncio.create_task(the_day()), asyncio.create_task(run_.siem_outage(siem))]
    redriving: asyncio.Task[None] | None = None
    timed_out = False
    try:
        deadline: float | None = None
        while True:
            await run_.observe()
            on_progress(run_.snapshot())
            for helper in [*helpers, *([redriving] if redriving else [])]:
                if helper.done() and not helper.cancelled() and helper.exception() is not None:
                    raise helper.exception()  # type: ignore[misc]
            if run_.publishing_done:
                deadline = deadline or time.monotonic() + options.drain_timeout
                if redriving is None:
                    if all(state.drained(_poison_for(state, day)) for state in run_.states):
                        redriving = asyncio.create_task(_redrive(run_, manifests))
                        deadline = time.monotonic() + options.drain_timeout
                elif redriving.done() and all(
                    state.done and state.dead >= _poison_for(state, day) for state in run_.states
                ):
                    break
                if time.monotonic() > deadline:
                    timed_out = True
                    break
            await asyncio.sleep(MONITOR_INTERVAL)
    finally:
        if redriving is not None:
            helpers.append(redriving)
        for helper in helpers:
            helper.cancel()
        stop.set()
        await asyncio.gather(*tasks, *helpers, return_exceptions=True)
    await run_.observe()
    return await _judge(run_, timed_out)


async def _redrive(run_: _Run, manifests: dict[str, spec_model.FanoutConsumer]) -> None:
    """Fix the cause, then redrive every consumer whose workers dead-lettered events as permanent."""
    for state in run_.states:
        if isinstance(state.simulator, crm.CrmSimulator):
            recovery.fix_crm(state.simulator)
    for state in run_.states:
        if state.refused_for_good == 0:
            continue
        name = state.plan.name

        def show(progress: Any, name: str = name) -> None:
            run_.redrive_line = f"REDRIVE {name}: {progress.moved} moved at {progress.rate:g}/s"

        figures = await recovery.redrive(
            run_.sqs, manifests[name], config_name=f"{name}.yaml", on_progress=show
        )
        run_.redrives[name] = figures
        run_.redrive_line = f"redriven {name}: {figures.moved} back, draining"


def _poison_for(state: ConsumerState, day: traffic.Day) -> int:
    return sum(1 for poison in day.poison if poison.category in state.plan.categories)


async def _judge(run_: _Run, timed_out: bool) -> Outcome:
    day = run_.day
    verdicts: dict[str, referee.Verdict] = {}
    for state in run_.states:
        plan = state.plan
        expected = referee.expectation(
            day,
            categories=plan.categories,
            keep=plan.keep,
            ordered_categories=plan.ordered,
            poison_ids=run_.poison_ids,
        )
        accepted = [
            referee.Accepted(item.event_id, item.received_at)
            for item in state.simulator.accepted
            if item.event_id
        ]
        verdicts[plan.name] = referee.judge(
            day=day,
            expected=expected,
            accepted=accepted,
            published_at=run_.published_at,
            dead_letters=await stage.read_dead_letters(run_.sqs, state.dead_letter_url),
            queue_left=state.visible + state.in_flight,
            samples=state.samples,
            rate_limit=plan.rate,
            saturation_backlog=plan.saturation_backlog,
            redriven=run_.redrives[plan.name].refused if plan.name in run_.redrives else frozenset(),
        )
    return Outcome(
        day=day,
        plans=[state.plan for state in run_.states],
        verdicts=verdicts,
        duplicates_suppressed={
            s.plan.name: int(s.metric("fanout_duplicates_suppressed_total")) for s in run_.states
        },
        filtered={s.plan.name: int(s.metric("fanout_events_filtered_total")) for s in run_.states},
        refused={s.plan.name: s.refused for s in run_.states},
        status_counts={s.plan.name: dict(s.simulator.status_counts) for s in run_.states},
        elapsed=time.monotonic() - run_.started,
        paused_seconds=run_.paused_seconds,
        publishing_seconds=run_.publishing_seconds,
        catch_up_seconds=run_.catch_up_seconds,
        door=run_.door,
        timed_out=timed_out,
        log_path=run_.options.log_path,
        redrives=dict(run_.redrives),
    )
