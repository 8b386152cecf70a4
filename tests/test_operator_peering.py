"""Peering, end to end: real ``fanout-operator`` processes against one kmock API server.

- Without peering flags the operator never waits silently: it creates the missing peering
  object and works, or — no peering CRDs, or RBAC (the chart's own rules) forbids creating it —
  works standalone after one warning line that says how to enable peering.
- With ``--peering NAME`` (the chart's way) a missing object that cannot be created is an error
  the log repeats, and nothing is done unsupervised.
- Two processes peered through one object: only the higher priority acts; when it dies, the
  other takes over within the peering lifetime (3 s here, ``--peering-lifetime``).
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import kopf
import pytest

from fanout_lab.simulators import aws
from fanout_operator import kube, peering, rbac
from tests import operator_harness as h

NAMESPACE = "peering-e2e"
LIFETIME = 3
CONSUMERS = kube.collection_path("fanout.dev/v1alpha1", "fanoutconsumers", NAMESPACE)
PEERING_PATH = "/apis/kopf.dev/v1/clusterkopfpeerings/fanout-operator"
# No liveness endpoint and no metrics port: those are fixed ports other tests may hold.
QUIET = ["--liveness=", "--metrics-port=0"]
STANDALONE_WARNING = "peering is off, running standalone"


def chart_rules() -> set[tuple[str, str, str]]:
    """What the chart's ClusterRole grants: fanout_operator.rbac's rules, nothing more."""
    return {(rule.api_group, rule.resource, verb) for rule in rbac.REQUIRED_RULES for verb in rule.verbs}


@pytest.fixture
def cluster_factory(tmp_path: pathlib.Path) -> Iterator[Any]:
    started: list[h.KmockCluster] = []

    def start(**options: Any) -> tuple[h.KmockCluster, pathlib.Path]:
        cluster = h.KmockCluster(**options).__enter__()
        started.append(cluster)
        return cluster, cluster.kubeconfig(tmp_path)

    yield start
    for cluster in started:
        cluster.__exit__(None, None, None)


@pytest.fixture
async def client_for() -> AsyncIterator[Any]:
    made: list[kube.KubeClient] = []

    def connect(cluster: h.KmockCluster) -> kube.KubeClient:
        client = kube.KubeClient(
            kube.Credentials(kopf.ConnectionInfo(server=cluster.url)), user_agent=h.TEST_AGENT
        )
        made.append(client)
        return client

    yield connect
    for client in made:
        await client.close()


def _env(kubeconfig: pathlib.Path, identity: str) -> dict[str, str]:
    return {**os.environ, "KUBECONFIG": str(kubeconfig), "POD_ID": identity}


def _consumer(name: str, queue_url: str) -> dict[str, Any]:
    return {
        "apiVersion": "fanout.dev/v1alpha1",
        "kind": "FanoutConsumer",
        "metadata": {"name": name, "namespace": NAMESPACE, "uid": str(uuid.uuid4())},
        "spec": {
            "queue": {"url": queue_url, "region": "us-east-1"},
            "sink": {"type": "webhook", "url": "http://127.0.0.1:9/events"},
            "scaling": {
                "minReplicas": 0,
                "maxReplicas": 5,
                "targetBacklogPerReplica": 10,
                "pollingIntervalSeconds": 0.3,
                "scaleDownStabilizationSeconds": 1,
            },
        },
    }


async def _deployment(client: kube.KubeClient, name: str) -> dict[str, Any] | None:
    return await client.get(kube.object_path("apps/v1", "deployments", NAMESPACE, name))


async def _works(client: kube.KubeClient, sqs: Any, process: h.OperatorProcess) -> None:
    """A consumer applied now gets its Deployment: the operator acts."""
    name = f"c-{uuid.uuid4().hex[:6]}"
    url = (await sqs.create_queue(QueueName=name))["QueueUrl"]
    await client.create(CONSUMERS, _consumer(name, url))

    async def log() -> str:
        return process.text()

    await h.eventually(lambda: _deployment(client, name), "the operator acts", context=log)


async def test_without_peering_flags_the_missing_peering_object_is_created(
    cluster_factory: Any, client_for: Any, sqs: Any, tmp_path: pathlib.Path
) -> None:
    cluster, kubeconfig = cluster_factory(peering=True)
    client = client_for(cluster)
    with h.OperatorProcess(QUIET, env=_env(kubeconfig, "op-solo"), log=tmp_path / "solo.log") as solo:
        await _works(client, sqs, solo)
        found = await h.eventually(lambda: client.get(PEERING_PATH), "peering object")
        assert "op-solo" in (found.get("status") or {})  # and it keeps its keep-alives there
        assert STANDALONE_WARNING not in solo.text()


@pytest.mark.parametrize(
    ("options", "cause"),
    [
        ({"peering": False}, "the kopf.dev peering CRDs are not installed"),
        ({"peering": True, "rules": chart_rules()}, "may not create it"),
    ],
    ids=["no-peering-crds", "rbac-forbids-creating-it"],
)
async def test_without_peering_flags_no_peering_means_standalone_and_one_warning_line(
    cluster_factory: Any,
    client_for: Any,
    sqs: Any,
    tmp_path: pathlib.Path,
    options: dict[str, Any],
    cause: str,
) -> None:
    cluster, kubeconfig = cluster_factory(**options)
    client = client_for(cluster)
    with h.OperatorProcess(QUIET, env=_env(kubeconfig, "op-alone"), log=tmp_path / "alone.log") as alone:
        await _works(client, sqs, alone)
        warnings = [line for line in alone.text().splitlines() if STANDALONE_WARNING in line]
    assert len(warnings) == 1, alone.text()
    assert cause in warnings[0]
    assert "--standalone" in warnings[0]  # how to silence it
    assert await client.get(PEERING_PATH) is None


async def test_required_peering_that_cannot_be_had_is_an_error_not_silence(
    cluster_factory: Any, client_for: Any, sqs: Any, tmp_path: pathlib.Path
) -> None:
    cluster, kubeconfig = cluster_factory(peering=True, rules=chart_rules())
    client = client_for(cluster)
    name = f"c-{uuid.uuid4().hex[:6]}"
    url = (await sqs.create_queue(QueueName=name))["QueueUrl"]
    await client.create(CONSUMERS, _consumer(name, url))
    argv = [*QUIET, "--peering", "fanout-operator"]
    with h.OperatorProcess(argv, env=_env(kubeconfig, "op-strict"), log=tmp_path / "strict.log") as strict:

        async def said_so() -> bool:
            return "peering is required (--peering fanout-operator)" in strict.text()

        await h.eventually(said_so, "an error naming the missing peering object")
        assert "kubectl apply" in strict.text()
        assert await _deployment(client, name) is None  # nothing done unsupervised


async def test_two_operators_one_acts_and_the_other_takes_over_when_it_dies(
    cluster_factory: Any, client_for: Any, sqs: Any, tmp_path: pathlib.Path, moto_server: aws.MotoServer
) -> None:
    cluster, kubeconfig = cluster_factory(peering=True)
    client = client_for(cluster)
    await client.create("/apis/kopf.dev/v1/clusterkopfpeerings", peering.peering_object())  # as the chart
    peered = [*QUIET, "--peering", "fanout-operator", f"--peering-lifetime={LIFETIME}"]
    name = f"c-{uuid.uuid4().hex[:6]}"
    url = (await sqs.create_queue(QueueName=name))["QueueUrl"]
    scale_path = f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments/{name}/scale"

    first = h.OperatorProcess(
        [*peered, "--priority=200"], env=_env(kubeconfig, "op-a"), log=tmp_path / "a.log"
    )
    second: h.OperatorProcess | None = None
    try:
        await client.create(CONSUMERS, _consumer(name, url))
        await h.eventually(lambda: _deployment(client, name), "the first operator acts")
        second = h.OperatorProcess(
            [*peered, "--priority=100"], env=_env(kubeconfig, "op-b"), log=tmp_path / "b.log"
        )

        async def both_peered() -> bool:
            found = await client.get(PEERING_PATH)
            return {"op-a", "op-b"} <= set((found or {}).get("status") or {})

        await h.eventually(both_peered, "both operators in the peering object")
        writes_by_a = len(h.calls_by("(op-a)"))
        await asyncio.sleep(2)
        assert len(h.calls_by("(op-a)")) > writes_by_a  # the first keeps working...
        assert h.calls_by("(op-b)") == []  # ...and the second does nothing

        first.kill()
        died = time.monotonic()
        for start in (0, 10, 20):
            entries = [{"Id": str(i), "MessageBody": "x"} for i in range(start, min(start + 10, 25))]
            await sqs.send_message_batch(QueueUrl=url, Entries=entries)

        async def scaled_by_b() -> bool:
            return any(call.endswith(scale_path) for call in h.calls_by("(op-b)"))

        await h.eventually(scaled_by_b, "the second operator scales the fleet", context=lambda: _log(second))
        took = time.monotonic() - died
        assert took < LIFETIME + 5, f"took over after {took:.1f}s"
        deployment = await _deployment(client, name)
        assert deployment is not None
        assert deployment["spec"]["replicas"] == 3
    finally:
        first.stop()
        if second is not None:
            second.stop()


async def _log(process: h.OperatorProcess | None) -> str:
    return process.text()[-2000:] if process is not None else ""
