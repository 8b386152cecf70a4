"""Declarative redrives: watch a FanoutConsumer's request annotation and run what it asks.

``handlers`` runs :meth:`Watcher.step` in a ``looping.run`` as one kopf daemon per
FanoutConsumer. Every few seconds it reads the annotation off kopf's live body (no API call)
and asks
``redrive_requests.decide`` what to do: start a run, refuse a second one while one runs,
or report an invalid request. A run is ``fanout_core.redriving.Redrive`` — the same engine,
rules and defaults as ``fanout dlq redrive`` — in a task of its own, so the daemon keeps
watching (and refusing) while it goes; its progress is written to ``status.redrive`` every
few seconds and counted in the operator's metrics, with an Event when it starts and ends.

When the daemon is cancelled (the resource is deleted, the operator stops, a peer takes
over), :meth:`Watcher.aclose` tells the run to stop: the batch under way is copied and
deleted, what it held is made visible again, and ``status.redrive`` stays ``Running`` —
whoever runs the consumer next starts it again, which copy-then-delete makes safe.

SQS is reached with an aiobotocore client from the standard AWS environment (IRSA in EKS),
in ``spec.queue.region``; the operator's IAM role then needs the redrive calls on the
consumer's queues (README, "Dead letters"). ``status.redrive`` is written here and nowhere
else (``status.merge_patch`` leaves it out), so the consumer's ``reporting.StatusWriter`` and
this module never write over each other.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Any

import aiobotocore.config
import aiobotocore.session

from fanout_core import deadletters, pacing, redrive_reports, redriving
from fanout_core import spec as spec_model
from fanout_operator import (
    conditions,
    kube,
    metrics,
    reconciling,
    redrive_requests,
    rendering,
    reporting,
    status,
)

logger = logging.getLogger(__name__)

WATCH_SECONDS = 2.0
STATUS_SECONDS = 5.0
STOP_GRACE_SECONDS = 20.0


def no_identity(body: str, attributes: Any) -> deadletters.EventIdentity | None:
    """The operator does not decode event bodies (that is the worker's decoder, which the
    operator may not import): requests select by reason class, reason and age."""
    return None


@dataclasses.dataclass
class _Run:
    key: str
    stop: asyncio.Event
    task: asyncio.Task[None] | None = None
    progress: redrive_reports.Progress | None = None
    written: redrive_reports.Progress | None = None


class Watcher:
    """One FanoutConsumer's redrive requests."""

    def __init__(
        self,
        client: kube.KubeClient,
        owner: rendering.Owner,
        *,
        instance: str,
        recorder: metrics.ConsumerMetrics | None = None,
        clock: Callable[[], float] = time.time,
        sqs_client: Callable[[str | None], contextlib.AbstractAsyncContextManager[Any]] | None = None,
    ) -> None:
        self._client = client
        self._owner = owner
        self._instance = instance
        self._recorder = recorder
        self._clock = clock
        self._sqs_client = sqs_client or _sqs_client
        self._run: _Run | None = None
        self._current: redrive_requests.RedriveStatus | None = None
        self._read = False
        self._counted: dict[metrics.RedriveOutcome, int] = {}
        self._progress_written_at = 0.0

    async def step(self, body: Any) -> float:
        """One look at the annotation, and progress written when due; seconds until the next."""
        if not self._read:
            self._current = redrive_requests.read(body.get("status"))
            self._read = True
        text = (body.get("metadata", {}).get("annotations") or {}).get(redrive_requests.ANNOTATION)
        running = self._run.key if self._run is not None and not self._done(self._run) else None
        decision = redrive_requests.decide(text, self._current, running=running)
        if decision.action is redrive_requests.Action.START:
            assert decision.key is not None and decision.request is not None
            await self._start(decision.key, decision.request, body)
        elif decision.action is redrive_requests.Action.REFUSE and self._current is not None:
            assert decision.key is not None
            await self._write(redrive_requests.refused(self._current, decision.key))
            await self._event("RedriveRefused", decision.message, warning=True)
        elif decision.action is redrive_requests.Action.INVALID:
            assert decision.key is not None
            await self._write(
                redrive_requests.invalid(
                    decision.key, decision.message, now=self._clock(), previous=self._current
                )
            )
            await self._event("InvalidRedriveRequest", decision.message, warning=True)
        await self._write_progress()
        return WATCH_SECONDS

    async def aclose(self) -> None:
        """Stop a run under way (the daemon ends): its batch finishes, its holds are released."""
        await self._stop_run()

    # -- a run ---------------------------------------------------------------------------

    async def _start(self, key: str, request: redrive_requests.Request, body: Any) -> None:
        try:
            consumer = spec_model.parse_spec(body.get("spec"))
        except spec_model.ConfigError as error:
            message = f"redrive request {key}: the spec is invalid: {error}".replace("\n", "; ")
            await self._write(
                redrive_requests.invalid(key, message, now=self._clock(), previous=self._current)
            )
            return
        if not consumer.dead_letter.queue_url:
            message = (
                f"redrive request {key}: spec.deadLetter.queueUrl is not set: there is no dead-letter queue"
            )
            await self._write(
                redrive_requests.invalid(key, message, now=self._clock(), previous=self._current)
            )
            await self._event("InvalidRedriveRequest", message, warning=True)
            return
        limit = consumer.sink.rate_limit
        choice = pacing.choose_rate(
            explicit=request.rate, rate_limit=limit.requests_per_second if limit is not None else None
        )
        await self._write(
            redrive_requests.started(key, request, choice, now=self._clock(), previous=self._current)
        )
        what = "dry run" if request.dry_run else "redrive"
        dead = redriving.queue_name(consumer.dead_letter.queue_url)
        await self._event(
            "RedriveStarted",
            f"{what} {key} of {dead} to {consumer.queue.name}: "
            f"{request.selection().describe()}, {choice.why}",
        )
        run = _Run(key=key, stop=asyncio.Event())
        run.task = asyncio.create_task(self._execute(run, consumer, request, choice), name=f"redrive-{key}")
        self._run = run
        if self._recorder is not None:
            self._recorder.redrive_running(True)

    async def _execute(
        self,
        run: _Run,
        consumer: spec_model.FanoutConsumerSpec,
        request: redrive_requests.Request,
        choice: pacing.RateChoice,
    ) -> None:
        assert consumer.dead_letter.queue_url is not None
        try:
            async with self._sqs_client(consumer.queue.region) as sqs:
                engine = redriving.Redrive(
                    sqs,
                    dead_letter_url=consumer.dead_letter.queue_url,
                    source_url=consumer.queue.url,
                    selection=request.selection(),
                    rate=choice,
                    identify=no_identity,
                    dry_run=request.dry_run,
                    on_progress=lambda progress: setattr(run, "progress", progress),
                    stop=run.stop,
                )
                report = await engine.run()
        except redriving.RedriveError as error:
            await self._finish(run, None, f"redrive request {run.key} failed: {error}")
            return
        await self._finish(run, report, "")

    async def _finish(self, run: _Run, report: redrive_reports.Report | None, message: str) -> None:
        if self._recorder is not None:
            self._recorder.redrive_running(False)
        if self._current is None:
            return
        if report is not None and report.interrupted and run.stop.is_set():
            return  # stopped with the daemon: status stays Running, the next owner starts it again
        if report is None:
            await self._write(redrive_requests.failed(self._current, message, now=self._clock()))
            await self._event("RedriveFailed", message, warning=True)
            return
        self._count(report.moved, report.skipped, report.held, report.failed, report.dry_run)
        final = redrive_requests.finished(self._current, report, now=self._clock())
        await self._write(final)
        await self._event(
            "RedriveFinished" if report.complete else "RedriveIncomplete",
            f"redrive request {run.key}: {final.message}",
            warning=not report.complete,
        )

    async def _stop_run(self) -> None:
        run = self._run
        if run is None or run.task is None or run.task.done():
            return
        run.stop.set()
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            await asyncio.wait_for(asyncio.shield(run.task), STOP_GRACE_SECONDS)

    @property
    def _names(self) -> tuple[str, str]:
        return self._owner.namespace, self._owner.name

    @staticmethod
    def _done(run: _Run) -> bool:
        return run.task is None or run.task.done()

    # -- status, Events, metrics -----------------------------------------------------------

    async def _write_progress(self) -> None:
        run = self._run
        if run is None or run.progress is None or run.progress is run.written or self._done(run):
            return
        if self._current is None or self._current.request != run.key:
            return
        if self._clock() - self._progress_written_at < STATUS_SECONDS:
            return
        self._progress_written_at = self._clock()
        progress = run.progress
        self._count(progress.moved, progress.skipped, progress.held, progress.failed, progress.dry_run)
        run.written = progress
        with contextlib.suppress(kube.KubeError):
            await self._write(redrive_requests.progressed(self._current, progress))

    def _count(self, moved: int, skipped: int, held: int, failed: int, dry_run: bool) -> None:
        """Metrics count what changed since the last report of this run."""
        if self._recorder is None or dry_run:
            return
        for outcome, total in (
            (metrics.RedriveOutcome.MOVED, moved),
            (metrics.RedriveOutcome.SKIPPED, skipped),
            (metrics.RedriveOutcome.HELD, held),
            (metrics.RedriveOutcome.FAILED, failed),
        ):
            delta = total - self._counted.get(outcome, 0)
            if delta > 0:
                self._recorder.redriven(outcome, delta)
                self._counted[outcome] = total

    async def _write(self, value: status.RedriveStatus) -> None:
        if self._current is None or self._current.request != value.request:
            self._counted = {}
        self._current = value
        await self._client.merge_patch(
            reconciling.consumer_path(self._owner, "status"),
            {"status": {"redrive": redrive_requests.dump(value)}},
        )

    async def _event(self, reason: str, message: str, *, warning: bool = False) -> None:
        logger.info("%s/%s: %s: %s", *self._names, reason, message)
        note = conditions.Note(reason, message, warning)
        with contextlib.suppress(kube.KubeError):
            await reporting.post_event(
                self._client, self._owner, note, now=self._clock(), instance=self._instance
            )


@contextlib.asynccontextmanager
async def _sqs_client(region: str | None) -> Any:
    config = aiobotocore.config.AioConfig(
        connect_timeout=5, read_timeout=30, retries={"max_attempts": 3, "mode": "standard"}
    )
    session = aiobotocore.session.get_session()
    async with session.create_client("sqs", region_name=region, config=config) as client:
        yield client
