"""One FanoutConsumer's scaling loop: observe, decide (``scaling``), apply, report.

``handlers`` runs :func:`run` in a kopf daemon per resource; each round is
:meth:`Autoscaler.poll`, which reads the live object, the queue's depth (``queues``), the
Deployment and, when asked to, the workers' metrics (``workers_state``); asks
``scaling.decide``; scales through ``reconciling.scale``; posts an Event when the size changes;
and writes the status (figures, reason, conditions, and the scaler's memory so a restarted or
peer operator continues the windows). It returns how long to wait before the next round:
the polling interval, or an exponential backoff after failures.

When given a ``metrics.ConsumerMetrics`` it records each round there too: the depth (removed
while unreadable), the decision and the ready replicas, the workers' sink report, queue read
errors, and the dead-letter queue's depth (one more GetQueueAttributes, only then: nothing
else needs it, and a DLQ that cannot be read is reported, never a reason to degrade).

Failure rules: a queue that cannot be read, or a cluster call that fails, keeps the current
replicas (never scale to zero on an error), marks ``Degraded`` with the cause, posts a Warning
Event when it starts, and backs off. An invalid spec is marked in the status and not scaled.

The wall clock (``clock``) is injected: persisted times must survive restarts, and tests pass
their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from fanout_core import spec
from fanout_operator import kube, metrics, queues, reconciling, rendering, scaling, status, workers_state

logger = logging.getLogger(__name__)

INVALID_SPEC_RETRY_SECONDS = 60.0


@dataclasses.dataclass(frozen=True)
class Settings:
    defaults: rendering.Defaults = dataclasses.field(default_factory=rendering.Defaults)
    scrape_workers: bool = True


def owner_of(body: Mapping[str, Any]) -> rendering.Owner:
    metadata = body.get("metadata", {})
    return rendering.Owner(
        name=str(metadata.get("name")),
        namespace=str(metadata.get("namespace")),
        uid=str(metadata.get("uid", "")),
    )


def memory_to_state(memory: status.ScalerMemory | None) -> scaling.State:
    if memory is None:
        return scaling.State()
    return scaling.State(
        empty_since=memory.empty_since,
        recommendations=tuple(
            scaling.Recommendation(at=r.at, replicas=r.replicas) for r in memory.recommendations
        ),
        per_replica_throughput=memory.per_replica_throughput,
    )


def state_to_memory(state: scaling.State, failures: int = 0) -> status.ScalerMemory:
    return status.ScalerMemory(
        empty_since=state.empty_since,
        recommendations=[
            status.RecommendationRecord(at=r.at, replicas=r.replicas) for r in state.recommendations
        ],
        consecutive_failures=failures,
        per_replica_throughput=state.per_replica_throughput,
    )


def initial_replicas(consumer: spec.FanoutConsumerSpec, previous: status.FanoutConsumerStatus) -> int:
    """Where a (re)created Deployment starts: the pin, else the last known size within bounds."""
    if consumer.replicas is not None:
        return consumer.replicas
    scaling_spec = consumer.scaling
    return min(max(previous.replicas, scaling_spec.min_replicas), scaling_spec.max_replicas)


class Autoscaler:
    """The scaling loop's state and I/O for one FanoutConsumer."""

    def __init__(
        self,
        *,
        client: kube.KubeClient,
        depth_reader: queues.DepthReader,
        observer: workers_state.FleetObserver | None,
        settings: Settings,
        clock: Callable[[], float] = time.time,
        recorder: metrics.ConsumerMetrics | None = None,
    ) -> None:
        self._client = client
        self._recorder = recorder
        self._depth_reader = depth_reader
        self._observer = observer
        self._settings = settings
        self._clock = clock
        # The scaler's memory lives here while this process runs; the status copy only seeds it
        # after a restart or a peer takeover (the live body may lag behind our own writes).
        self._state: scaling.State | None = None
        self._failures: int | None = None

    async def _write_status(self, owner: rendering.Owner, new: status.FanoutConsumerStatus) -> None:
        await self._client.merge_patch(
            reconciling.consumer_path(owner, "status"), {"status": status.dump(new)}
        )

    async def _degrade(
        self,
        owner: rendering.Owner,
        previous: status.FanoutConsumerStatus,
        generation: int | None,
        reason: str,
        message: str,
        now: float,
        consumer: spec.FanoutConsumerSpec,
    ) -> float:
        interval = consumer.scaling.polling_interval_seconds
        held = previous.replicas
        with contextlib.suppress(kube.KubeError):
            deployment = await self._client.get(reconciling.deployment_path(owner))
            if deployment is not None:
                held = int(deployment.get("spec", {}).get("replicas", held))
        state = self._state if self._state is not None else memory_to_state(previous.scaler)
        self._state = scaling.remember(state, held, now, consumer.scaling.scale_down_stabilization_seconds)
        if self._failures is None:
            self._failures = previous.scaler.consecutive_failures if previous.scaler else 0
        self._failures += 1
        failures = self._failures
        was_degraded = status.condition(previous, status.ConditionType.DEGRADED)
        conditions = status.set_condition(
            previous.conditions,
            status.ConditionType.DEGRADED,
            True,
            reason,
            message,
            now=now,
            generation=generation,
        )
        conditions = status.set_condition(
            conditions, status.ConditionType.READY, False, reason, message, now=now, generation=generation
        )
        memory = state_to_memory(self._state)
        new = previous.model_copy(
            update={
                "conditions": conditions,
                "last_poll_time": status.rfc3339(now),
                "scaler": memory.model_copy(update={"consecutive_failures": failures}),
            }
        )
        logger.warning("%s/%s degraded: %s: %s", owner.namespace, owner.name, reason, message)
        try:
            if was_degraded is None or was_degraded.status != "True" or was_degraded.reason != reason:
                await reconciling.post_event(
                    self._client, owner, reason=reason, message=message, warning=True
                )
            await self._write_status(owner, new)
        except kube.KubeError as error:
            logger.warning("%s/%s: cannot record degradation: %s", owner.namespace, owner.name, error)
        return scaling.next_poll_delay(interval, failures)

    async def _sink_report(
        self, owner: rendering.Owner, current: int, now: float
    ) -> scaling.SinkReport | None:
        if self._observer is None or current == 0:
            return None
        pods_path = kube.collection_path(*reconciling.PODS, owner.namespace)
        try:
            pods = await self._client.list(pods_path, label_selector=rendering.selector_string(owner))
        except kube.KubeError as error:
            logger.info("%s/%s: cannot list worker pods: %s", owner.namespace, owner.name, error)
            return None
        return await self._observer.report(workers_state.targets(pods), now)

    async def _record_dead_letters(self, consumer: spec.FanoutConsumerSpec) -> None:
        if self._recorder is None:
            return
        url = consumer.dead_letter.queue_url
        visible: int | None = None
        if url is not None:
            try:
                visible = (await self._depth_reader.depth(url, consumer.queue.region)).visible
            except queues.QueueError as error:
                logger.info("dead-letter queue depth not read: %s", error)
                self._recorder.queue_error(error, metrics.QueueRole.DEAD_LETTER)
        self._recorder.dead_letters(visible)

    async def poll(self, body: Mapping[str, Any]) -> float:
        """One round; returns the seconds to wait before the next."""
        now = self._clock()
        owner = owner_of(body)
        generation = body.get("metadata", {}).get("generation")
        previous = status.parse(body.get("status"))
        try:
            consumer = spec.parse_spec(body.get("spec"))
        except spec.ConfigError as error:
            # The reconcile handler has marked it; a fixed spec arrives in the live body.
            logger.info("%s/%s: invalid spec, not scaling: %s", owner.namespace, owner.name, error)
            return INVALID_SPEC_RETRY_SECONDS
        interval = consumer.scaling.polling_interval_seconds

        try:
            depth = await self._depth_reader.depth(consumer.queue.url, consumer.queue.region)
        except queues.QueueError as error:
            if self._recorder is not None:
                self._recorder.queue_error(error, metrics.QueueRole.SOURCE)
                self._recorder.queue_depth(None)
            return await self._degrade(owner, previous, generation, error.reason, str(error), now, consumer)
        if self._recorder is not None:
            self._recorder.queue_depth(depth)
        await self._record_dead_letters(consumer)

        try:
            deployment = await self._client.get(reconciling.deployment_path(owner))
            if deployment is None:
                applied = await reconciling.reconcile(
                    self._client,
                    owner,
                    consumer,
                    self._settings.defaults,
                    initial_replicas(consumer, previous),
                )
                current, ready = applied.deployment_replicas, 0
            else:
                current = int(deployment.get("spec", {}).get("replicas", 1))
                ready = int((deployment.get("status") or {}).get("readyReplicas") or 0)
            sink = await self._sink_report(owner, current, now)
            observation = scaling.Observation(
                visible=depth.visible,
                in_flight=depth.in_flight,
                delayed=depth.delayed,
                current_replicas=current,
                sink=sink,
            )
            decision = scaling.decide(
                scaling.Policy.from_spec(consumer), observation, memory_to_state(previous.scaler), now
            )
            if decision.replicas != current:
                await reconciling.scale(self._client, owner, current, decision.replicas)
                direction = "ScaledUp" if decision.replicas > current else "ScaledDown"
                await reconciling.post_event(
                    self._client, owner, reason=direction, message=decision.reason, now=now
                )
        except kube.KubeError as error:
            return await self._degrade(
                owner, previous, generation, "KubernetesError", str(error), now, consumer
            )

        self._failures = 0
        if self._recorder is not None:
            self._recorder.decided(current, decision, ready)
            self._recorder.sink(sink)
        changed = decision.replicas != current
        conditions = previous.conditions
        for kind, state, reason, message in (
            (status.ConditionType.READY, True, "Polling", "queue readable, children reconciled"),
            (status.ConditionType.SCALING, changed, str(decision.limit), decision.reason),
            (status.ConditionType.DEGRADED, False, "Healthy", ""),
        ):
            conditions = status.set_condition(
                conditions, kind, state, reason, message, now=now, generation=generation
            )
        new = previous.model_copy(
            update={
                "queue": consumer.queue.name,
                "replicas": decision.replicas,
                "desired_replicas": decision.recommendation,
                "ready_replicas": ready,
                "selector": rendering.selector_string(owner),
                "backlog": status.Backlog(
                    visible=depth.visible,
                    in_flight=depth.in_flight,
                    delayed=depth.delayed,
                    total=observation.backlog,
                ),
                "last_poll_time": status.rfc3339(now),
                "last_scale_time": status.rfc3339(now) if changed else previous.last_scale_time,
                "reason": decision.reason,
                "conditions": conditions,
                "scaler": state_to_memory(decision.state),
            }
        )
        try:
            await self._write_status(owner, new)
        except kube.KubeError as error:
            logger.warning("%s/%s: status not written: %s", owner.namespace, owner.name, error)
        return interval


async def run(
    poll: Callable[[], Awaitable[float]], *, sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep
) -> None:
    """Poll forever, sleeping what each round asks for; the daemon's cancellation ends it.

    An unexpected error in a round is logged and retried after a minute rather than ending the
    loop: a dead scaling loop would freeze the fleet at whatever size it had.
    """
    while True:
        try:
            delay = await poll()
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("scaling round failed")
            delay = INVALID_SPEC_RETRY_SECONDS
        await sleep(delay)
