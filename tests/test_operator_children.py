"""The operator's children end to end: drift repaired, guardrails enforced, IRSA or Pod Identity.

Against kmock's emulator (or a real cluster with ``-m cluster``), with the operator in a thread
and a short drift resync (``--resync-seconds``), so every repair shows within a second or two.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from fanout_lab.simulators import aws
from fanout_operator import kube, rendering
from tests import operator_harness as h

RESYNC = "0.5"
ARN = "arn:aws:iam::123456789012:role/crm-sync"
FOREIGN = "sidecar.example/inject"


class Consumer:
    """One FanoutConsumer's paths in a namespace."""

    def __init__(self, namespace: str, name: str) -> None:
        self.namespace = namespace
        self.name = name
        self.collection = kube.collection_path("fanout.dev/v1alpha1", "fanoutconsumers", namespace)
        self.path = f"{self.collection}/{name}"
        self.deployment = kube.object_path("apps/v1", "deployments", namespace, name)
        self.config_map = kube.object_path("v1", "configmaps", namespace, f"{name}-config")
        self.service_account = kube.object_path("v1", "serviceaccounts", namespace, f"{name}-worker")
        self.pdb = kube.object_path("policy/v1", "poddisruptionbudgets", namespace, name)

    def children(self) -> tuple[str, ...]:
        return (self.deployment, self.config_map, self.service_account, self.pdb)

    def manifest(self, queue_url: str, *, role: bool = True, **workload: Any) -> dict[str, Any]:
        return {
            "apiVersion": "fanout.dev/v1alpha1",
            "kind": "FanoutConsumer",
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": {
                "queue": {"url": queue_url, "region": "us-east-1"},
                "sink": {"type": "webhook", "url": "http://127.0.0.1:9/events"},
                "scaling": {"minReplicas": 1, "maxReplicas": 3, "pollingIntervalSeconds": 0.3},
                "workload": {**({"iamRoleArn": ARN} if role else {}), **workload},
            },
        }


def _operator(kube_api: str, namespace: str, *flags: str) -> h.OperatorThread:
    """A standalone operator watching the test's namespace (kmock: every namespace)."""
    # kmock cannot serve the namespace list kopf reads with --namespace (see test_operator_e2e).
    scope = ["--all-namespaces"] if kube_api == "kmock" else ["--namespace", namespace]
    return h.OperatorThread(h.operator_settings(*scope, "--standalone", *flags))


async def _with_queue(sqs: Any, namespace: str, prefix: str) -> tuple[Consumer, str]:
    consumer = Consumer(namespace, f"{prefix}-{uuid.uuid4().hex[:6]}")
    return consumer, (await sqs.create_queue(QueueName=consumer.name))["QueueUrl"]


async def _events(client: kube.KubeClient, consumer: Consumer, reason: str) -> list[dict[str, Any]]:
    items = await client.list(kube.collection_path("v1", "events", consumer.namespace))
    return [
        e
        for e in items
        if e.get("involvedObject", {}).get("name") == consumer.name and e.get("reason") == reason
    ]


async def _all(checks: list[Callable[[], Awaitable[Any]]]) -> bool:
    return all([await check() for check in checks])


async def test_deleted_or_edited_children_come_back_and_what_others_own_stays(
    kube_api: str, kube_client: kube.KubeClient, kube_namespace: str, sqs: Any, moto_server: aws.MotoServer
) -> None:
    consumer, url = await _with_queue(sqs, kube_namespace, "drift")
    with _operator(kube_api, kube_namespace, "--resync-seconds", RESYNC):
        await kube_client.create(consumer.collection, consumer.manifest(url))
        for path in consumer.children():
            await h.eventually(lambda path=path: kube_client.get(path), f"{path} created")
        original = {path: await kube_client.get(path) for path in consumer.children()}

        # Others' additions, and a quiet period: an unchanged cluster sees no repair writes.
        await kube_client.merge_patch(
            consumer.deployment,
            {
                "metadata": {"annotations": {"example.com/owner": "platform"}},
                "spec": {"template": {"metadata": {"annotations": {FOREIGN: "false"}}}},
            },
        )
        await kube_client.merge_patch(consumer.config_map, {"metadata": {"labels": {"team": "crm"}}})
        writes = len(h.calls_by("fanout-operator", methods=("PATCH",)))
        await asyncio.sleep(1.5)  # three resync rounds
        children = set(consumer.children())
        if kube_api == "kmock":  # only the emulator records calls
            repaired = [
                call
                for call in h.calls_by("fanout-operator", methods=("PATCH",))[writes:]
                if call[6:] in children
            ]
            assert repaired == []

        # Hand edits and deletions are put back.
        await kube_client.merge_patch(
            consumer.deployment,
            {"spec": {"template": {"spec": {"containers": [{"name": "worker", "image": "evil/miner:1"}]}}}},
        )
        await kube_client.merge_patch(consumer.config_map, {"data": {"consumer.yaml": "hacked: true\n"}})
        for path in (consumer.service_account, consumer.pdb):
            await kube_client.delete(path)

        async def image_restored() -> bool:
            found = await kube_client.get(consumer.deployment)
            wanted = original[consumer.deployment]
            return bool(found) and (
                found["spec"]["template"]["spec"]["containers"]
                == wanted["spec"]["template"]["spec"]["containers"]
            )

        async def config_restored() -> bool:
            found = await kube_client.get(consumer.config_map)
            return bool(found) and found["data"] == original[consumer.config_map]["data"]

        await h.eventually(
            lambda: _all(
                [
                    image_restored,
                    config_restored,
                    lambda: kube_client.get(consumer.service_account),
                    lambda: kube_client.get(consumer.pdb),
                ]
            ),
            "every child repaired",
        )
        deployment = await kube_client.get(consumer.deployment)
        config_map = await kube_client.get(consumer.config_map)
        assert deployment is not None
        assert config_map is not None
        assert deployment["metadata"]["annotations"]["example.com/owner"] == "platform"
        assert deployment["spec"]["template"]["metadata"]["annotations"][FOREIGN] == "false"
        assert config_map["metadata"]["labels"]["team"] == "crm"
        account = await kube_client.get(consumer.service_account)
        assert account is not None
        assert account["metadata"]["annotations"][rendering.ANNOTATION_IRSA_ROLE] == ARN
        repaired_events = await h.eventually(
            lambda: _events(kube_client, consumer, "DriftRepaired"), "DriftRepaired event"
        )
        assert "put back" in repaired_events[0]["message"]
        await kube_client.delete(consumer.path)
        await h.eventually(lambda: _absent(kube_client, consumer.path), "FanoutConsumer gone")


async def _absent(client: kube.KubeClient, path: str) -> bool:
    return await client.get(path) is None


async def _degraded(client: kube.KubeClient, consumer: Consumer) -> str | None:
    found = await client.get(consumer.path)
    conditions = {c["type"]: c for c in ((found or {}).get("status") or {}).get("conditions", [])}
    degraded = conditions.get("Degraded")
    return f"{degraded['status']}:{degraded['reason']}:{degraded['message']}" if degraded else None


async def test_a_spec_outside_the_guardrails_is_marked_and_nothing_is_created(
    kube_api: str, kube_client: kube.KubeClient, kube_namespace: str, sqs: Any, moto_server: aws.MotoServer
) -> None:
    image, url = await _with_queue(sqs, kube_namespace, "image")
    role = Consumer(kube_namespace, f"role-{uuid.uuid4().hex[:6]}")
    rails = ("--resync-seconds", RESYNC, "--identity-namespace", "contact-center")
    with _operator(kube_api, kube_namespace, *rails):
        await kube_client.create(
            image.collection, image.manifest(url, role=False, image="docker.io/evil/miner:1")
        )
        await kube_client.create(role.collection, role.manifest(url))
        for consumer, problem in (
            (image, "repository 'docker.io/evil/miner' is not allowed"),
            (role, f"spec.workload.iamRoleArn: not allowed in namespace '{kube_namespace}'"),
        ):
            marked = await h.eventually(
                lambda consumer=consumer: _degraded(kube_client, consumer), "Degraded"
            )
            assert marked.startswith("True:InvalidSpec:"), marked
            assert problem in marked
            (warning,) = await h.eventually(
                lambda consumer=consumer: _events(kube_client, consumer, "InvalidSpec"), "InvalidSpec Event"
            )
            assert warning["type"] == "Warning"
        await asyncio.sleep(1.5)  # the scaling loop and three drift resyncs: still nothing
        for consumer in (image, role):
            for path in consumer.children():
                assert await kube_client.get(path) is None, path

        # Within the guardrails again: the children come.
        await kube_client.merge_patch(image.path, {"spec": {"workload": {"image": "fanout-consumer:1.0"}}})
        assert await h.eventually(lambda: kube_client.get(image.deployment), "Deployment once allowed")
        for consumer in (image, role):
            await kube_client.delete(consumer.path)
            await h.eventually(lambda consumer=consumer: _absent(kube_client, consumer.path), "gone")


async def test_with_pod_identity_the_consumers_account_is_created_for_an_association(
    kube_api: str, kube_client: kube.KubeClient, kube_namespace: str, sqs: Any, moto_server: aws.MotoServer
) -> None:
    consumer, url = await _with_queue(sqs, kube_namespace, "podid")
    with _operator(kube_api, kube_namespace, "--aws-identity", "pod-identity"):
        await kube_client.create(consumer.collection, consumer.manifest(url))
        account = await h.eventually(lambda: kube_client.get(consumer.service_account), "ServiceAccount")
        deployment = await h.eventually(lambda: kube_client.get(consumer.deployment), "Deployment")
        # The association binds (namespace, <name>-worker): no IRSA annotation, the role recorded.
        assert account["metadata"]["name"] == f"{consumer.name}-worker"
        assert account["metadata"]["annotations"] == {rendering.ANNOTATION_INTENDED_ROLE: ARN}
        assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == f"{consumer.name}-worker"
        await kube_client.delete(consumer.path)
        await h.eventually(lambda: _absent(kube_client, consumer.path), "FanoutConsumer gone")
