"""One worker process: wiring, supervision, probes and the drain on shutdown.

``cli`` builds a :class:`Worker` from a FanoutConsumer manifest and runs it until a
stop event (SIGTERM/SIGINT). The worker owns the clients and the stages:

    pollers ──submit──► processor ──deliver──► sink
       │                    │
       └──── settler ◄──────┘   (deletes, visibility, dead-letters, heartbeat)

Every long-running task is supervised (:mod:`workers.supervision`): an unexpected
exception is logged and the task restarted after an exponential backoff; nothing a
message or a downstream does ends the process.

At start the worker reads the source queue's ``RedrivePolicy``: a ``maxReceiveCount`` that
would move events to the queue's dead-letter queue before ``spec.retry.maxAttempts`` are
used up is reported (a WARNING line, ``fanout_redrive_policy_conflict``); a queue it may
not read is noted and the worker goes on.

Shutdown, in order, bounded by ``spec.shutdown.gracePeriodSeconds`` plus a few seconds
whatever the sink is doing: stop receiving (a receive under way may finish within
:data:`workers.polling.STOP_WAIT_SECONDS`, and what it brings goes straight back); give
back what has not started (visibility 0); flush the sink's buffered batches; let running
deliveries finish within the grace period, then cancel them and give their messages back;
flush the delete and visibility batches (at most
:data:`workers.settling.CLOSE_TIMEOUT_SECONDS`); close the sink — which sends nothing
more — and the stores. A SIGKILL at any point loses nothing:
un-deleted messages reappear after their visibility timeout, and the idempotency store
keeps what was completed from being delivered twice.

Probes on ``--http-port``: ``/healthz`` (the event loop answers), ``/readyz`` (SQS
answered the last receive, no task keeps crashing, and we are not shutting down) and
``/metrics`` (``fanout_core.probing``, as the front door serves them).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiobotocore.session
import aiohttp.web

from fanout_core import findings, probing
from fanout_core import idempotency as dedupe
from fanout_core import spec as spec_model
from workers import (
    events,
    fleet,
    payloads,
    polling,
    processing,
    settling,
    sinks,
    sqs,
    supervision,
    telemetry,
)
from workers.sinks import base

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, slots=True)
class _Stages:
    """What one worker's data path is made of while it runs."""

    client: sqs.SqsApi
    sink: base.Sink
    resolver: payloads.Resolver
    budget: polling.Budget
    settler: settling.Settler
    processor: processing.Processor


@dataclasses.dataclass(frozen=True, slots=True)
class _Running:
    """The supervised tasks of a running worker."""

    dispatcher: asyncio.Task[None]
    pollers: list[polling.Poller]
    receiving: list[asyncio.Task[None]]
    """The pollers' tasks, in the pollers' order."""
    side: list[asyncio.Task[None]]
    """Side tasks, stopped after the drain: the delivered-summary log line, and reading this
    replica's share of the fleet's work (with a fleet-wide rate limit)."""


class Worker:
    """A FanoutConsumer's worker: polls its queue and feeds its sink until stopped."""

    def __init__(
        self,
        consumer: spec_model.FanoutConsumer,
        *,
        sink: base.Sink | None = None,
        http_host: str = "0.0.0.0",  # probes must answer the kubelet
        http_port: int | None = None,
        metrics: telemetry.WorkerMetrics | None = None,
    ) -> None:
        self.consumer = consumer
        self.spec = consumer.spec
        self._given_sink = sink
        self._http_host = http_host
        self._http_port = http_port
        self._receiving_ok = False
        self._stopping = False
        self._started = asyncio.Event()
        # The worker's own registry: /metrics serves it. A sink given from outside writes to
        # it when it was built with the same ``metrics``.
        self.metrics = metrics if metrics is not None else telemetry.WorkerMetrics()
        self.telemetry = telemetry.WorkerTelemetry(
            queue_url=self.spec.queue.url, sink_name=str(self.spec.sink.type), metrics=self.metrics
        )
        self.health = supervision.Health(on_change=lambda _: self.telemetry.set_ready(self.ready))
        self.http_url: str | None = None

    # -- state -----------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self._started.is_set() and self._receiving_ok and self.health.healthy and not self._stopping

    def _set_receiving(self, ok: bool) -> None:
        self._receiving_ok = ok
        self.telemetry.set_ready(self.ready)

    async def wait_started(self) -> None:
        await self._started.wait()

    # -- running ---------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set, then drain and return.

        ``http_port`` None serves no probes; 0 picks a free port (see ``http_url``).
        """
        region, sink = self._prepare()
        async with contextlib.AsyncExitStack() as stack:
            stages = await self._open(stack, region, sink)
            tasks = self._start(stages)
            await stack.enter_async_context(self._probes())
            self._started.set()
            log.info(
                "worker started", extra={"queue": self.spec.queue.name, "pollers": self.spec.queue.pollers}
            )
            await stop.wait()
            await self._drain(stages, tasks)

    def _prepare(self) -> tuple[str, base.Sink]:
        """Everything that can be wrong with the configuration fails here, before any I/O:
        the region to sign for, and the sink (its secrets are read now)."""
        queue = self.spec.queue
        region = sqs.resolve_region(queue.url, queue.region)
        replicas = fleet.ReplicaCount.from_environment()
        sink = self._given_sink or sinks.build_sink(self.spec.sink, replicas=replicas, metrics=self.metrics)
        if self.spec.idempotency.store is spec_model.IdempotencyStoreType.MEMORY and replicas.current() > 1:
            log.warning(
                "idempotency store 'memory' with %d replicas: a redelivery that reaches another replica "
                "is delivered again; use store 'dynamodb' for a fleet",
                replicas.current(),
            )
        return region, sink

    async def _open(self, stack: contextlib.AsyncExitStack, region: str, sink: base.Sink) -> _Stages:
        """The clients and the stages of the data path, closed by ``stack`` in reverse."""
        queue = self.spec.queue
        if self._given_sink is None:
            stack.push_async_callback(sink.aclose)
        client = await stack.enter_async_context(
            sqs.client(region=region, max_connections=queue.pollers + 10)
        )
        store = await stack.enter_async_context(self._store(region))
        await self._check_redrive_policy(client)
        resolver = payloads.Resolver(
            await stack.enter_async_context(_s3_client(region)), self.spec.large_payloads
        )
        stack.push_async_callback(resolver.drain)

        def target() -> int:  # called by the pollers, which start after both exist
            # held but not waiting for the sink: what is being deleted or put back, and
            # what waits in lanes for a message that is away
            held_back = settler.settling + processor.held_back
            return polling.budget_target(sink.capacity(), held_back, ceiling=queue.max_in_flight)

        budget = polling.Budget(queue.max_in_flight, target)
        settler = settling.Settler(
            client=client,
            queue_url=events.QueueUrl(queue.url),
            visibility_timeout=queue.visibility_timeout_seconds,
            dead_letter_url=_queue_url(self.spec.dead_letter.queue_url),
            budget=budget,
            telemetry=self.telemetry,
            on_deleted=resolver.forget,
            health=self.health,
        )
        processor = processing.Processor(
            spec=self.spec,
            sink=sink,
            store=store,
            settler=settler,
            telemetry=self.telemetry,
            # The ceiling, not the target: the target makes room for what waits on a message
            # that is away (``held_back``), so only the ceiling can leave no receive possible.
            in_hand_limit=lambda: budget.limit,
        )
        return _Stages(client, sink, resolver, budget, settler, processor)

    def _start(self, stages: _Stages) -> _Running:
        """The settler's batchers and heartbeat, the dispatcher, the pollers and (with a
        fleet-wide rate limit) the reading of this replica's share, supervised."""
        queue = self.spec.queue
        settler, sink = stages.settler, stages.sink
        settler.start()
        dispatcher = asyncio.create_task(self._supervise("dispatcher", stages.processor.run))
        turns = polling.Turns()
        side = [asyncio.create_task(self._supervise("log-summary", self._log_summaries))]
        if self.spec.sink.rate_limit is not None:  # a fleet-wide limit goes where the work is
            share = functools.partial(
                fleet.watch_share,
                stages.client,
                events.QueueUrl(queue.url),
                held=lambda: settler.in_flight,
                away=lambda: settler.away,
                tell=sink.set_fleet_share,
            )
            side.append(asyncio.create_task(self._supervise("fleet-share", share)))
        pollers = [
            polling.Poller(
                client=stages.client,
                queue=queue,
                budget=stages.budget,
                sink=sink,
                settler=settler,
                submit=stages.processor.submit,
                telemetry=self.telemetry,
                on_health=self._set_receiving,
                resolver=stages.resolver,
                on_receive=stages.processor.received,
                turns=turns,
            )
            for _ in range(queue.pollers)
        ]
        receiving = [
            asyncio.create_task(self._supervise(f"poller-{index}", poller.run))
            for index, poller in enumerate(pollers)
        ]
        return _Running(dispatcher, pollers, receiving, side)

    async def _drain(self, stages: _Stages, tasks: _Running) -> None:
        """Stop receiving, let what runs finish within the grace period, flush the settler."""
        self._stopping = True
        self.telemetry.set_ready(False)
        log.info("draining", extra={"grace_seconds": self.spec.shutdown.grace_period_seconds})
        await _stop_polling(tasks.pollers, tasks.receiving)
        await stages.processor.drain(self.spec.shutdown.grace_period_seconds)
        await _cancel(tasks.dispatcher, *tasks.side)
        await stages.settler.aclose()
        self.telemetry.log_delivered_summary()
        log.info("worker stopped")

    async def _log_summaries(self) -> None:
        """The ``delivered_summary`` line every interval (:mod:`workers.telemetry.summaries`)."""
        while True:
            await asyncio.sleep(telemetry.summaries.INTERVAL_SECONDS)
            self.telemetry.log_delivered_summary()

    async def _supervise(self, name: str, run: Callable[[], Awaitable[None]]) -> None:
        await supervision.supervise(name, run, health=self.health, on_restart=self.telemetry.task_restarted)

    async def _check_redrive_policy(self, client: sqs.SqsApi) -> None:
        """Warn when the queue's redrive policy would cut the retries short (never fatal)."""
        try:
            reply = await sqs.call(
                client.get_queue_attributes, QueueUrl=self.spec.queue.url, AttributeNames=["RedrivePolicy"]
            )
        except sqs.SqsError as error:
            log.warning("could not read the queue's RedrivePolicy (%s); not checked", error.code or error)
            return
        max_receive_count = sqs.max_receive_count(reply.get("Attributes", {}).get("RedrivePolicy"))
        if max_receive_count is not None:
            self.telemetry.redrive_conflict(findings.redrive_conflict(max_receive_count, self.spec.retry))
        else:
            self.telemetry.redrive_conflict(None)

    @contextlib.asynccontextmanager
    async def _store(self, region: str) -> AsyncIterator[dedupe.IdempotencyStore]:
        idempotency = self.spec.idempotency
        async with contextlib.AsyncExitStack() as stack:
            client: Any = None
            if idempotency.store is spec_model.IdempotencyStoreType.DYNAMODB:
                session = aiobotocore.session.get_session()
                client = await stack.enter_async_context(
                    session.create_client("dynamodb", region_name=region)
                )
            store = dedupe.build_store(idempotency, dynamodb_client=client)
            stack.push_async_callback(store.aclose)
            yield store

    @contextlib.asynccontextmanager
    async def _probes(self) -> AsyncIterator[None]:
        if self._http_port is None:
            yield
            return
        app = aiohttp.web.Application()
        probing.add_probes(app, readiness=self._readiness, exposition=self.metrics.exposition)
        listening = await probing.listen(app, self._http_host, self._http_port)
        self.http_url = listening.url
        try:
            yield
        finally:
            await listening.close()

    def _readiness(self) -> probing.Readiness:
        return probing.Readiness(self.ready, {"sqs": self._receiving_ok, "stopping": self._stopping})


@contextlib.asynccontextmanager
async def _s3_client(region: str) -> AsyncIterator[Any]:
    """S3 for offloaded payloads (no I/O until a pointer arrives); AWS_ENDPOINT_URL_S3 applies."""
    session = aiobotocore.session.get_session()
    async with session.create_client("s3", region_name=region) as client:
        yield client


def _queue_url(url: str | None) -> events.QueueUrl | None:
    return None if url is None else events.QueueUrl(url)


async def _stop_polling(pollers: list[polling.Poller], tasks: list[asyncio.Task[None]]) -> None:
    """Receive no more: let a receive under way finish (briefly), cancel the rest."""
    receiving = [task for poller, task in zip(pollers, tasks, strict=True) if poller.stop()]
    await _cancel(*(task for task in tasks if task not in receiving))
    if receiving:
        _, late = await asyncio.wait(receiving, timeout=polling.STOP_WAIT_SECONDS)
        await _cancel(*late)


async def _cancel(*tasks: asyncio.Task[Any]) -> None:
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task
