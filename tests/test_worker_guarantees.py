"""The worker's promises at the edges, on moto and (where SQS semantics matter) LocalStack.

Each test is a scenario that broke when the worker was run against implementations it was
not written with: a poison body that looped forever and flooded the dead-letter queue, an
expired credential that dead-lettered good events, a SIEM outage that pushed good events
through the queue's own redrive policy, a lease that ran out while its event was still in
the sink, a failed dead-letter write that let a FIFO group move on, a message copied to
the dead-letter queue twice.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import math
import pathlib
import signal
from collections.abc import AsyncIterator
from typing import Any

import hypothesis
import pytest
from hypothesis import strategies as st

from fanout_core import idempotency
from fanout_lab import harness
from fanout_lab.simulators import hec, webhook
from tests import sqs_backends
from workers import envelopes, events, running

# The characters SQS (and LocalStack) accept in a body: no control characters but tab, LF, CR.
SQS_TEXT = st.characters(
    codec="utf-8",
    exclude_categories=["Cs"],
    exclude_characters="".join(map(chr, [*range(9), 11, 12, *range(14, 32)])),
).filter(lambda c: c not in "\ufffe\uffff")


@contextlib.asynccontextmanager
async def running_worker(document: dict[str, Any], **options: Any) -> AsyncIterator[running.Worker]:
    worker = running.Worker(harness.consumer(document), **options)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        await asyncio.wait_for(worker.wait_started(), 30)
        yield worker
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=30)


def bodies_of(messages: list[dict[str, Any]]) -> collections.Counter[str]:
    return collections.Counter(str(message["Body"]) for message in messages)


def is_poison(body: str) -> bool:
    try:
        envelopes.decode(body)
    except envelopes.PoisonMessage:
        return True
    return False


# -- poison of any shape -------------------------------------------------------------------


def nested(depth: int, opener: str = "[", closer: str = "]") -> str:
    return opener * depth + closer * depth


POISON_SHAPES = st.one_of(
    st.integers(1_000, 6_000).map(nested),
    st.integers(1_000, 3_000).map(lambda depth: '{"a":' * depth + "1" + "}" * depth),
    st.text(SQS_TEXT, min_size=1, max_size=200),
    st.integers(20_000, 150_000).map(lambda size: "x" * size),
    st.sampled_from(["null", "[]", "1", '"text"', "true", "{", '{"detail-type": 5, "detail": []}']),
    st.one_of(st.integers(), st.lists(st.lists(st.integers()))).map(
        lambda message: json.dumps({"Type": "Notification", "MessageId": "m", "Message": message})
    ),
    st.integers(500, 2_000).map(
        lambda depth: json.dumps({"Type": "Notification", "MessageId": "m", "Message": nested(depth)})
    ),
    st.dictionaries(
        st.sampled_from(["topicName", "eventBody", "metadata", "detail", "detail-type", "Type", "Message"]),
        st.one_of(st.integers(), st.lists(st.integers()), st.none(), st.booleans()),
    ).map(json.dumps),
)


@pytest.mark.parametrize("sqs_backend", ["moto"], indirect=True)
@hypothesis.settings(
    max_examples=5,
    deadline=None,
    suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture, hypothesis.HealthCheck.too_slow],
)
@hypothesis.given(bodies=st.lists(POISON_SHAPES, min_size=1, max_size=6))
async def test_poison_of_any_shape_is_dead_lettered_exactly_once_and_deleted(
    sqs_backend: sqs_backends.SqsBackend, bodies: list[str]
) -> None:
    sqs = sqs_backend.sqs
    name = f"poison-{abs(hash(tuple(bodies))) % 10**9}"
    source = await harness.make_queue(sqs, name)
    dead = await harness.make_queue(sqs, name + "-dlq")
    expected = collections.Counter(body for body in bodies if is_poison(body))
    async with webhook.WebhookSimulator() as sim:
        document = harness.manifest(
            queue_url=source, sink_url=sim.url, dead_letter_url=dead, queue={"visibilityTimeoutSeconds": 2}
        )
        async with running_worker(document):
            await harness.send_bodies(sqs, source, bodies, max_backlog=100)
            assert await harness.wait_until_empty(sqs, source, timeout=30), (
                "poison stayed in the source queue"
            )
            await asyncio.sleep(2.5)  # one visibility timeout: a message not deleted would come back
            assert await harness.queue_counts(sqs, source) == (0, 0)
    dead_letters = await harness.drain_queue(sqs, dead)
    assert bodies_of(dead_letters) == expected, "each poison message copied exactly once"
    for message in dead_letters:
        assert message["MessageAttributes"]["fanout.reason-class"]["StringValue"] == "poison"
    # The rest is delivered, once per event (equal bodies are one event).
    events_sent = {envelopes.decode(body).event_id for body in bodies if not is_poison(body)}
    assert sorted(item.event_id or "" for item in sim.accepted) == sorted(events_sent)


async def test_deeply_nested_poison_is_copied_once_not_once_per_visibility_timeout(
    sqs_backend: sqs_backends.SqsBackend,
) -> None:
    # The measured failure: 5,000 nested brackets crashed the dead-letter path's log line after
    # the copy and before the delete; the message came back every visibility timeout.
    sqs = sqs_backend.sqs
    source = await harness.make_queue(sqs, "deep-poison")
    dead = await harness.make_queue(sqs, "deep-poison-dlq")
    async with webhook.WebhookSimulator() as sim:
        document = harness.manifest(
            queue_url=source, sink_url=sim.url, dead_letter_url=dead, queue={"visibilityTimeoutSeconds": 1}
        )
        async with running_worker(document):
            await harness.send_bodies(sqs, source, [nested(5_000)] * 4, max_backlog=100)
            assert await harness.wait_until_empty(sqs, source, timeout=20)
            await asyncio.sleep(3)  # three visibility timeouts
    assert len(await harness.drain_queue(sqs, dead)) == 4


async def test_a_message_copied_before_a_crash_is_deleted_not_copied_again(
    sqs: Any, dynamodb: Any, idempotency_table: str
) -> None:
    # A replica crashed after the copy and before the delete: the copy is on record.
    source = await harness.make_queue(sqs, "copied-before")
    dead = await harness.make_queue(sqs, "copied-before-dlq")
    sent = await sqs.send_message(QueueUrl=source, MessageBody="not json")
    store = idempotency.DynamoDbStore(dynamodb, idempotency_table, 3600)
    marker = idempotency.dead_letter_key(events.MessageId(sent["MessageId"]))
    assert await store.claim(marker, lease_seconds=60) is idempotency.ClaimState.CLAIMED
    await store.complete(marker)
    async with webhook.WebhookSimulator() as sim:
        document = harness.manifest(
            queue_url=source,
            sink_url=sim.url,
            dead_letter_url=dead,
            idempotency={"store": "dynamodb", "table": idempotency_table},
        )
        async with running_worker(document):
            assert await harness.wait_until_empty(sqs, source, timeout=20)
    assert await harness.queue_counts(sqs, dead) == (0, 0)


async def test_without_a_dead_letter_queue_a_poison_message_is_counted_once(
    sqs: Any,
) -> None:
    # The queue's own redrive policy moves it after three receives; the worker counts it once.
    redrive_target = await harness.make_queue(sqs, "count-once-redrive")
    target_arn = (await sqs.get_queue_attributes(QueueUrl=redrive_target, AttributeNames=["QueueArn"]))[
        "Attributes"
    ]["QueueArn"]
    source = await harness.make_queue(sqs, "count-once")
    await sqs.set_queue_attributes(
        QueueUrl=source,
        Attributes={"RedrivePolicy": json.dumps({"deadLetterTargetArn": target_arn, "maxReceiveCount": 3})},
    )
    async with webhook.WebhookSimulator() as sim:
        document = harness.manifest(
            queue_url=source,
            sink_url=sim.url,
            queue={"visibilityTimeoutSeconds": 1},
            retry={"baseDelaySeconds": 0.5, "maxDelaySeconds": 1, "maxAttempts": 2},
        )
        async with running_worker(document) as worker:
            await sqs.send_message(QueueUrl=source, MessageBody="[1, 2")

            async def moved() -> bool:
                return sum(await harness.queue_counts(sqs, redrive_target)) == 1

            assert await harness.wait_until(moved, timeout=30)
    assert worker.metrics.value("fanout_dead_lettered_total", queue="count-once", reason_class="poison") == 1


# -- credentials are the sink's ------------------------------------------------------------


async def test_an_expired_credential_dead_letters_nothing_and_recovers_by_itself(
    sqs_backend: sqs_backends.SqsBackend,
) -> None:
    sqs = sqs_backend.sqs
    source = await harness.make_queue(sqs, "expired-credential")
    dead = await harness.make_queue(sqs, "expired-credential-dlq")
    async with webhook.WebhookSimulator() as sim:
        sim.set_refusing(True)  # 401 to everything: our token expired
        document = harness.manifest(
            queue_url=source,
            sink_url=sim.url,
            dead_letter_url=dead,
            sink={"circuitOpenSeconds": 0.5},
            retry={"baseDelaySeconds": 0.5, "maxDelaySeconds": 1, "maxAttempts": 2},
        )
        async with running_worker(document, http_port=0) as worker:
            traffic = await harness.feed(sqs, source, conversations=12, length=5, poison_ratio=0, seed=4)
            assert await harness.wait_until(
                lambda: worker.metrics.value("fanout_sink_credentials_refused", sink="webhook") == 1,
                timeout=10,
            )
            await asyncio.sleep(4)
            refused_during_outage = sim.refused_count
            sim.set_refusing(False)  # the credential is renewed
            assert await harness.wait_until_empty(sqs, source, timeout=40)
        assert worker.metrics.value("fanout_sink_credentials_refused", sink="webhook") == 0
        harness.check_exactly_once_in_order(sim, traffic)
    assert await harness.queue_counts(sqs, dead) == (0, 0), "a credential failure dead-lettered events"
    # While refused, only probes reached the downstream (the pollers stopped), not every event.
    assert refused_during_outage < len(traffic.events) / 2


async def test_a_siem_outage_behind_a_redrive_policy_sends_no_good_event_to_the_dlq(
    sqs_backend: sqs_backends.SqsBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Seed scenario: the SIEM is down for hours behind a queue whose redrive policy moves a
    # message after 5 receives. Compressed: a 15 s outage, a 2 s visibility timeout.
    sqs = sqs_backend.sqs
    dead = await harness.make_queue(sqs, "siem-outage-dlq")
    dead_arn = (await sqs.get_queue_attributes(QueueUrl=dead, AttributeNames=["QueueArn"]))["Attributes"][
        "QueueArn"
    ]
    source = await harness.make_queue(sqs, "siem-outage", visibility=2)
    await sqs.set_queue_attributes(
        QueueUrl=source,
        Attributes={"RedrivePolicy": json.dumps({"deadLetterTargetArn": dead_arn, "maxReceiveCount": 5})},
    )
    monkeypatch.setenv("HEC_TEST_TOKEN", "t0k3n")
    async with hec.HecSimulator(token="t0k3n") as sim:
        sim.set_outage(True)
        document = harness.manifest(
            queue_url=source,
            sink_url=sim.url,
            queue={"visibilityTimeoutSeconds": 2},
            sink={
                "type": "siem",
                "siem": {"token": {"env": "HEC_TEST_TOKEN"}, "lingerSeconds": 0.05},
                "circuitOpenSeconds": 0.5,
                "circuitFailureThreshold": 2,
            },
            retry={"baseDelaySeconds": 0.5, "maxDelaySeconds": 1, "maxAttempts": 5},
        )
        async with running_worker(document):
            traffic = await harness.feed(sqs, source, conversations=10, length=4, poison_ratio=0, seed=8)
            await asyncio.sleep(15)
            sim.set_outage(False)
            assert await harness.wait_until_empty(sqs, source, timeout=40)
        delivered = {item.event_id for item in sim.accepted}
        assert len(delivered) == len(traffic.events)
    assert await harness.queue_counts(sqs, dead) == (0, 0), "good events reached the dead-letter queue"


# -- FIFO ----------------------------------------------------------------------------------


async def test_a_failed_dead_letter_write_holds_its_fifo_group(sqs_backend: sqs_backends.SqsBackend) -> None:
    sqs = sqs_backend.sqs
    source = await harness.make_queue(sqs, "dlq-down.fifo", fifo=True)
    # The dead-letter queue does not exist yet: every copy fails.
    missing_dlq = source.replace("dlq-down.fifo", "dlq-down-dlq.fifo")

    def reject(document: Any) -> int | None:
        return 422 if document.get("eventBody", {}).get("step") == 0 else None

    entries = []
    for step in range(3):
        body = {
            "topicName": "t",
            "version": "2",
            "eventBody": {"conversationId": "c1", "step": step},
            "metadata": {"CorrelationId": f"c1-{step}"},
        }
        entries.append(
            {
                "Id": str(step),
                "MessageBody": json.dumps(body),
                "MessageGroupId": "c1",
                "MessageDeduplicationId": f"d{step}",
            }
        )
    async with webhook.WebhookSimulator(reject=reject) as sim:
        document = harness.manifest(
            queue_url=source,
            sink_url=sim.url,
            dead_letter_url=missing_dlq,
            queue={"visibilityTimeoutSeconds": 2},
            retry={"baseDelaySeconds": 0.5, "maxDelaySeconds": 1, "maxAttempts": 3},
        )
        async with running_worker(document):
            # One send per entry: moto draws FIFO sequence numbers at random, so entries of one
            # batch that share a SentTimestamp millisecond would come back in random order.
            for entry in entries:
                await harness.send_batch(sqs, source, [entry])
            await asyncio.sleep(5)
            assert sim.accepted == [], "the group moved on past an event that is not in the dead-letter queue"
            await harness.make_queue(sqs, "dlq-down-dlq.fifo", fifo=True)
            assert await harness.wait_until(lambda: len(sim.accepted) == 2, timeout=30)
    assert [json.loads(item.body)["eventBody"]["step"] for item in sim.accepted] == [1, 2]
    assert len(await harness.drain_queue(sqs, missing_dlq)) == 1


# -- leases --------------------------------------------------------------------------------


async def test_a_lease_lives_as_long_as_its_event_is_in_the_sink(sqs: Any, idempotency_table: str) -> None:
    # Two replicas, every event sent twice, a downstream slower than the lease: without renewal
    # the second copy's claim wins while the first is still being delivered.
    source = await harness.make_queue(sqs, "leases")
    async with webhook.WebhookSimulator(latency=8) as sim:
        document = harness.manifest(
            queue_url=source,
            sink_url=sim.url,
            queue={"visibilityTimeoutSeconds": 20},
            sink={"timeoutSeconds": 15},
            idempotency={"store": "dynamodb", "table": idempotency_table, "leaseSeconds": 2},
        )
        async with running_worker(document), running_worker(document):
            bodies = [
                json.dumps({"metadata": {"CorrelationId": f"lease-{index}"}, "eventBody": {"n": index}})
                for index in range(4)
            ]
            await harness.send_bodies(sqs, source, bodies, max_backlog=100)
            # The copies a little later (two claims at the same instant are the store's own
            # race to settle): they find the first copies' claims, in the sink for 8 s.
            await asyncio.sleep(1)
            await harness.send_bodies(sqs, source, bodies, max_backlog=100)
            assert await harness.wait_until_empty(sqs, source, timeout=60)
    assert sim.concurrent_duplicates == 0
    assert sorted(item.event_id or "" for item in sim.accepted) == [f"lease-{index}" for index in range(4)]


# -- the queue's own redrive policy --------------------------------------------------------


@pytest.mark.parametrize(("max_receive_count", "conflict"), [(4, 1.0), (5, 0.0)])
async def test_a_redrive_policy_that_would_cut_retries_short_is_reported(
    sqs: Any, max_receive_count: int, conflict: float, caplog: pytest.LogCaptureFixture
) -> None:
    target = await harness.make_queue(sqs, f"redrive-check-{max_receive_count}-dlq")
    target_arn = (await sqs.get_queue_attributes(QueueUrl=target, AttributeNames=["QueueArn"]))["Attributes"][
        "QueueArn"
    ]
    name = f"redrive-check-{max_receive_count}"
    source = await harness.make_queue(sqs, name)
    policy = {"deadLetterTargetArn": target_arn, "maxReceiveCount": max_receive_count}
    await sqs.set_queue_attributes(QueueUrl=source, Attributes={"RedrivePolicy": json.dumps(policy)})
    document = harness.manifest(
        queue_url=source, sink_url="http://127.0.0.1:9/", retry={"maxAttempts": 5, "baseDelaySeconds": 1}
    )
    async with running_worker(document) as worker:
        pass
    assert worker.metrics.value("fanout_redrive_policy_conflict", queue=name) == conflict
    warned = [record for record in caplog.records if record.getMessage() == "redrive_policy_conflict"]
    assert bool(warned) is bool(conflict)


@pytest.fixture
async def idempotency_table(dynamodb: Any) -> str:
    name = f"guarantees-{math.floor(asyncio.get_running_loop().time() * 1000) % 10**9}"
    await dynamodb.create_table(
        TableName=name,
        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    return name


# -- real processes: SIGKILL and SIGTERM ---------------------------------------------------


@pytest.mark.serial  # worker processes killed on a schedule: run alone (make test)
async def test_fifo_with_two_pollers_and_two_sigkills_loses_nothing_and_repeats_only_in_flight_events(
    sqs_backend: sqs_backends.SqsBackend, idempotency_table: str, tmp_path: pathlib.Path
) -> None:
    """Order across a crash is not asserted here: it rests on SQS keeping a group locked while
    a crashed consumer's messages of it are in flight, which AWS documents and neither double
    does (test_sqs_backends.py: moto serves a group's tail first when its messages come back
    together; LocalStack serves new messages of the group past them). Order without crashes,
    with two pollers and faults, is test_worker_e2e.py's FIFO run on both."""
    sqs = sqs_backend.sqs
    source = await harness.make_queue(sqs, "killed.fifo", fifo=True)
    async with webhook.WebhookSimulator(latency=0.01, fail_ratio=0.05, throttle_ratio=0.03, seed=9) as sim:
        document = harness.manifest(
            queue_url=source,
            sink_url=sim.url,
            queue={"visibilityTimeoutSeconds": 3, "pollers": 2},
            idempotency={"store": "dynamodb", "table": idempotency_table},
        )
        config = harness.write_manifest(tmp_path / "worker.yaml", document)
        feeding = asyncio.create_task(
            harness.feed(sqs, source, conversations=30, length=6, fifo=True, poison_ratio=0, seed=21)
        )
        process = await harness.start_worker(config)
        killed_at: list[int] = []
        try:
            for kill_at in (40, 100):
                assert await harness.wait_until(lambda at=kill_at: len(sim.accepted) >= at, timeout=60)
                process.kill()
                await process.wait()
                killed_at.append(len(sim.accepted))
                process = await harness.start_worker(config)
            traffic = await feeding

            async def done() -> bool:
                delivered = set(harness.accepted_correlation_ids(sim.accepted))
                empty = await harness.queue_counts(sqs, source) == (0, 0)
                return empty and traffic.correlation_ids <= delivered

            assert await harness.wait_until(done, timeout=90)
        finally:
            process.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(process.wait(), timeout=30) == 0
    delivered = harness.accepted_correlation_ids(sim.accepted)
    assert set(delivered) == traffic.correlation_ids, "an event was lost"
    # Only an event a killed worker had delivered but not yet recorded as completed may come
    # again: at most one per delivery slot, each first seen just before a kill.
    slots = document["spec"]["sink"]["maxConcurrency"]
    in_flight = {cid for at in killed_at for cid in delivered[max(0, at - slots) : at]}
    repeated = {cid for cid in delivered if delivered.count(cid) > 1}
    assert repeated <= in_flight, "an event completed before a kill was delivered again"


async def test_sigterm_ends_within_the_grace_period_while_the_siem_circuit_is_open(
    sqs: Any, moto_server: Any, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HEC_TEST_TOKEN", "t0k3n")
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server.environment()["AWS_ENDPOINT_URL"])
    source = await harness.make_queue(sqs, "siem-shutdown")
    grace = 3.0
    async with hec.HecSimulator(token="t0k3n", latency=0.3) as sim:
        sim.set_outage(True)
        document = harness.manifest(
            queue_url=source,
            sink_url=sim.url,
            queue={"visibilityTimeoutSeconds": 30},
            sink={
                "type": "siem",
                "siem": {"token": {"env": "HEC_TEST_TOKEN"}, "lingerSeconds": 0.05, "maxBatchEvents": 5},
                "circuitOpenSeconds": 20,
                "circuitFailureThreshold": 1,
                "maxConcurrency": 2,
            },
            shutdown={"gracePeriodSeconds": grace},
        )
        config = harness.write_manifest(tmp_path / "worker.yaml", document)
        traffic = await harness.feed(
            sqs, source, conversations=10, length=3, poison_ratio=0, duplicate_ratio=0
        )
        process = await harness.start_worker(config)
        # The first batch fails, the circuit opens for 20 s: the batches formed meanwhile wait
        # for a permit behind it.
        assert await harness.wait_until(lambda: sim.outage_count >= 1, timeout=20)
        await asyncio.sleep(1.5)
        started = asyncio.get_running_loop().time()
        sent_before = sim.requests_total
        process.send_signal(signal.SIGTERM)  # the SIEM is still down
        assert await asyncio.wait_for(process.wait(), timeout=grace + 60) == 0
        took = asyncio.get_running_loop().time() - started
    assert took < grace + 5, f"shutdown took {took:.1f}s against a {grace}s grace period"
    assert sim.requests_total == sent_before, "something was sent to the sink during the shutdown"
    # What was not delivered went back to the queue at once, nothing was lost.
    visible, in_flight = await harness.queue_counts(sqs, source)
    assert visible + in_flight == len(traffic.events) - len({item.event_id for item in sim.accepted})
    assert in_flight == 0, "undelivered messages were not given back"
