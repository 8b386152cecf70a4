"""The scaling loop's I/O: one round at a time against kmock (HTTP) and the moto server.

Failure rules under test: a queue that cannot be read keeps the replicas, marks Degraded with
the cause, posts one Warning Event when that starts, and backs off; recovery clears it. The
pacing of rounds (backoff, cancellation) is checked on fake loop time with looptime.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import kmock
import kopf
import pytest

from fanout_core import spec
from fanout_operator import (
    autoscaling,
    kube,
    looping,
    metrics,
    queues,
    reconciling,
    rendering,
    scaling,
    settings,
)

NAMESPACE = "ns"
NAME = "crm"
UID = "uid-1"
OWNER = rendering.Owner(NAME, NAMESPACE, UID)


@pytest.fixture
async def client(kmock: kmock.KubernetesEmulator) -> AsyncIterator[kube.KubeClient]:
    for key, kind, subresources in (
        ("fanout.dev/v1alpha1/fanoutconsumers", "FanoutConsumer", {"status", "scale"}),
        ("apps/v1/deployments", "Deployment", {"scale"}),
        ("v1/configmaps", "ConfigMap", set()),
        ("v1/events", "Event", set()),
        ("v1/pods", "Pod", set()),
        ("v1/serviceaccounts", "ServiceAccount", set()),
        ("policy/v1/poddisruptionbudgets", "PodDisruptionBudget", set()),
    ):
        kmock.resources[key] = kmock.ResourceInfo(kind=kind, namespaced=True, subresources=subresources)
    kube_client = kube.KubeClient(kube.Credentials(kopf.ConnectionInfo(server=str(kmock.url))))
    try:
        yield kube_client
    finally:
        await kube_client.close()


def _body(queue_url: str, **scaling_spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "fanout.dev/v1alpha1",
        "kind": "FanoutConsumer",
        "metadata": {"name": NAME, "namespace": NAMESPACE, "uid": UID, "generation": 1},
        "spec": {
            "queue": {"url": queue_url, "region": "us-east-1"},
            "sink": {"type": "webhook", "url": "http://127.0.0.1:9/"},
            "scaling": {"pollingIntervalSeconds": 10, "minReplicas": 0, **scaling_spec},
        },
    }


async def _status(client: kube.KubeClient) -> dict[str, Any]:
    found = await client.get(reconciling.consumer_path(OWNER))
    assert found is not None
    return dict(found.get("status") or {})


async def _events(client: kube.KubeClient, reason: str) -> list[dict[str, Any]]:
    items = await client.list(kube.collection_path("v1", "events", NAMESPACE))
    return [item for item in items if item.get("reason") == reason]


async def _setup(client: kube.KubeClient, body: dict[str, Any], replicas: int) -> None:
    await client.create(kube.collection_path("fanout.dev/v1alpha1", "fanoutconsumers", NAMESPACE), body)
    consumer = spec.parse_spec(body["spec"])
    await reconciling.reconcile(client, OWNER, consumer, rendering.Defaults(), replicas)


def _autoscaler(
    client: kube.KubeClient,
    reader: queues.DepthReader,
    clock: Callable[[], float],
    *,
    recorder: metrics.ConsumerMetrics | None = None,
) -> autoscaling.Autoscaler:
    return autoscaling.Autoscaler(
        client=client,
        depth_reader=reader,
        observer=None,
        settings=settings.OperatorSettings(),
        clock=clock,
        recorder=recorder,
    )


async def _replicas(client: kube.KubeClient) -> int:
    found = await client.get(reconciling.deployment_path(OWNER))
    assert found is not None
    return int(found["spec"]["replicas"])


async def test_missing_queue_keeps_replicas_degrades_and_backs_off(client: kube.KubeClient, sqs: Any) -> None:
    existing = (await sqs.create_queue(QueueName="autoscaling-real"))["QueueUrl"]
    missing = existing.replace("autoscaling-real", "autoscaling-missing")
    body = _body(missing)
    await _setup(client, body, replicas=3)
    clock = iter([1_000.0, 1_020.0, 1_060.0])
    async with queues.SqsDepthReader() as reader:
        autoscaler = _autoscaler(client, reader, lambda: next(clock))
        first = await autoscaler.poll(body)
        body["status"] = await _status(client)
        second = await autoscaler.poll(body)
        body["status"] = await _status(client)

        assert (first, second) == (20.0, 40.0)  # 10 s interval, doubled per failure
        assert await _replicas(client) == 3  # never scaled on an error
        status = body["status"]
        conditions = {c["type"]: c for c in status["conditions"]}
        assert conditions["Degraded"]["status"] == "True"
        assert conditions["Degraded"]["reason"] == "QueueNotFound"
        assert conditions["Ready"]["status"] == "False"
        assert status["scaler"]["consecutiveFailures"] == 2
        assert len(await _events(client, "QueueNotFound")) == 1  # one Warning when it starts

        # The queue appears (the spec is fixed): healthy again, and scaled to its backlog.
        body["spec"]["queue"]["url"] = existing
        await sqs.send_message_batch(
            QueueUrl=existing, Entries=[{"Id": str(i), "MessageBody": "x"} for i in range(5)]
        )
        third = await autoscaler.poll(body)
    assert third == 10.0
    status = await _status(client)
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["Degraded"]["status"] == "False"
    assert status["backlog"]["total"] == 5
    assert status["scaler"]["consecutiveFailures"] == 0
    assert await _replicas(client) == 3  # 5 messages want 1, the window holds the drop


async def test_scale_up_writes_file_before_deployment_and_posts_event(
    client: kube.KubeClient, sqs: Any
) -> None:
    url = (await sqs.create_queue(QueueName="autoscaling-up"))["QueueUrl"]
    body = _body(url, targetBacklogPerReplica=2)
    await _setup(client, body, replicas=0)
    for start in range(0, 7, 7):
        entries = [{"Id": str(i), "MessageBody": "x"} for i in range(start, start + 7)]
        await sqs.send_message_batch(QueueUrl=url, Entries=entries)
    async with queues.SqsDepthReader() as reader:
        autoscaler = _autoscaler(client, reader, lambda: 50.0)
        assert await autoscaler.poll(body) == 10.0
    assert await _replicas(client) == 4
    config_map = await client.get(kube.object_path("v1", "configmaps", NAMESPACE, f"{NAME}-config"))
    assert config_map is not None
    assert config_map["data"]["replicas"] == "4"
    (event,) = await _events(client, "ScaledUp")
    assert event["involvedObject"]["uid"] == UID
    assert "backlog 7 / target 2 → 4" in event["message"]
    status = await _status(client)
    assert status["lastScaleTime"] == "1970-01-01T00:00:50Z"


async def test_invalid_spec_is_not_scaled(client: kube.KubeClient) -> None:
    body = _body("https://sqs.us-east-1.amazonaws.com/1/q", minReplicas=5, maxReplicas=2)
    autoscaler = _autoscaler(client, queues.SqsDepthReader(), lambda: 50.0)
    assert await autoscaler.poll(body) == autoscaling.INVALID_SPEC_RETRY_SECONDS
    assert await client.get(reconciling.deployment_path(OWNER)) is None


@pytest.mark.looptime
async def test_run_paces_rounds_by_their_delays_until_cancelled() -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    calls: list[float] = []
    delays = iter([15.0, scaling.next_poll_delay(15, 1), scaling.next_poll_delay(15, 2), 15.0])

    async def poll() -> float:
        calls.append(loop.time() - started)
        if len(calls) == 2:
            raise RuntimeError("a round that blows up must not end the loop")
        return next(delays)

    task = asyncio.create_task(looping.run(poll))
    await asyncio.sleep(200)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # 0, +15, (error: +60), +30 ... on fake time, exactly.
    assert calls[:4] == [0.0, 15.0, 75.0, 105.0]


async def test_a_poll_records_depth_decision_and_dead_letters(client: kube.KubeClient, sqs: Any) -> None:
    url = (await sqs.create_queue(QueueName="metrics-source"))["QueueUrl"]
    dlq = (await sqs.create_queue(QueueName="metrics-dlq"))["QueueUrl"]
    body = _body(url, targetBacklogPerReplica=2)
    body["spec"]["deadLetter"] = {"queueUrl": dlq}
    await _setup(client, body, replicas=1)
    await sqs.send_message_batch(QueueUrl=url, Entries=[{"Id": str(i), "MessageBody": "x"} for i in range(5)])
    await sqs.send_message_batch(QueueUrl=dlq, Entries=[{"Id": str(i), "MessageBody": "x"} for i in range(2)])
    families = metrics.OperatorMetrics()

    def value(name: str, **labels: str) -> float | None:
        return families.registry.get_sample_value(name, {"namespace": NAMESPACE, "consumer": NAME, **labels})

    async with queues.SqsDepthReader() as reader:
        autoscaler = _autoscaler(client, reader, lambda: 50.0, recorder=families.consumer(NAMESPACE, NAME))
        await autoscaler.poll(body)
        assert value("fanout_operator_backlog_messages") == 5
        assert value("fanout_operator_dead_letter_messages") == 2
        assert value("fanout_operator_desired_replicas") == 3 == await _replicas(client)
        assert value("fanout_operator_actual_replicas") == 0  # kmock runs no pods
        assert value("fanout_operator_scaling_decisions_total", direction="up") == 1

        # An unreadable DLQ is reported, and changes nothing else.
        body["spec"]["deadLetter"] = {"queueUrl": dlq.replace("metrics-dlq", "metrics-no-dlq")}
        body["status"] = await _status(client)
        assert await autoscaler.poll(body) == 10.0
        errors = "fanout_operator_queue_errors_total"
        assert value(errors, queue_role="dead_letter", reason="QueueNotFound") == 1
        assert value("fanout_operator_dead_letter_messages") is None
        assert value("fanout_operator_backlog_messages") == 5
        conditions = {c["type"]: c for c in (await _status(client))["conditions"]}
        assert conditions["Degraded"]["status"] == "False"

        # An unreadable source queue: depth unknown (removed), the error counted, replicas kept.
        body["spec"]["queue"]["url"] = url.replace("metrics-source", "metrics-missing")
        del body["spec"]["deadLetter"]
        await autoscaler.poll(body)
        assert value(errors, queue_role="source", reason="QueueNotFound") == 1
        assert value("fanout_operator_backlog_messages") is None
        assert value("fanout_operator_desired_replicas") == 3


@pytest.mark.parametrize("blind", [True, False], ids=["with-read-errors", "readings-only"])
async def test_the_cooldown_starts_at_the_first_empty_reading_after_messages(
    client: kube.KubeClient, sqs: Any, blind: bool
) -> None:
    """The scaler keeps one history, whatever happens between readings.

    Empty at 1000; 10 messages at 1020 (with read errors at 1010, 1030, 1040, or clean
    readings); drained by 1410. The reading before 1410 had messages, so at 1410 the cooldown
    starts: not "empty for 410s" (an older empty time brought back by a read error, or left in
    the status by a write that did not remove it), and never a scale to zero.
    """
    url = (await sqs.create_queue(QueueName=f"autoscaling-memory-{blind}"))["QueueUrl"]
    missing = url.replace("autoscaling-memory", "autoscaling-memory-missing")
    body = _body(url, cooldownSeconds=300, scaleDownStabilizationSeconds=0)
    await _setup(client, body, replicas=1)
    times = iter([1_000.0, 1_010.0, 1_020.0, 1_030.0, 1_040.0, 1_410.0])
    async with queues.SqsDepthReader() as reader:
        autoscaler = _autoscaler(client, reader, lambda: next(times))

        async def poll(queue_url: str) -> None:
            body["spec"]["queue"]["url"] = queue_url if blind else url
            await autoscaler.poll(body)
            body["status"] = await _status(client)

        await poll(url)  # empty
        await poll(missing)
        await sqs.send_message_batch(
            QueueUrl=url, Entries=[{"Id": str(i), "MessageBody": "x"} for i in range(10)]
        )
        await poll(url)  # messages
        assert "emptySince" not in body["status"]["scaler"]
        await poll(missing)
        await poll(missing)
        await _drain_queue(sqs, url)
        await poll(url)  # empty again, for the first time since it had messages
    assert await _replicas(client) == 1
    status = await _status(client)
    assert "empty for 0s" in status["reason"], status["reason"]
    assert status["scaler"]["emptySince"] == 1_410.0


async def _drain_queue(sqs: Any, url: str) -> None:
    for _ in range(20):
        got = await sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)
        messages = got.get("Messages", [])
        if not messages:
            return
        await sqs.delete_message_batch(
            QueueUrl=url,
            Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)],
        )
