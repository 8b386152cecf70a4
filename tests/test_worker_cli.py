"""``fanout-worker`` as a process: bad configs exit 2 naming the field; SIGTERM drains and exits 0;
SIGKILL mid-run loses nothing and, with the DynamoDB store, delivers nothing twice."""

from __future__ import annotations

import asyncio
import os
import pathlib
import signal
import subprocess
import sys
from typing import Any

import pytest

from fanout_lab import harness
from fanout_lab.simulators import aws, webhook


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "workers", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        check=False,
    )


@pytest.mark.parametrize(
    ("mutate", "field", "problem"),
    [
        (lambda d: d["spec"]["queue"].pop("url"), "spec.queue.url", "Field required"),
        (lambda d: d["spec"]["queue"].__setitem__("maxMessages", "ten"), "spec.queue.maxMessages", "integer"),
        (
            lambda d: d["spec"]["queue"].__setitem__("maxMessages", 11),
            "spec.queue.maxMessages",
            "less than or equal",
        ),
        (
            lambda d: d["spec"]["sink"].__setitem__("type", "kafka"),
            "spec.sink.type",
            "'webhook', 'crm' or 'siem'",
        ),
        (lambda d: d["spec"]["sink"].__setitem__("rateLimt", {}), "spec.sink.rateLimt", "Extra inputs"),
        (lambda d: d["spec"].__setitem__("idempotency", {"store": "dynamodb"}), "spec.idempotency", "table"),
        (lambda d: d.__setitem__("kind", "Deployment"), "kind", "FanoutConsumer"),
    ],
)
def test_bad_config_exits_2_naming_the_field(
    tmp_path: pathlib.Path, mutate: Any, field: str, problem: str
) -> None:
    document = harness.manifest(queue_url="http://127.0.0.1:1/1/q", sink_url="http://127.0.0.1:1/")
    mutate(document)
    path = harness.write_manifest(tmp_path / "bad.yaml", document)
    result = run_cli("--config", str(path), "--http-port", "0")
    assert result.returncode == 2, result.stderr
    assert field in result.stderr and problem in result.stderr, result.stderr


def test_unreadable_and_unparsable_files_exit_2(tmp_path: pathlib.Path) -> None:
    missing = run_cli("--config", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 2 and "cannot read" in missing.stderr
    (tmp_path / "broken.yaml").write_text("spec: [unclosed")
    broken = run_cli("--config", str(tmp_path / "broken.yaml"))
    assert broken.returncode == 2 and "not valid YAML" in broken.stderr


def test_missing_secret_exits_2_naming_it(tmp_path: pathlib.Path) -> None:
    document = harness.manifest(queue_url="http://127.0.0.1:1/1/q", sink_url="http://127.0.0.1:1/")
    document["spec"]["sink"]["signingSecret"] = {"env": "FANOUT_TEST_SECRET_THAT_IS_NOT_SET"}
    path = harness.write_manifest(tmp_path / "secret.yaml", document)
    result = run_cli("--config", str(path), "--http-port", "0", env={"AWS_REGION": "us-east-1"})
    assert result.returncode == 2, result.stderr
    assert "spec.sink.signingSecret" in result.stderr
    assert "FANOUT_TEST_SECRET_THAT_IS_NOT_SET" in result.stderr


def test_no_region_anywhere_exits_2_naming_the_field(tmp_path: pathlib.Path) -> None:
    document = harness.manifest(queue_url="http://127.0.0.1:1/1/q", sink_url="http://127.0.0.1:1/")
    path = harness.write_manifest(tmp_path / "region.yaml", document)
    environment = {
        key: value for key, value in os.environ.items() if key not in ("AWS_REGION", "AWS_DEFAULT_REGION")
    }
    result = subprocess.run(
        [sys.executable, "-m", "workers", "--config", str(path), "--http-port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        env=environment,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "spec.queue.region" in result.stderr


async def start_worker(config: pathlib.Path, server: aws.MotoServer) -> asyncio.subprocess.Process:
    return await harness.start_worker(
        config, environment=server.environment(), stderr=asyncio.subprocess.PIPE
    )


async def test_sigterm_under_load_drains_and_exits_0_then_a_new_worker_finishes(
    sqs: Any, dynamodb: Any, moto_server: aws.MotoServer, tmp_path: pathlib.Path
) -> None:
    source = await harness.make_queue(sqs, "cli-sigterm")
    async with webhook.WebhookSimulator(latency=0.02) as sim:
        document = harness.manifest(queue_url=source, sink_url=sim.url, shutdown={"gracePeriodSeconds": 5})
        config = harness.write_manifest(tmp_path / "worker.yaml", document)
        traffic = await harness.feed(
            sqs, source, conversations=20, length=5, duplicate_ratio=0, poison_ratio=0, max_backlog=200
        )
        process = await start_worker(config, moto_server)
        assert await harness.wait_until(lambda: len(sim.accepted) >= 10, timeout=30)
        process.send_signal(signal.SIGTERM)
        returncode = await asyncio.wait_for(
            process.wait(), timeout=document["spec"]["shutdown"]["gracePeriodSeconds"] + 10
        )
        stderr = (await process.stderr.read()).decode() if process.stderr else ""
        assert returncode == 0, stderr
        assert len(sim.accepted) < len(traffic.events), "the test must stop the worker mid-run"

        second = await start_worker(config, moto_server)
        try:

            async def done() -> bool:
                return await harness.queue_counts(sqs, source) == (0, 0) and len(sim.accepted) >= len(
                    traffic.events
                )

            assert await harness.wait_until(done, timeout=60)
        finally:
            second.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(second.wait(), timeout=30) == 0
        # A pre-filled standard queue read by two concurrent long polls has no order to keep:
        # what SIGTERM must not break is exactly-once.
        harness.check_exactly_once(sim, traffic)


async def test_sigkill_mid_run_loses_nothing_and_delivers_nothing_twice_with_dynamodb(
    sqs: Any, dynamodb: Any, moto_server: aws.MotoServer, tmp_path: pathlib.Path
) -> None:
    await dynamodb.create_table(
        TableName="fanout-idempotency",
        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    source = await harness.make_queue(sqs, "cli-sigkill")
    dead = await harness.make_queue(sqs, "cli-sigkill-dlq")
    async with webhook.WebhookSimulator(latency=0.01, fail_ratio=0.03, seed=5) as sim:
        document = harness.manifest(
            queue_url=source,
            sink_url=sim.url,
            dead_letter_url=dead,
            queue={"visibilityTimeoutSeconds": 3},
            idempotency={"store": "dynamodb", "table": "fanout-idempotency"},
        )
        config = harness.write_manifest(tmp_path / "worker.yaml", document)
        process = await start_worker(config, moto_server)
        feeding = asyncio.create_task(harness.feed(sqs, source, conversations=25, length=6, seed=11))
        assert await harness.wait_until(lambda: len(sim.accepted) >= 30, timeout=30)
        process.kill()
        await process.wait()
        killed_at = len(sim.accepted)

        second = await start_worker(config, moto_server)
        try:
            traffic = await feeding

            async def done() -> bool:
                delivered = set(harness.accepted_correlation_ids(sim.accepted))
                return (
                    await harness.queue_counts(sqs, source) == (0, 0) and traffic.correlation_ids <= delivered
                )

            assert await harness.wait_until(done, timeout=90)
        finally:
            second.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(second.wait(), timeout=30) == 0
        assert 0 < killed_at < len(traffic.events)
        delivered = harness.accepted_correlation_ids(sim.accepted)
        assert set(delivered) == traffic.correlation_ids, "an event was lost"
        # Only an event the killed worker had delivered but not yet recorded as completed may
        # be delivered again: at most one per delivery slot, each first seen just before the kill.
        repeated = {cid for cid in delivered if delivered.count(cid) > 1}
        in_flight_at_kill = set(
            delivered[max(0, killed_at - document["spec"]["sink"]["maxConcurrency"]) : killed_at]
        )
        assert repeated <= in_flight_at_kill, "an event completed before the kill was delivered again"
        assert all(delivered.count(cid) == 2 for cid in repeated)
        assert len(await harness.drain_queue(sqs, dead)) == traffic.poison
