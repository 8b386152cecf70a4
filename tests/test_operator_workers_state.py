"""Reading the workers' /metrics: real Prometheus exposition served over loopback HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import aiohttp.web
import prometheus_client
import pytest

from fanout_operator import scaling, workers_state


class FakeWorkerMetrics:
    """A worker's metrics registry with the names the runtime exports."""

    def __init__(self) -> None:
        self.registry = prometheus_client.CollectorRegistry()
        self.paused = prometheus_client.Gauge("fanout_sink_paused", "p", ["sink"], registry=self.registry)
        self.circuit = prometheus_client.Gauge(
            "fanout_sink_circuit_state", "c", ["sink"], registry=self.registry
        )
        self.requests = prometheus_client.Counter(
            "fanout_sink_requests", "r", ["sink", "outcome"], registry=self.registry
        )
        self.concurrency = prometheus_client.Gauge(
            "fanout_sink_concurrency_limit", "c", ["sink"], registry=self.registry
        )
        self.latency = prometheus_client.Histogram(
            "fanout_sink_request_seconds", "l", ["sink", "outcome"], registry=self.registry
        )
        self.paused.labels("webhook").set(0)
        self.circuit.labels("webhook").set(0)

    def text(self) -> str:
        return prometheus_client.generate_latest(self.registry).decode()


@pytest.fixture
async def served() -> AsyncIterator[tuple[FakeWorkerMetrics, str]]:
    metrics = FakeWorkerMetrics()

    async def handle(_: aiohttp.web.Request) -> aiohttp.web.Response:
        return aiohttp.web.Response(text=metrics.text(), content_type="text/plain")

    app = aiohttp.web.Application()
    app.router.add_get("/metrics", handle)
    runner = aiohttp.web.AppRunner(app)
    await runner.setup()
    site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield metrics, f"http://127.0.0.1:{port}/metrics"
    finally:
        await runner.cleanup()


def test_parse_reads_pause_circuit_and_sums_request_outcomes() -> None:
    metrics = FakeWorkerMetrics()
    metrics.requests.labels("webhook", "delivered").inc(30)
    metrics.requests.labels("webhook", "throttled").inc(5)
    metrics.circuit.labels("webhook").set(2)
    sample = workers_state.parse_metrics(metrics.text())
    assert sample == workers_state.PodSample(
        paused=False,
        circuit=2,
        requests_total=35,
        concurrency_limit=None,
        latency_sum=None,
        latency_count=None,
    )


def test_parse_rejects_garbage() -> None:
    with pytest.raises(workers_state.MetricsError):
        workers_state.parse_metrics("fanout_sink_paused{sink= nope\n")


def test_summarize_rates_and_throttle() -> None:
    def reading(pod: str, at: float, total: float, paused: bool = False) -> workers_state.Reading:
        return workers_state.Reading(pod, at, workers_state.PodSample(paused, 0, total))

    # Without latency figures the observed request rate stands in.

    previous = {"a": reading("a", 0, 100), "b": reading("b", 0, 500)}
    current = [reading("a", 10, 300), reading("b", 10, 20), reading("c", 10, 50, paused=True)]
    report = workers_state.summarize(previous, current)
    # b restarted (counter went down), c is new: only a gives a rate.
    assert report == scaling.SinkReport(throttled=True, per_replica_throughput=20)
    assert workers_state.summarize(previous, []) is None


def test_targets_only_running_pods_with_ips() -> None:
    pods: list[dict[str, Any]] = [
        {
            "metadata": {"name": "a", "annotations": {"prometheus.io/port": "9090"}},
            "status": {"phase": "Running", "podIP": "10.0.0.1"},
        },
        {"metadata": {"name": "b"}, "status": {"phase": "Pending", "podIP": "10.0.0.2"}},
        {"metadata": {"name": "c"}, "status": {"phase": "Running"}},
        {"metadata": {"name": "d"}, "status": {"phase": "Running", "podIP": "fd00::5"}},
    ]
    assert workers_state.targets(pods) == [
        workers_state.Target("a", "http://10.0.0.1:9090/metrics"),
        workers_state.Target("d", "http://[fd00::5]:8080/metrics"),
    ]


def test_capacity_is_concurrency_over_mean_latency() -> None:
    def reading(at: float, requests: float, seconds: float) -> workers_state.Reading:
        sample = workers_state.PodSample(
            False, 0, requests, concurrency_limit=4, latency_sum=seconds, latency_count=requests
        )
        return workers_state.Reading("p", at, sample)

    # 50 requests of 0.5 s each, 4 at a time: the replica could send 8 req/s
    # (it sent 5 req/s: demand, not capacity).
    report = workers_state.summarize({"p": reading(0, 0, 0)}, [reading(10, 50, 25)])
    assert report == scaling.SinkReport(throttled=False, per_replica_throughput=8.0)


async def test_observer_measures_rate_across_two_scrapes(served: tuple[FakeWorkerMetrics, str]) -> None:
    metrics, url = served
    async with aiohttp.ClientSession() as session:
        observer = workers_state.FleetObserver(session)
        target = [workers_state.Target("pod-1", url)]
        metrics.requests.labels("webhook", "delivered").inc(10)
        first = await observer.report(target, now=100.0)
        assert first == scaling.SinkReport(throttled=False, per_replica_throughput=None)
        metrics.requests.labels("webhook", "delivered").inc(50)
        metrics.paused.labels("webhook").set(1)
        second = await observer.report(target, now=110.0)
        assert second == scaling.SinkReport(throttled=True, per_replica_throughput=5.0)


async def test_unreachable_pods_mean_unknown() -> None:
    async with aiohttp.ClientSession() as session:
        observer = workers_state.FleetObserver(session, timeout=1)
        dead = [workers_state.Target("gone", "http://127.0.0.1:9/metrics")]
        assert await observer.report(dead, now=1.0) is None
