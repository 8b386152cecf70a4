"""End to end: the operator (in a thread), a Kubernetes API, and the moto server.

The Kubernetes API is kmock's emulator by default, or a real cluster when KUBECONFIG is set
(``-m cluster``); the test body is the same. What the emulator does and does not do is
described in ``tests/operator_harness.py``.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import prometheus_client.parser
import yaml

from fanout_lab.simulators import aws
from fanout_operator import kube, rbac, rendering
from tests import operator_harness as h


def _consumer(name: str, kube_namespace: str, queue_url: str) -> dict[str, Any]:
    return {
        "apiVersion": "fanout.dev/v1alpha1",
        "kind": "FanoutConsumer",
        "metadata": {"name": name, "namespace": kube_namespace},
        "spec": {
            "queue": {"url": queue_url, "region": "us-east-1"},
            "sink": {
                "type": "webhook",
                "url": "http://127.0.0.1:9/events",
                "rateLimit": {"requestsPerSecond": 100},
            },
            "scaling": {
                "minReplicas": 0,
                "maxReplicas": 5,
                "targetBacklogPerReplica": 10,
                "activationBacklog": 1,
                "pollingIntervalSeconds": 0.3,
                "scaleDownStabilizationSeconds": 1,
                "cooldownSeconds": 1,
            },
            "workload": {"image": "fanout-consumer:e2e"},
        },
    }


async def _drain(sqs: Any, queue_url: str, keep: int) -> None:
    """Receive and delete until only ``keep`` messages are left."""
    for _ in range(50):
        attributes = await sqs.get_queue_attributes(
            QueueUrl=queue_url, AttributeNames=["ApproximateNumberOfMessages"]
        )
        left = int(attributes["Attributes"]["ApproximateNumberOfMessages"])
        if left <= keep:
            return
        got = await sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=min(10, left - keep))
        for message in got.get("Messages", []):
            await sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
    raise AssertionError("queue did not drain")


async def test_fanout_consumer_lifecycle(
    kube_api: str,
    kube_client: kube.KubeClient,
    kube_namespace: str,
    sqs: Any,
    moto_server: aws.MotoServer,
) -> None:
    name = f"crm-{uuid.uuid4().hex[:6]}"
    queue_url = (await sqs.create_queue(QueueName=name))["QueueUrl"]
    consumers = kube.collection_path("fanout.dev/v1alpha1", "fanoutconsumers", kube_namespace)
    deployment_path = kube.object_path("apps/v1", "deployments", kube_namespace, name)
    config_map_path = kube.object_path("v1", "configmaps", kube_namespace, f"{name}-config")
    metrics_port = aws.free_port()

    async def scraped() -> dict[str, float]:
        """The operator's fanout_operator_* samples for this consumer, from its /metrics."""
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{metrics_port}/metrics") as response,
        ):
            assert response.status == 200
            text = await response.text()
        return {
            sample.name
            + (f"/{sample.labels['direction']}" if "direction" in sample.labels else ""): sample.value
            for family in prometheus_client.parser.text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name.startswith("fanout_operator_")
            and sample.labels.get("consumer") == name
            and sample.labels.get("namespace") == kube_namespace
        }

    async def deployment_ready() -> int:
        found = await kube_client.get(deployment_path)
        return int(((found or {}).get("status") or {}).get("readyReplicas") or 0)

    async def replicas() -> int | None:
        found = await kube_client.get(deployment_path)
        return None if found is None else int(found["spec"].get("replicas", 1))

    async def consumer_status() -> dict[str, Any]:
        found = await kube_client.get(f"{consumers}/{name}")
        return dict((found or {}).get("status") or {})

    async def events(reason: str) -> list[dict[str, Any]]:
        items = await kube_client.list(kube.collection_path("v1", "events", kube_namespace))
        return [
            e for e in items if e.get("involvedObject", {}).get("name") == name and e.get("reason") == reason
        ]

    # kmock 0.8 cannot serve the namespaces list kopf reads in --namespace mode, so against it the
    # operator watches cluster-wide (the emulator holds only this test's objects anyway).
    scope = ["--all-namespaces"] if kube_api == "kmock" else ["--namespace", kube_namespace]
    config = h.operator_settings(
        *scope,
        "--standalone",
        "--worker-image",
        "fanout-consumer:default",
        "--metrics-port",
        str(metrics_port),
        "--metrics-address",
        "127.0.0.1",
    )
    with h.OperatorThread(config):
        created = await kube_client.create(consumers, _consumer(name, kube_namespace, queue_url))
        uid = created["metadata"]["uid"]

        # Applying creates the ConfigMap and the Deployment, owned by the FanoutConsumer.
        deployment = await h.eventually(lambda: kube_client.get(deployment_path), "Deployment created")
        config_map = await h.eventually(lambda: kube_client.get(config_map_path), "ConfigMap created")
        for child in (deployment, config_map):
            assert [ref["uid"] for ref in child["metadata"]["ownerReferences"]] == [uid]
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        assert container["image"] == "fanout-consumer:e2e"
        assert yaml.safe_load(config_map["data"]["consumer.yaml"])["spec"]["queue"]["url"] == queue_url
        await h.eventually(lambda: _equals(replicas, 0), "idle fleet at zero")

        # Filling the queue scales the Deployment (35 / 10 per replica → 4) and the replica file.
        await sqs.send_message_batch(
            QueueUrl=queue_url, Entries=[{"Id": str(i), "MessageBody": f"e{i}"} for i in range(10)]
        )
        for start in range(10, 35, 5):
            entries = [{"Id": str(i), "MessageBody": f"e{i}"} for i in range(start, start + 5)]
            await sqs.send_message_batch(QueueUrl=queue_url, Entries=entries)
        await h.eventually(lambda: _equals(replicas, 4), "scaled up to 4")
        config_map = await kube_client.get(config_map_path)
        assert config_map is not None
        assert config_map["data"]["replicas"] == "4"
        current = await h.eventually(
            lambda: _status_where(consumer_status, lambda s: s.get("backlog", {}).get("total") == 35),
            "status",
        )
        assert current["replicas"] == 4
        assert current["queue"] == name
        assert current["selector"] == rendering.selector_string(rendering.Owner(name, kube_namespace, uid))
        assert "backlog 35 / target 10 → 4" in current["reason"]
        conditions = {c["type"]: c for c in current["conditions"]}
        assert conditions["Ready"]["status"] == "True"
        assert conditions["Degraded"]["status"] == "False"
        assert current["lastScaleTime"]
        assert await h.eventually(lambda: events("ScaledUp"), "ScaledUp event")

        # The operator's /metrics tells the same story: backlog, desired and ready replicas.
        async def scaled_up_metrics() -> dict[str, float] | None:
            samples = await scraped()
            wanted = samples.get("fanout_operator_backlog_messages") == 35
            wanted = wanted and samples.get("fanout_operator_desired_replicas") == 4
            return samples if wanted else None

        samples = await h.eventually(
            scaled_up_metrics, "backlog and desired replicas scraped", context=scraped
        )
        assert samples["fanout_operator_actual_replicas"] == await deployment_ready()
        assert samples["fanout_operator_in_flight_messages"] == 0
        assert samples["fanout_operator_scaling_decisions_total/up"] >= 1
        assert "fanout_operator_dead_letter_messages" not in samples  # no spec.deadLetter

        # Draining scales down after the stabilization window, then to zero after the cooldown.
        await _drain(sqs, queue_url, keep=15)
        await h.eventually(lambda: _equals(replicas, 2), "scaled down to 2", context=consumer_status)
        await _drain(sqs, queue_url, keep=0)
        await h.eventually(lambda: _equals(replicas, 0), "scaled to zero", context=consumer_status)

        async def scaled_to_zero_events() -> list[dict[str, Any]]:
            return [
                e for e in await events("ScaledDown") if "→ 0" in e["message"] and "cooldown" in e["message"]
            ]

        await h.eventually(scaled_to_zero_events, "ScaledDown event naming the cooldown")

        # Deleting the resource removes its children (garbage collection through ownerReferences).
        await kube_client.delete(f"{consumers}/{name}")
        await h.eventually(lambda: _absent(kube_client, f"{consumers}/{name}"), "FanoutConsumer gone")
        await h.eventually(lambda: _absent(kube_client, deployment_path), "Deployment collected")
        await h.eventually(lambda: _absent(kube_client, config_map_path), "ConfigMap collected")
        # A deleted consumer leaves no series behind.
        await h.eventually(lambda: _equals(scraped, {}), "series removed", context=scraped)

    # Every call the operator (kopf included) made is covered by fanout_operator.rbac, which the
    # chart's ClusterRole is checked against. Only kmock records the calls; a cluster running the
    # operator under that role would have refused anything else.
    if kube_api == "kmock":
        made = {h.permission(method, path) for _, method, path in h.ApiServerEmulator.calls}
        made.discard(None)
        assert ("apps", "deployments/scale", "patch") in made
        assert ("fanout.dev", "fanoutconsumers", "watch") in made
        assert sorted(p for p in made if p is not None and not rbac.allows(*p)) == []


async def _equals(probe: Callable[[], Awaitable[Any]], expected: Any) -> bool:
    return bool(await probe() == expected)


async def _status_where(
    probe: Callable[[], Awaitable[dict[str, Any]]], predicate: Callable[[dict[str, Any]], bool]
) -> dict[str, Any] | None:
    current = await probe()
    return current if predicate(current) else None


async def _absent(kube_client: kube.KubeClient, path: str) -> bool:
    return await kube_client.get(path) is None


async def test_invalid_spec_is_marked_and_a_fix_is_picked_up(
    kube_api: str, kube_client: kube.KubeClient, kube_namespace: str, moto_server: aws.MotoServer
) -> None:
    name = f"bad-{uuid.uuid4().hex[:6]}"
    consumers = kube.collection_path("fanout.dev/v1alpha1", "fanoutconsumers", kube_namespace)
    deployment_path = kube.object_path("apps/v1", "deployments", kube_namespace, name)
    manifest = _consumer(name, kube_namespace, f"{moto_server.endpoint_url}/123456789012/{name}")
    # Valid field by field (the CRD schema lets it in), invalid as a whole (the model does not).
    manifest["spec"]["scaling"].update({"minReplicas": 4, "maxReplicas": 2})

    async def degraded_reason() -> str | None:
        found = await kube_client.get(f"{consumers}/{name}")
        conditions = {c["type"]: c for c in ((found or {}).get("status") or {}).get("conditions", [])}
        degraded = conditions.get("Degraded")
        return f"{degraded['status']}:{degraded['reason']}:{degraded['message']}" if degraded else None

    scope = ["--all-namespaces"] if kube_api == "kmock" else ["--namespace", kube_namespace]
    with h.OperatorThread(h.operator_settings(*scope, "--standalone")):
        await kube_client.create(consumers, manifest)
        marked = await h.eventually(degraded_reason, "Degraded condition")
        assert marked.startswith("True:InvalidSpec:")
        assert "maxReplicas must be >= minReplicas" in marked
        assert await kube_client.get(deployment_path) is None

        async def warnings() -> list[dict[str, Any]]:
            items = await kube_client.list(kube.collection_path("v1", "events", kube_namespace))
            return [e for e in items if e.get("reason") == "InvalidSpec" and e.get("type") == "Warning"]

        assert await h.eventually(warnings, "InvalidSpec Warning event")

        await kube_client.merge_patch(f"{consumers}/{name}", {"spec": {"scaling": {"minReplicas": 1}}})
        assert await h.eventually(lambda: kube_client.get(deployment_path), "Deployment after the fix")
        cleared = await h.eventually(lambda: _not_invalid(degraded_reason), "Degraded cleared")
        assert cleared.startswith("False:")
        fixed = await kube_client.get(f"{consumers}/{name}")
        assert fixed is not None
        assert fixed["status"]["observedGeneration"] == fixed["metadata"]["generation"] == 2
        await kube_client.delete(f"{consumers}/{name}")
        await h.eventually(lambda: _absent(kube_client, f"{consumers}/{name}"), "FanoutConsumer gone")


async def _not_invalid(probe: Callable[[], Awaitable[str | None]]) -> str | None:
    value = await probe()
    return value if value and not value.startswith("True:InvalidSpec") else None
