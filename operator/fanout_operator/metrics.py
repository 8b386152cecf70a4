"""Every Prometheus metric the operator exports, and the small HTTP server that serves them.

Owned here so names and label cardinality are reviewed in one place. Every series carries
``namespace`` and ``consumer`` (the FanoutConsumer's namespace and name: one series per
resource the operator runs); the only other labels are small enums (:class:`Direction`,
:class:`QueueRole`) and the ``reason`` of our own queue error tree (``queues.QueueError``
subclasses), never queue URLs, pod names or message ids. The chart's alert rules and dashboard
(helm/fanout-consumer/files/) query these names; tests/test_telemetry_promtool.py checks
they all exist.

Who writes what: ``autoscaling`` holds one :class:`ConsumerMetrics` per FanoutConsumer and
records each poll (queue depth, the decision, ready replicas, the workers' sink report, the
dead-letter queue's depth, queue read errors); ``handlers`` builds one :class:`OperatorMetrics`
per process at start-up, serves it with :class:`MetricsServer` (``--metrics-port``), and calls
:meth:`ConsumerMetrics.forget` when a resource's scaling daemon ends (the resource is deleted,
the operator stops, or a peer takes over), so a gone consumer leaves no stale series behind.

The metrics live in a registry of their own (not prometheus_client's global one): the
exposition holds the operator's series only, and each operator run (and each test) starts
from zero.

What a value means when it cannot be known: a series is REMOVED rather than left at a stale or
made-up number — the depth gauges while the queue cannot be read, ``dead_letter_messages``
without ``spec.deadLetter.queueUrl`` or while the DLQ cannot be read, ``sink_throttled`` while
no worker answers. There is no oldest-message-age gauge: SQS has no attribute for it (only
CloudWatch's ``ApproximateAgeOfOldestMessage``), and peeking at messages would bump their
receive count towards the redrive policy. The workers' ``fanout_end_to_end_seconds`` is the
age signal instead.
"""

from __future__ import annotations

import contextlib
import enum
from collections.abc import Mapping

import aiohttp.web
import prometheus_client

from fanout_core import probing
from fanout_operator import queues, scaling

LABELS = ("namespace", "consumer")


class Direction(enum.StrEnum):
    """The ``direction`` of a scaling decision: the replica count went up, down, or stayed."""

    UP = "up"
    DOWN = "down"
    HOLD = "hold"

    @classmethod
    def of(cls, current: int, replicas: int) -> Direction:
        if replicas > current:
            return cls.UP
        if replicas < current:
            return cls.DOWN
        return cls.HOLD


class RedriveOutcome(enum.StrEnum):
    """What a declarative redrive did with a dead letter."""

    MOVED = "moved"
    SKIPPED = "skipped"
    HELD = "held"
    FAILED = "failed"


class QueueRole(enum.StrEnum):
    """Which of a consumer's queues a read error is about."""

    SOURCE = "source"
    DEAD_LETTER = "dead_letter"


class OperatorMetrics:
    """The operator's metric families, in a registry of their own."""

    def __init__(self, registry: prometheus_client.CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else prometheus_client.CollectorRegistry()
        r = self.registry
        gauge, counter = prometheus_client.Gauge, prometheus_client.Counter
        self.backlog = gauge(
            "fanout_operator_backlog_messages",
            "Visible messages waiting in the consumer's queue (ApproximateNumberOfMessages).",
            LABELS,
            registry=r,
        )
        self.in_flight = gauge(
            "fanout_operator_in_flight_messages",
            "Messages received and not yet deleted (ApproximateNumberOfMessagesNotVisible).",
            LABELS,
            registry=r,
        )
        self.delayed = gauge(
            "fanout_operator_delayed_messages",
            "Messages not yet visible because of a delivery delay (ApproximateNumberOfMessagesDelayed).",
            LABELS,
            registry=r,
        )
        self.desired_replicas = gauge(
            "fanout_operator_desired_replicas",
            "Worker replicas the operator set on the Deployment at its last decision.",
            LABELS,
            registry=r,
        )
        self.actual_replicas = gauge(
            "fanout_operator_actual_replicas",
            "Ready worker replicas (the Deployment's readyReplicas) at the last poll.",
            LABELS,
            registry=r,
        )
        self.scaling_decisions = counter(
            "fanout_operator_scaling_decisions",
            "Scaling decisions applied, by direction (hold = the replica count stayed).",
            [*LABELS, "direction"],
            registry=r,
        )
        self.dead_letter = gauge(
            "fanout_operator_dead_letter_messages",
            "Visible messages in the consumer's dead-letter queue (spec.deadLetter.queueUrl).",
            LABELS,
            registry=r,
        )
        self.queue_errors = counter(
            "fanout_operator_queue_errors",
            "Failed reads of a consumer's queue attributes, by queue role and reason.",
            [*LABELS, "queue_role", "reason"],
            registry=r,
        )
        self.sink_throttled = gauge(
            "fanout_operator_sink_throttled",
            "1 while any worker reports its sink paused or its circuit not closed, else 0.",
            LABELS,
            registry=r,
        )
        self.topology_findings = gauge(
            "fanout_operator_topology_findings",
            "Problems the last check found in the consumer's AWS topology, by reason and severity "
            "(status.topology.findings; 0 series: none).",
            [*LABELS, "reason", "severity"],
            registry=r,
        )
        self.redrive_messages = counter(
            "fanout_operator_redrive_messages",
            "Dead letters handled by declarative redrives, by outcome (moved, skipped, held, failed).",
            [*LABELS, "outcome"],
            registry=r,
        )
        self.redrive_running = gauge(
            "fanout_operator_redrive_running",
            "1 while a declarative redrive of the consumer's dead-letter queue runs, else 0.",
            LABELS,
            registry=r,
        )
        # The operator process itself: memory, CPU, open files, GC.
        prometheus_client.ProcessCollector(registry=r)
        prometheus_client.PlatformCollector(registry=r)
        prometheus_client.GCCollector(registry=r)

    def consumer(self, namespace: str, name: str) -> ConsumerMetrics:
        return ConsumerMetrics(self, namespace, name)

    def exposition(self) -> bytes:
        """The text a scrape of /metrics returns."""
        return prometheus_client.generate_latest(self.registry)


class ConsumerMetrics:
    """The series of one FanoutConsumer; the only writer of :class:`OperatorMetrics`."""

    def __init__(self, families: OperatorMetrics, namespace: str, name: str) -> None:
        self._families = families
        self._labels = (namespace, name)
        # Which (queue_role, reason) error series exist, so forget() can remove them.
        self._error_labels: set[tuple[str, str]] = set()
        self._topology_labels: set[tuple[str, str]] = set()

    def queue_depth(self, depth: queues.Depth | None) -> None:
        """The source queue's depth as just read; ``None`` (unreadable) removes the gauges."""
        f = self._families
        if depth is None:
            for gauge in (f.backlog, f.in_flight, f.delayed):
                self._remove(gauge, *self._labels)
            return
        f.backlog.labels(*self._labels).set(depth.visible)
        f.in_flight.labels(*self._labels).set(depth.in_flight)
        f.delayed.labels(*self._labels).set(depth.delayed)

    def decided(self, current: int, decision: scaling.Decision, ready: int) -> None:
        """A decision applied: the replicas set, the ready ones, and which way it went."""
        self._families.desired_replicas.labels(*self._labels).set(decision.replicas)
        self._families.actual_replicas.labels(*self._labels).set(ready)
        direction = Direction.of(current, decision.replicas)
        self._families.scaling_decisions.labels(*self._labels, direction.value).inc()

    def sink(self, report: scaling.SinkReport | None) -> None:
        """What the workers said about their sink; ``None`` (nobody answered) removes the gauge."""
        self._set_or_remove(self._families.sink_throttled, None if report is None else int(report.throttled))

    def dead_letters(self, visible: int | None) -> None:
        """The dead-letter queue's visible messages; ``None`` (no DLQ, unreadable) removes it."""
        self._set_or_remove(self._families.dead_letter, visible)

    def queue_error(self, error: queues.QueueError, role: QueueRole) -> None:
        labels = (role.value, error.reason)
        self._error_labels.add(labels)
        self._families.queue_errors.labels(*self._labels, *labels).inc()

    def topology(self, counts: Mapping[tuple[str, str], int]) -> None:
        """The last topology check: findings per (reason, severity); the others are removed."""
        family = self._families.topology_findings
        for labels in self._topology_labels - set(counts):
            self._remove(family, *self._labels, *labels)
        for labels, count in counts.items():
            family.labels(*self._labels, *labels).set(count)
        self._topology_labels = set(counts)

    def redriven(self, outcome: RedriveOutcome, count: int) -> None:
        """A declarative redrive handled ``count`` more dead letters with ``outcome``."""
        self._families.redrive_messages.labels(*self._labels, outcome.value).inc(count)

    def redrive_running(self, running: bool) -> None:
        self._families.redrive_running.labels(*self._labels).set(int(running))

    def forget(self) -> None:
        """Remove every series of this consumer (its resource is gone, or no longer ours)."""
        f = self._families
        for gauge in (
            f.backlog,
            f.in_flight,
            f.delayed,
            f.desired_replicas,
            f.actual_replicas,
            f.dead_letter,
            f.sink_throttled,
            f.redrive_running,
        ):
            self._remove(gauge, *self._labels)
        for outcome in RedriveOutcome:
            self._remove(f.redrive_messages, *self._labels, outcome.value)
        for direction in Direction:
            self._remove(f.scaling_decisions, *self._labels, direction.value)
        for labels in self._error_labels:
            self._remove(f.queue_errors, *self._labels, *labels)
        self._error_labels.clear()
        self.topology({})

    def _set_or_remove(self, gauge: prometheus_client.Gauge, value: float | None) -> None:
        if value is None:
            self._remove(gauge, *self._labels)
        else:
            gauge.labels(*self._labels).set(value)

    @staticmethod
    def _remove(metric: prometheus_client.Gauge | prometheus_client.Counter, *labels: str) -> None:
        with contextlib.suppress(KeyError):  # a series that was never set
            metric.remove(*labels)


class MetricsServer:
    """``GET /metrics`` of an :class:`OperatorMetrics`, on the operator's own event loop."""

    def __init__(self, families: OperatorMetrics, *, host: str, port: int) -> None:
        self._families = families
        self._host = host
        self._port = port
        self._listening: probing.Listening | None = None
        self.port: int | None = None

    async def start(self) -> None:
        """Listen; an address already in use raises ``OSError`` (the operator must not start)."""
        app = aiohttp.web.Application()
        probing.add_probes(app, readiness=None, exposition=self._families.exposition)
        self._listening = await probing.listen(app, self._host, self._port)
        self.port = self._listening.port

    async def stop(self) -> None:
        if self._listening is not None:
            await self._listening.close()
            self._listening = None
