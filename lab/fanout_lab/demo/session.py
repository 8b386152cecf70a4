"""One run of the demo, start to finish: AWS resources, simulators, workers, publishing,
watching, draining, judging.

``fanout_lab.demo.command.main`` builds :class:`Options` and calls :func:`run`; :func:`run` returns
one :class:`Outcome` (a :class:`~fanout_lab.demo.referee.Verdict` per consumer) and hands a
:class:`Snapshot` to ``on_progress`` twice a second while it runs. In order:

1. a moto server child process on a free loopback port (the standard ``AWS_*`` variables
   point at it for the run); one FIFO SNS topic; per consumer a queue with a dead-letter
   queue and a redrive policy, subscribed to the topic (with its filter policy); the CRM's
   DynamoDB idempotency table;
2. the CRM, Splunk HEC and webhook simulators on loopback ports, with rate limits and
   latency; their credentials reach the sinks through environment variables, as secrets do;
3. the workers, in this process (``running.Worker``, the runtime ``fanout-worker`` runs),
   each replica with its own sink told the replica count, so it takes its share of the
   fleet-wide rate limit;
4. the day's publications, each at its time — but never while a queue holds more than
   ``backlog_cap`` messages (the moto server scans a whole queue for every message it
   moves, so a long queue would make it, not the workers, the bottleneck): a pause
   stretches the day, and the report says by how much;
5. the wait until every consumer has everything (or ``drain_timeout``), the workers'
   drain (SIGTERM's path), the dead-letter queues read, the verdicts.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import pathlib
import secrets
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiobotocore.session
import prometheus_client

from fanout_core import spec as spec_model
from fanout_lab.demo import consumers, referee, traffic
from fanout_lab.simulators import aws, crm, downstream, hec, webhook
from workers import fleet, running, sinks, throttling
from workers.sinks import exchange
from workers.telemetry import logs

TOPIC = "genesys-interactions"
REDRIVE_MAX_RECEIVES = 15
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
    log_path: pathlib.Path | None = None


@dataclasses.dataclass
class ConsumerState:
    """One consumer while the demo runs."""

    plan: consumers.Plan
    simulator: downstream.DownstreamSimulator
    expected_events: frozenset[str]
    queue_url: str = ""
    dead_letter_url: str = ""
    visible: int = 0
    in_flight: int = 0
    dead: int = 0
    samples: list[referee.Sample] = dataclasses.field(default_factory=list)
    delivered: set[str] = dataclasses.field(default_factory=set)
    limiters: list[throttling.AsyncLimiter] = dataclasses.field(default_factory=list)
    """Its replicas' sink limiters (to tell when the downstream's grant held it back)."""
    _seen: int = 0
    _metric_base: dict[str, float] = dataclasses.field(default_factory=dict)

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
        value = prometheus_client.REGISTRY.get_sample_value(name, {"queue": self.plan.queue, **labels})
        return (value or 0.0) - self._metric_base.get(name + repr(sorted(labels.items())), 0.0)

    def remember_metric_base(self) -> None:
        for name in ("fanout_duplicates_suppressed_total", "fanout_events_filtered_total"):
            value = prometheus_client.REGISTRY.get_sample_value(name, {"queue": self.plan.queue})
            self._metric_base[name + repr([])] = value or 0.0

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
    timed_out: bool
    log_path: pathlib.Path | None

    @property
    def ok(self) -> bool:
        return not self.timed_out and all(verdict.ok for verdict in self.verdicts.values())


class _Run:
    def __init__(self, options: Options, day: traffic.Day, clients: dict[str, Any]) -> None:
        self.options = options
        self.day = day
        self.sns = clients["sns"]
        self.sqs = clients["sqs"]
        self.dynamodb = clients["dynamodb"]
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

    # -- AWS resources -------------------------------------------------------------------

    async def create_resources(self) -> str:
        topic = await self.sns.create_topic(Name=TOPIC)
        topic_arn = str(topic["TopicArn"])
        for state in self.states:
            plan = state.plan
            fifo = {"FifoQueue": "true"} if plan.fifo else {}
            dlq = await self.sqs.create_queue(QueueName=plan.dead_letter_queue, Attributes=fifo)
            state.dead_letter_url = str(dlq["QueueUrl"])
            redrive = {
                "deadLetterTargetArn": await self._arn(state.dead_letter_url),
                "maxReceiveCount": REDRIVE_MAX_RECEIVES,
            }
            queue = await self.sqs.create_queue(
                QueueName=plan.queue,
                Attributes={**fifo, "VisibilityTimeout": "30", "RedrivePolicy": json.dumps(redrive)},
            )
            state.queue_url = str(queue["QueueUrl"])
            attributes = {"FilterPolicy": json.dumps(plan.filter_policy)} if plan.filter_policy else {}
            await self.sns.subscribe(
                TopicArn=topic_arn,
                Protocol="sqs",
                Endpoint=await self._arn(state.queue_url),
                Attributes=attributes,
            )
        await self.dynamodb.create_table(
            TableName=consumers.IDEMPOTENCY_TABLE,
            AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
            KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
            BillingMode="PAY_PER_REQUEST",
        )
        await self.dynamodb.update_time_to_live(
            TableName=consumers.IDEMPOTENCY_TABLE,
            TimeToLiveSpecification={"Enabled": True, "AttributeName": "expiration"},
        )
        return topic_arn

    async def _arn(self, queue_url: str) -> str:
        reply = await self.sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])
        return str(reply["Attributes"]["QueueArn"])

    # -- publishing ------------------------------------------------------------------------

    def busiest_queue(self) -> int:
        return max((state.visible + state.in_flight for state in self.states), default=0)

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
            sent_at = time.monotonic()
            reply = await self.sns.publish_batch(TopicArn=topic_arn, PublishBatchRequestEntries=entries)
            if reply.get("Failed"):
                raise RuntimeError(f"SNS PublishBatch refused entries: {reply['Failed']}")
            message_ids = {item["Id"]: item["MessageId"] for item in reply.get("Successful", [])}
            for position, publication in enumerate(batch):
                if publication.event is not None:
                    self.published_at.setdefault(publication.event.correlation_id, sent_at)
                else:
                    self.poison_ids[int(publication.group.rsplit("-", 1)[1])] = message_ids[str(position)]
            self.published += len(batch)
        self.schedule_time = self.day.seconds
        self.publishing_seconds = time.monotonic() - clock_start
        self.publishing_done = True

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
        for state in self.states:
            state.visible, state.in_flight = await aws.queue_counts(self.sqs, state.queue_url)
            state.dead = sum(await aws.queue_counts(self.sqs, state.dead_letter_url))
            state.catch_up()
            state.samples.append(
                referee.Sample(
                    time.monotonic(),
                    state.visible + state.in_flight,
                    state.requests_ok,
                    rate_bound_seconds=state.rate_bound_seconds,
                )
            )

    def snapshot(self) -> Snapshot:
        burst_start, burst_end = self.day.burst
        return Snapshot(
            elapsed=time.monotonic() - self.started,
            clock=self.day.clock(min(self.schedule_time, self.day.seconds)),
            published=self.published,
            total=len(self.day.publications),
            burst=burst_start <= self.schedule_time <= burst_end and not self.publishing_done,
            outage=self.outage,
            paused_seconds=self.paused_seconds,
            consumers=self.states,
        )

    async def read_dead_letters(self, state: ConsumerState) -> list[referee.DeadLetter]:
        found: list[referee.DeadLetter] = []
        for _ in range(1000):
            reply = await self.sqs.receive_message(
                QueueUrl=state.dead_letter_url,
                MaxNumberOfMessages=10,
                WaitTimeSeconds=0,
                VisibilityTimeout=60,
                MessageAttributeNames=["All"],
            )
            messages = reply.get("Messages", [])
            if not messages:
                break
            for message in messages:
                found.append(_dead_letter(message))
            await self.sqs.delete_message_batch(
                QueueUrl=state.dead_letter_url,
                Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)],
            )
        return found


def _dead_letter(message: dict[str, Any]) -> referee.DeadLetter:
    attributes = message.get("MessageAttributes", {})

    def attribute(name: str) -> str | None:
        value = attributes.get(name, {}).get("StringValue")
        return str(value) if value is not None else None

    sns_id: str | None = None
    with contextlib.suppress(ValueError, TypeError, AttributeError):
        sns_id = json.loads(message.get("Body", "")).get("MessageId")
    return referee.DeadLetter(sns_id, attribute("fanout.reason-class"), attribute("fanout.reason"))


@contextlib.asynccontextmanager
async def _clients() -> AsyncIterator[dict[str, Any]]:
    session = aiobotocore.session.get_session()
    async with (
        session.create_client("sns") as sns,
        session.create_client("sqs") as sqs,
        session.create_client("dynamodb") as dynamodb,
    ):
        yield {"sns": sns, "sqs": sqs, "dynamodb": dynamodb}


@contextlib.contextmanager
def _worker_logs(path: pathlib.Path | None) -> Any:
    """The workers' JSON log lines go to ``path`` for the run (never onto the screen)."""
    root = logging.getLogger()
    saved_level = root.level
    handler: logging.Handler = logging.FileHandler(path, encoding="utf-8") if path else logging.NullHandler()
    handler.setFormatter(logs.JsonFormatter())
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    saved = {name: logging.getLogger(name).level for name in logs.WIRE_LOGGERS}
    for name, floor in logs.WIRE_LOGGERS.items():
        logging.getLogger(name).setLevel(max(floor, logging.INFO))
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()
        root.setLevel(saved_level)
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


def _simulator(plan: consumers.Plan, seed: int) -> downstream.DownstreamSimulator:
    if plan.name == "crm-sync":
        return crm.CrmSimulator(rate=plan.rate, burst=plan.burst, latency=plan.latency, seed=seed)
    if plan.name == "siem-audit":
        return hec.HecSimulator(
            token=secrets.token_hex(16), rate=plan.rate, burst=plan.burst, latency=plan.latency, seed=seed
        )
    return webhook.WebhookSimulator(
        rate=plan.rate,
        burst=plan.burst,
        latency=plan.latency,
        seed=seed,
        signing_secret=secrets.token_hex(16),
    )


def _secrets(states: list[ConsumerState]) -> dict[str, str]:
    values: dict[str, str] = {}
    for state in states:
        sim = state.simulator
        if isinstance(sim, crm.CrmSimulator):
            values[consumers.CRM_CLIENT_ID_ENV] = sim.client_id
            values[consumers.CRM_CLIENT_SECRET_ENV] = sim.client_secret
        elif isinstance(sim, hec.HecSimulator):
            values[consumers.HEC_TOKEN_ENV] = sim.token
        elif isinstance(sim, webhook.WebhookSimulator) and sim.signing_secret:
            values[consumers.WEBHOOK_KEY_ENV] = sim.signing_secret
    return values


async def run(options: Options, on_progress: Callable[[Snapshot], None]) -> Outcome:
    """The whole demo; see the module docstring."""
    day = traffic.build(conversations=options.conversations, seconds=options.seconds, seed=options.seed)
    plans = consumers.plans(day)
    with aws.MotoServer() as server, aws.environment(server.environment()), _worker_logs(options.log_path):
        for name in ("AWS_ENDPOINT_URL_SQS", "AWS_ENDPOINT_URL_SNS", "AWS_ENDPOINT_URL_DYNAMODB"):
            os.environ.pop(name, None)
        async with _clients() as clients, contextlib.AsyncExitStack() as stack:
            run_ = _Run(options, day, clients)
            for plan in plans:
                simulator = await stack.enter_async_context(_simulator(plan, options.seed))
                keep = plan.keep
                expected = {
                    event.correlation_id
                    for event in day.events.values()
                    if event.category in plan.categories
                    and (keep is None or referee.type_matches(event.event_type, keep))
                }
                run_.states.append(ConsumerState(plan, simulator, frozenset(expected)))
            topic_arn = await run_.create_resources()
            stack.enter_context(aws.environment(_secrets(run_.states)))
            return await _run_workers(run_, stack, topic_arn, on_progress)
    raise AssertionError("unreachable")  # pragma: no cover


async def _run_workers(
    run_: _Run, stack: contextlib.AsyncExitStack, topic_arn: str, on_progress: Callable[[Snapshot], None]
) -> Outcome:
    options, day = run_.options, run_.day
    stop = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []
    for state in run_.states:
        plan = state.plan
        document = consumers.manifest(
            plan,
            queue_url=state.queue_url,
            dead_letter_url=state.dead_letter_url,
            sink_url=state.simulator.url,
            region=aws.DEFAULT_REGION,
        )
        consumer = spec_model.parse_manifest(document)
        state.remember_metric_base()
        for _ in range(plan.replicas):
            sink = sinks.build_sink(consumer.spec.sink, replicas=fleet.FixedReplicas(plan.replicas))
            if isinstance(sink, exchange.ExchangeSink):
                state.limiters.append(sink.limiter)
            stack.push_async_callback(sink.aclose)
            worker = running.Worker(consumer, sink=sink)
            tasks.append(asyncio.create_task(worker.run(stop)))
    siem = next(state.simulator for state in run_.states if state.plan.name == "siem-audit")
    helpers = [asyncio.create_task(run_.publish(topic_arn)), asyncio.create_task(run_.siem_outage(siem))]
    timed_out = False
    try:
        deadline: float | None = None
        while True:
            await run_.observe()
            on_progress(run_.snapshot())
            for helper in helpers:
                if helper.done() and helper.exception() is not None:
                    raise helper.exception()  # type: ignore[misc]
            if run_.publishing_done:
                deadline = deadline or time.monotonic() + options.drain_timeout
                if all(state.done and state.dead >= _poison_for(state, day) for state in run_.states):
                    break
                if time.monotonic() > deadline:
                    timed_out = True
                    break
            await asyncio.sleep(MONITOR_INTERVAL)
    finally:
        for helper in helpers:
            helper.cancel()
        stop.set()
        await asyncio.gather(*tasks, *helpers, return_exceptions=True)
    await run_.observe()
    return await _judge(run_, timed_out)


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
            dead_letters=await run_.read_dead_letters(state),
            queue_left=state.visible + state.in_flight,
            samples=state.samples,
            rate_limit=plan.rate,
            saturation_backlog=plan.saturation_backlog,
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
        timed_out=timed_out,
        log_path=run_.options.log_path,
    )
