"""What the running workers say about their sink, read from their ``/metrics``.

``autoscaling`` asks once per poll; the scaling decision uses the answer for two things: hold
instead of scaling up while any replica reports its sink paused or its circuit not closed
(``fanout_sink_paused``, ``fanout_sink_circuit_state``), and cap the fleet by the sink's rate
limit divided by what one replica can send: its concurrency limit
(``fanout_sink_concurrency_limit``) over its mean request latency (``fanout_sink_request_seconds``
sum / count between two scrapes). That is a replica's capacity even while the shared rate limit
holds it back; when the latency is unknown the observed request rate
(``fanout_sink_requests_total`` between two scrapes) stands in.

Parsing and summarising are pure (:func:`parse_metrics`, :func:`targets`, :func:`summarize`);
:class:`FleetObserver` does the HTTP and remembers the previous scrape. A pod that cannot be
scraped is left out; no pod answering means "unknown" (``None``), never "idle".
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
from collections.abc import Mapping, Sequence
from typing import Any

import aiohttp
import prometheus_client.parser

from fanout_operator import scaling

DEFAULT_PORT = 8080
CIRCUIT_CLOSED = 0


class MetricsError(Exception):
    """A /metrics body that is not Prometheus text."""


@dataclasses.dataclass(frozen=True)
class PodSample:
    paused: bool
    circuit: int
    requests_total: float | None
    concurrency_limit: float | None = None
    latency_sum: float | None = None
    latency_count: float | None = None


@dataclasses.dataclass(frozen=True)
class Reading:
    pod: str
    at: float
    sample: PodSample


@dataclasses.dataclass(frozen=True)
class Target:
    pod: str
    url: str


def parse_metrics(text: str) -> PodSample:
    paused = False
    circuit = CIRCUIT_CLOSED
    requests: float | None = None
    concurrency: float | None = None
    latency_sum: float | None = None
    latency_count: float | None = None
    try:
        for family in prometheus_client.parser.text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "fanout_sink_paused":
                    paused = paused or sample.value >= 1
                elif sample.name == "fanout_sink_circuit_state":
                    circuit = max(circuit, int(sample.value))
                elif sample.name == "fanout_sink_requests_total":
                    requests = (requests or 0.0) + sample.value
                elif sample.name == "fanout_sink_concurrency_limit":
                    concurrency = (concurrency or 0.0) + sample.value
                elif sample.name == "fanout_sink_request_seconds_sum":
                    latency_sum = (latency_sum or 0.0) + sample.value
                elif sample.name == "fanout_sink_request_seconds_count":
                    latency_count = (latency_count or 0.0) + sample.value
    except ValueError as error:
        raise MetricsError(str(error)) from error
    return PodSample(
        paused=paused,
        circuit=circuit,
        requests_total=requests,
        concurrency_limit=concurrency,
        latency_sum=latency_sum,
        latency_count=latency_count,
    )


def _delta(after: float | None, before: float | None) -> float | None:
    if after is None or before is None or after < before:  # absent, or a restarted pod
        return None
    return after - before


def throughput(before: Reading, after: Reading) -> float | None:
    """What one replica can send per second, from two readings of it."""
    elapsed = after.at - before.at
    if elapsed <= 0:
        return None
    calls = _delta(after.sample.latency_count, before.sample.latency_count)
    seconds = _delta(after.sample.latency_sum, before.sample.latency_sum)
    concurrency = after.sample.concurrency_limit
    if calls and seconds and concurrency:
        return concurrency / (seconds / calls)
    requests = _delta(after.sample.requests_total, before.sample.requests_total)
    return requests / elapsed if requests is not None else None


def targets(pods: Sequence[Mapping[str, Any]]) -> list[Target]:
    """Running pods with an IP, at the port their ``prometheus.io/port`` annotation names."""
    found: list[Target] = []
    for pod in pods:
        metadata = pod.get("metadata", {})
        pod_status = pod.get("status", {})
        address = pod_status.get("podIP")
        if pod_status.get("phase") != "Running" or not address or metadata.get("deletionTimestamp"):
            continue
        annotations = metadata.get("annotations") or {}
        port = annotations.get("prometheus.io/port", DEFAULT_PORT)
        path = annotations.get("prometheus.io/path", "/metrics")
        try:
            host = f"[{address}]" if ipaddress.ip_address(address).version == 6 else address
        except ValueError:
            continue
        found.append(Target(pod=str(metadata.get("name", address)), url=f"http://{host}:{port}{path}"))
    return found


def summarize(previous: Mapping[str, Reading], current: Sequence[Reading]) -> scaling.SinkReport | None:
    """The fleet's view of its sink: throttled anywhere, and the mean per-replica throughput."""
    if not current:
        return None
    throttled = any(r.sample.paused or r.sample.circuit != CIRCUIT_CLOSED for r in current)
    rates: list[float] = []
    for reading in current:
        before = previous.get(reading.pod)
        measured = throughput(before, reading) if before is not None else None
        if measured is not None:
            rates.append(measured)
    rate = sum(rates) / len(rates) if rates else None
    return scaling.SinkReport(throttled=throttled, per_replica_throughput=rate)


class FleetObserver:
    """Scrapes a fleet's pods and keeps the last reading of each for the next rate."""

    def __init__(self, session: aiohttp.ClientSession, *, timeout: float = 2.0) -> None:
        self._session = session
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._previous: dict[str, Reading] = {}

    async def _scrape(self, target: Target, now: float) -> Reading | None:
        try:
            async with self._session.get(target.url, timeout=self._timeout) as response:
                if response.status != 200:
                    return None
                text = await response.text()
            return Reading(pod=target.pod, at=now, sample=parse_metrics(text))
        except (aiohttp.ClientError, TimeoutError, MetricsError, UnicodeDecodeError):
            return None

    async def report(self, found: Sequence[Target], now: float) -> scaling.SinkReport | None:
        results = await asyncio.gather(*(self._scrape(target, now) for target in found))
        current = [reading for reading in results if reading is not None]
        report = summarize(self._previous, current)
        self._previous = {reading.pod: reading for reading in current}
        return report
