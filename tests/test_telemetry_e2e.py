"""The worker's /metrics during and after a real run: the counters add up.

A :class:`workers.running.Worker` consumes a queue on the moto server and delivers to the
webhook simulator (with 500s and 429s), fed conversations with duplicates and poison bodies
while it runs. /metrics is scraped over HTTP throughout; every scrape is one consistent
snapshot (the handler renders in the event loop), so the identities must hold on each:

    received = delivered + filtered + duplicates + dead-lettered + retried + returned + in flight
    deleted  = delivered + filtered + duplicates + dead-lettered            (once settled)

and at the end they must match what the simulator accepted and what the feeder sent. The
scraped exposition also passes ``promtool check metrics``, and the run's JSON log holds
one line per delivery and not one of the events' phone numbers.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import logging
from collections.abc import Mapping

import httpx
from prometheus_client import parser

from fanout_lab import harness
from fanout_lab.simulators import webhook
from tests import test_telemetry_promtool as promtool_checks
from workers import running, telemetry
from workers.telemetry import logs

QUEUE = "telemetry-e2e"
_MAX_SCRAPES = 400

Samples = Mapping[tuple[str, frozenset[tuple[str, str]]], float]


def _parse(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in parser.text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def _sum(samples: Samples, name: str, **labels: str) -> float:
    wanted = set(labels.items()) | {("queue", QUEUE)}
    return sum(value for (sample, keys), value in samples.items() if sample == name and wanted <= keys)


def _sink_sum(samples: Samples, name: str = "fanout_sink_requests_total", **labels: str) -> float:
    wanted = set(labels.items()) | {("sink", "webhook")}
    return sum(value for (sample, keys), value in samples.items() if sample == name and wanted <= keys)


def _settled(samples: Samples) -> float:
    return sum(
        _sum(samples, name)
        for name in (
            "fanout_events_delivered_total",
            "fanout_events_filtered_total",
            "fanout_duplicates_suppressed_total",
            "fanout_dead_lettered_total",
        )
    )


def _accounted(samples: Samples) -> float:
    # Each receive ends at most once: settled, or handed back to SQS. Retries are not counted
    # here: one receive may be retried several times in place (a FIFO conversation's event
    # waits out its backoff in our hands; a sink-wide failure keeps the message until the
    # sink takes work), so fanout_retries_total may exceed the receives.
    return _settled(samples) + _sum(samples, "fanout_messages_returned_total")


async def test_counters_add_up_during_and_after_an_end_to_end_run(sqs: object) -> None:
    source = await harness.make_queue(sqs, QUEUE)
    dead = await harness.make_queue(sqs, QUEUE + "-dlq")
    scrapes: list[dict[tuple[str, frozenset[tuple[str, str]]], float]] = []
    log_stream = io.StringIO()
    root = logging.getLogger()
    levels = {name: logging.getLogger(name).level for name in ["", *logs.WIRE_LOGGERS]}
    telemetry.configure_logging("DEBUG", stream=log_stream)
    async with (
        webhook.WebhookSimulator(fail_ratio=0.05, throttle_ratio=0.05, retry_after=1, seed=11) as sim,
        httpx.AsyncClient(timeout=10) as client,
    ):
        worker = running.Worker(
            harness.consumer(harness.manifest(queue_url=source, sink_url=sim.url, dead_letter_url=dead)),
            http_host="127.0.0.1",
            http_port=0,
        )
        stop = asyncio.Event()
        task = asyncio.create_task(worker.run(stop))
        try:
            await asyncio.wait_for(worker.wait_started(), timeout=30)
            assert worker.http_url is not None

            async def scrape() -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
                assert worker.http_url is not None
                response = await client.get(worker.http_url + "/metrics")
                assert response.status_code == 200
                scrapes.append(_parse(response.text))
                return scrapes[-1]

            baseline = await scrape()
            feeding = asyncio.create_task(
                harness.feed(sqs, source, conversations=20, length=6, poison_ratio=0.03, seed=5)
            )
            while not feeding.done() and len(scrapes) < _MAX_SCRAPES:
                await scrape()
                await asyncio.sleep(0.2)
            traffic = await feeding

            async def finished() -> bool:
                visible, in_flight = await harness.queue_counts(sqs, source)
                samples = await scrape()
                return (
                    visible == 0
                    and in_flight == 0
                    and len(sim.accepted) >= len(traffic.correlation_ids)
                    and _sum(samples, "fanout_in_flight_messages") == 0
                    and _sum(samples, "fanout_messages_deleted_total") == _settled(samples)
                )

            assert await harness.wait_until(finished, timeout=90, interval=0.3), "the run did not settle"
            final = await scrape()
            exposition = (await client.get(worker.http_url + "/metrics")).content
            assert _sum(final, "fanout_worker_ready") == 1
        finally:
            stop.set()
            await asyncio.wait_for(task, timeout=30)
            for handler in list(root.handlers):
                if isinstance(handler.formatter, telemetry.JsonFormatter):
                    root.removeHandler(handler)
            for name, level in levels.items():
                logging.getLogger(name).setLevel(level)

    assert len(scrapes) >= 3
    # Every scrape: nothing settled that was not received; counters never go down.
    for samples in scrapes:
        assert _accounted(samples) <= _sum(samples, "fanout_messages_received_total")
        assert _sum(samples, "fanout_messages_deleted_total") <= _settled(samples)
    for earlier, later in itertools.pairwise(scrapes):
        for key, value in earlier.items():
            if key[0].endswith(("_total", "_count", "_bucket")):
                assert later.get(key, 0.0) >= value, key

    received = _sum(final, "fanout_messages_received_total")
    delivered = _sum(final, "fanout_events_delivered_total")
    # Every receive was settled, handed back, or retried through SQS (the rest of the retries
    # happened in place): no receive is unaccounted for, and none counted twice.
    assert _accounted(final) <= received <= _accounted(final) + _sum(final, "fanout_retries_total")
    assert delivered == len(traffic.correlation_ids) == len(sim.accepted)
    assert _sum(final, "fanout_events_filtered_total") == 0
    # A message redelivered after its event was delivered is a duplicate too, so at least.
    assert _sum(final, "fanout_duplicates_suppressed_total") >= traffic.duplicates > 0
    assert _sum(final, "fanout_dead_lettered_total", reason_class="poison") == traffic.poison > 0
    assert _sum(final, "fanout_dead_lettered_total") == traffic.poison
    assert len(await harness.drain_queue(sqs, dead)) == traffic.poison
    assert _sum(final, "fanout_messages_deleted_total") == _settled(final)
    assert sim.status_counts.get(500, 0) > 0
    assert sim.status_counts.get(429, 0) > 0, "faults were injected"
    assert _sum(final, "fanout_retries_total", reason_class="transient") > 0
    assert _sum(final, "fanout_retries_total", reason_class="throttled") > 0
    assert _sum(final, "fanout_delete_failures_total") == 0
    assert _sum(final, "fanout_receipt_expired_total") == 0
    # Every delivery observed its processing time and both end-to-end clocks.
    assert _sum(final, "fanout_processing_seconds_count") == delivered
    assert _sum(final, "fanout_end_to_end_seconds_count", clock="sqs_sent") == delivered
    assert _sum(final, "fanout_end_to_end_seconds_count", clock="event_time") == delivered
    assert _sum(final, "fanout_active_lanes") == 0

    # The sink's own series, in the worker's registry (compared with the first scrape).
    def sink_delta(**labels: str) -> float:
        return _sink_sum(final, **labels) - _sink_sum(baseline, **labels)

    assert sink_delta() == sum(sim.status_counts.values())
    assert sink_delta(outcome="delivered") == delivered
    assert sink_delta(outcome="throttled") == sim.status_counts[429]
    assert _sink_sum(final, name="fanout_sink_circuit_state") == 0

    result = promtool_checks.run_promtool(
        promtool_checks.promtool_path(), "check", "metrics", stdin=exposition
    )
    assert result.returncode == 0, result.stdout + result.stderr

    # The run's own log: JSON lines, one per delivery, and not one phone number in it.
    lines = [json.loads(line) for line in log_stream.getvalue().splitlines()]
    assert sum(1 for line in lines if line.get("msg") == "delivered") == delivered
    phone_numbers = {
        str(event.detail["eventBody"][field])
        for event in traffic.events
        for field in ("ani", "dnis")
        if event.detail["eventBody"].get(field)
    }
    assert phone_numbers
    text = log_stream.getvalue()
    leaking = sorted({line["logger"] for line in lines if any(n in json.dumps(line) for n in phone_numbers)})
    assert sorted(number for number in phone_numbers if number in text) == [], leaking
