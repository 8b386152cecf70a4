"""One FanoutConsumer's scaling loop: observe, decide (``scaling``), apply, report.

``handlers`` runs ``looping.run`` over :meth:`Autoscaler.poll` in a kopf daemon per resource.
Each round reads the live object's spec (through ``guardrails.admit``), the queue's depth
(``queues``), the Deployment and, when asked to, the workers' metrics (``workers_state``); asks
``scaling.decide``; scales through ``reconciling.scale``; and reports the outcome to the
consumer's ``reporting.StatusWriter`` (status figures, conditions, the scaler's memory, and a
ScaledUp / ScaledDown Event when the size changes). It returns how long to wait before the next
round: the polling interval, or an exponential backoff after failures.

The scaler's memory (:class:`Memory`: the stabilization window, when the queue became empty,
the last measured throughput, failures in a row) has one source of truth: this object, for as
long as this process speaks for the consumer. Every round — read or failed — updates it, and
every status write carries it. It is read back from the status only once, when the loop starts
(after a restart or a peer's takeover), so a failed round can never bring back an older copy.

When given a ``metrics.ConsumerMetrics`` it records each round there too: the depth (removed
while unreadable), the decision and the ready replicas, the workers' sink report, queue read
errors, and the dead-letter queue's depth (one more GetQueueAttributes, only then: nothing
else needs it, and a DLQ that cannot be read is reported, never a reason to degrade).

Failure rules: a queue that cannot be read, or a cluster call that fails, keeps the current
replicas (never scale to zero on an error), marks ``Degraded`` with the cause, posts a Warning
Event when it starts, and backs off. A spec the guardrails reject is not scaled (the reconcile
handler has marked it).

The wall clock (``clock``) is injected: persisted times must survive restarts, and tests pass
their own.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from fanout_core import spec
from fanout_operator import (
    conditions,
    guardrails,
    kube,
    metrics,
    queues,
    reconciling,
    rendering,
    reporting,
    scaling,
    settings,
    status,
    workers_state,
)

logger = logging.getLogger(__name__)

INVALID_SPEC_RETRY_SECONDS = 60.0


@dataclasses.dataclass(frozen=True)
class Memory:
    """What the scaling loop carries from one round to the next."""

    state: scaling.State = dataclasses.field(default_factory=scaling.State)
    failures: int = 0

    @classmethod
    def from_status(cls, saved: status.ScalerMemory | None) -> Memory:
        if saved is None:
            return cls()
        state = scaling.State(
            empty_since=saved.empty_since,
            recommendations=tuple(
                scaling.Recommendation(at=r.at, replicas=r.replicas) for r in saved.recommendations
            ),
            per_replica_throughput=saved.per_replica_throughput,
        )
        return cls(state=state, failures=saved.consecutive_failures)

    def to_status(self) -> status.ScalerMemory:
        return status.ScalerMemory(
            empty_since=self.state.empty_since,
            recommendations=[
                status.RecommendationRecord(at=r.at, replicas=r.replicas) for r in self.state.recommendations
            ],
            consecutive_failures=self.failures,
            per_replica_throughput=self.state.per_replica_throughput,
        )


@dataclasses.dataclass(frozen=True)
class Fleet:
    """The worker Deployment as this round found it."""

    current: int
    ready: int
    sink: scaling.SinkReport | None


class Autoscaler:
    """The scaling loop's memory and I/O for one FanoutConsumer."""

    def __init__(
        self,
        *,
        client: kube.KubeClient,
        depth_reader: queues.DepthReader,
        observer: workers_state.FleetObserver | None,
        settings: settings.OperatorSettings,
        writer: reporting.StatusWriter | None = None,
        clock: Callable[[], float] = time.time,
        recorder: metrics.ConsumerMetrics | None = None,
    ) -> None:
        self._client = client
        self._recorder = recorder
        self._depth_reader = depth_reader
        self._observer = observer
        self._settings = settings
        self._writer = writer
        self._clock = clock
        self._memory: Memory | None = None

    async def poll(self, body: Mapping[str, Any]) -> float:
        """One round; returns the seconds to wait before the next."""
        now = self._clock()
        owner = rendering.owner_of(body)
        try:
            consumer = guardrails.admit(
                body.get("spec"), owner.namespace, self._settings.guardrails, self._settings.workers
            )
        except guardrails.Rejected as error:
            # The reconcile handler has marked it; a fixed spec arrives in the live body.
            logger.info("%s/%s: not scaling: %s", owner.namespace, owner.name, error)
            return INVALID_SPEC_RETRY_SECONDS
        memory = self._recall(body)
        try:
            depth = await self._read_depth(consumer)
        except queues.QueueError as error:
            return await self._hold(body, consumer, memory, error.reason, str(error), now)
        try:
            fleet = await self._observe_fleet(owner, consumer, body, now)
            observation = scaling.Observation(
                visible=depth.visible,
                in_flight=depth.in_flight,
                delayed=depth.delayed,
                current_replicas=fleet.current,
                sink=fleet.sink,
            )
            decision = scaling.decide(scaling.Policy.from_spec(consumer), observation, memory.state, now)
            if decision.replicas != fleet.current:
                await reconciling.scale(self._client, owner, fleet.current, decision.replicas)
        except kube.KubeError as error:
            return await self._hold(body, consumer, memory, "KubernetesError", str(error), now)
        self._memory = Memory(state=decision.state)
        if self._recorder is not None:
            self._recorder.decided(fleet.current, decision, fleet.ready)
            self._recorder.sink(fleet.sink)
        polled = self._polled(owner, consumer, observation, fleet.ready, decision, self._memory)
        await self._report(body, polled, now)
        return consumer.scaling.polling_interval_seconds

    def _recall(self, body: Mapping[str, Any]) -> Memory:
        """The one copy of the memory; read from the status only on the loop's first round."""
        if self._memory is None:
            self._memory = Memory.from_status(status.parse(body.get("status")).scaler)
        return self._memory

    async def _read_depth(self, consumer: spec.FanoutConsumerSpec) -> queues.Depth:
        try:
            depth = await self._depth_reader.depth(consumer.queue.url, consumer.queue.region)
        except queues.QueueError as error:
            if self._recorder is not None:
                self._recorder.queue_error(error, metrics.QueueRole.SOURCE)
                self._recorder.queue_depth(None)
            raise
        if self._recorder is not None:
            self._recorder.queue_depth(depth)
        await self._record_dead_letters(consumer)
        return depth

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

    async def _observe_fleet(
        self, owner: rendering.Owner, consumer: spec.FanoutConsumerSpec, body: Mapping[str, Any], now: float
    ) -> Fleet:
        """The Deployment's size and readiness (recreating it when it is gone), and the sink's state."""
        deployment = await self._client.get(reconciling.deployment_path(owner))
        if deployment is None:
            last_known = status.parse(body.get("status")).replicas
            applied = await reconciling.reconcile(
                self._client, owner, consumer, self._settings.workers, last_known
            )
            current, ready = applied.deployment_replicas, 0
        else:
            current = int(deployment.get("spec", {}).get("replicas", 1))
            ready = int((deployment.get("status") or {}).get("readyReplicas") or 0)
        return Fleet(current=current, ready=ready, sink=await self._sink_report(owner, current, now))

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

    @staticmethod
    def _polled(
        owner: rendering.Owner,
        consumer: spec.FanoutConsumerSpec,
        observation: scaling.Observation,
        ready: int,
        decision: scaling.Decision,
        memory: Memory,
    ) -> conditions.Polled:
        return conditions.Polled(
            queue=consumer.queue.name,
            selector=rendering.selector_string(owner),
            previous_replicas=observation.current_replicas,
            replicas=decision.replicas,
            desired_replicas=decision.recommendation,
            ready_replicas=ready,
            backlog=status.Backlog(
                visible=observation.visible,
                in_flight=observation.in_flight,
                delayed=observation.delayed,
                total=observation.backlog,
            ),
            limit=str(decision.limit),
            reason=decision.reason,
            memory=memory.to_status(),
        )

    async def _hold(
        self,
        body: Mapping[str, Any],
        consumer: spec.FanoutConsumerSpec,
        memory: Memory,
        reason: str,
        message: str,
        now: float,
    ) -> float:
        """A round that could not see: keep the fleet, remember holding it, degrade, back off."""
        owner = rendering.owner_of(body)
        held = status.parse(body.get("status")).replicas
        with contextlib.suppress(kube.KubeError):
            deployment = await self._client.get(reconciling.deployment_path(owner))
            if deployment is not None:
                held = int(deployment.get("spec", {}).get("replicas", held))
        window = consumer.scaling.scale_down_stabilization_seconds
        self._memory = Memory(
            state=scaling.remember(memory.state, held, now, window), failures=memory.failures + 1
        )
        logger.warning("%s/%s degraded: %s: %s", owner.namespace, owner.name, reason, message)
        blind = conditions.Blind(reason=reason, message=message, memory=self._memory.to_status())
        await self._report(body, blind, now)
        return scaling.next_poll_delay(consumer.scaling.polling_interval_seconds, self._memory.failures)

    async def _report(self, body: Mapping[str, Any], outcome: conditions.Outcome, now: float) -> None:
        writer = self._writer_for(rendering.owner_of(body))
        try:
            await writer.report(
                outcome, current=body.get("status"), generation=status.generation_of(body), now=now
            )
        except kube.KubeError as error:
            owner = rendering.owner_of(body)
            logger.warning("%s/%s: status not written: %s", owner.namespace, owner.name, error)

    def _writer_for(self, owner: rendering.Owner) -> reporting.StatusWriter:
        if self._writer is None:
            self._writer = reporting.StatusWriter(self._client, owner, instance=self._settings.identity)
        return self._writer
