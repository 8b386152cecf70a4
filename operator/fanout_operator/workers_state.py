"""What the running workers say about their sink, read from their ``/metrics``.

``autoscaling`` asks once per poll; the scaling decision uses the answer for two things: hold
instead of scaling up while any replica reports its sink paused or its circuit not closed
(``fanout_sink_paused``, ``fanout_sink_circuit_state``), and cap the fleet by the sink's rate
limit divided by the measured per-replica request rate (``fanout_sink_requests_total``, a
counter, so two scrapes of the same pod make one rate).

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
    try:
        for family in prometheus_client.parser.text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "fanout_sink_paused":
                    paused = paused or sample.value >= 1
                elif sample.name == "fanout_sink_circuit_state":
                    circuit = max(circuit, int(sample.value))
                elif sample.name == "fanout_sink_requests_total":
                    requests = (requests or 0.0) + sample.value
    except ValueError as error:
        raise MetricsError(str(error)) from error
    return PodSample(paused=paused, circuit=circuit, requests_total=requests)


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
    """The fleet's view of its sink: throttled anywhere, and the mean per-replica request rate."""
    if not current:
        return None
    throttled = any(r.sample.paused or r.sample.circuit != CIRCUIT_CLOSED for r in current)
    rates: list[float] = []
    for reading in current:
        before = previous.get(reading.pod)
        if before is None or before.sample.requests_total is None or reading.sample.requests_total is None:
            continue
        elapsed = reading.at - before.at
        delta = reading.sample.requests_total - before.sample.requests_total
        if elapsed > 0 and delta >= 0:  # a negative delta is a restarted pod
            rates.append(delta / elapsed)
    rate = sum(rates) / len(rates) if rates else None
    return scaling.SinkReport(throttled=throttled, requests_per_second_per_replica=rate)


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
