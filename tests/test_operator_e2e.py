"""End to end: the operator under kopf.testing.KopfRunner, a Kubernetes API, and the moto server.

The Kubernetes API is kmock's emulator (an in-memory API server over HTTP, in its own thread)
by default, or a real cluster when KUBECONFIG is set (``-m cluster``); the test body is the same.

What kmock does NOT do, and how the harness makes up for it (honestly, in the open):
- no garbage collector: :class:`KmockCluster` runs a small one that deletes objects whose
  every ownerReference names a uid no live FanoutConsumer has. Children without the right
  owner reference would therefore survive and fail the test, as they would in a cluster.
- no controllers: Deployments never get pods or status; the test checks what the operator
  writes (spec.replicas through the scale subresource, the ConfigMap, status, Events).
- it stores what it is sent: no defaulting, no schema validation, no server-set uid (the test
  sends one; a real API server replaces it and the test reads it back).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import pathlib
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, ClassVar

import aiohttp
import kmock
import kopf
import kopf.testing
import prometheus_client.parser
import pytest
import yaml

from fanout_lab.simulators import aws
from fanout_operator import cli, crd, kube, rbac, rendering

RESOURCES: dict[str, tuple[str, set[str]]] = {
    "fanout.dev/v1alpha1/fanoutconsumers": ("FanoutConsumer", {"status", "scale"}),
    "apps/v1/deployments": ("Deployment", {"status", "scale"}),
    "v1/configmaps": ("ConfigMap", set()),
    "v1/serviceaccounts": ("ServiceAccount", set()),
    "policy/v1/poddisruptionbudgets": ("PodDisruptionBudget", set()),
    "v1/pods": ("Pod", set()),
    "v1/events": ("Event", set()),
}
# Cluster-scoped resources kopf discovers: it lists/watches namespaces and watches CRDs.
CLUSTER_RESOURCES: dict[str, str] = {
    "v1/namespaces": "Namespace",
    "apiextensions.k8s.io/v1/customresourcedefinitions": "CustomResourceDefinition",
}
CHILD_COLLECTIONS = (
    "/api/v1/configmaps",
    "/apis/apps/v1/deployments",
    "/api/v1/serviceaccounts",
    "/apis/policy/v1/poddisruptionbudgets",
)
VERBS = {"get", "list", "watch", "create", "patch", "update", "delete"}
TIMEOUT = 30.0
TEST_AGENT = "fanout-e2e-test"


class ApiServerEmulator(kmock.KubernetesEmulator):
    """kmock plus the metadata a real API server maintains and kopf relies on.

    kmock stores objects as sent; kopf's finalizer patches carry a JSON-patch ``test`` of
    ``metadata.resourceVersion``, and the operator's owner references need the server's uid.
    So every write gets a fresh resourceVersion, creations get uid / creationTimestamp /
    generation, spec patches bump the generation, a failed ``test`` is a 422 (kmock: 500),
    listings carry the current resourceVersion, and a watch started from it does not replay
    older objects (kmock replays them all, handing kopf stale copies right after its patches).
    """

    calls: ClassVar[list[tuple[str, str, str]]] = []

    async def _handle(self, request: kmock.Request) -> Any:
        agent = str(request.headers.get("User-Agent", ""))
        if agent.startswith(("fanout-operator", "kopf/")):  # not the test, not the stand-in GC
            query = f"?{request.url.query_string}" if request.url.query_string else ""
            method = str(getattr(request.method, "value", request.method)).upper()
            self.calls.append((agent, method, request.url.path + query))
        if request.resource is not None and request.action in (kmock.action.CREATE, kmock.action.UPDATE):
            version = _VERSIONS.next()
            data = request.data
            if isinstance(data, dict):
                metadata = data.setdefault("metadata", {})
                metadata["resourceVersion"] = version
                if request.action == kmock.action.CREATE:
                    metadata.setdefault("uid", str(uuid.uuid4()))
                    metadata.setdefault("generation", 1)
                    metadata.setdefault(
                        "creationTimestamp", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
                    )
                elif "spec" in data and request.subresource is None:
                    stored = self._stored_metadata(request)
                    metadata["generation"] = int(stored.get("generation", 1)) + 1
            elif isinstance(data, list):
                self._check_json_patch_tests(request, data)
                data.append({"op": "add", "path": "/metadata/resourceVersion", "value": version})
        return await super()._handle(request)

    async def _serve_list(self, request: kmock.Request) -> Any:
        listing = await super()._serve_list(request)
        listing["metadata"]["resourceVersion"] = str(_VERSIONS.current)
        return listing

    async def _serve_watch(self, request: kmock.Request) -> Any:
        # A watch from a listing's resourceVersion starts after it; kmock replays every object.
        since = str(request.params.get("resourceVersion", ""))
        async for event in super()._serve_watch(request):
            if since.isdigit() and isinstance(event, dict) and event.get("type") == "ADDED":
                version = str(event["object"].get("metadata", {}).get("resourceVersion", "0"))
                if version.isdigit() and int(version) <= int(since):
                    continue
            yield event

    def _stored_metadata(self, request: kmock.Request) -> dict[str, Any]:
        key = (request.resource, request.namespace, request.name)
        if key not in self.objects:
            return {}
        return dict(dict(self.objects[key]).get("metadata") or {})

    def _check_json_patch_tests(self, request: kmock.Request, ops: list[Any]) -> None:
        """A failed ``test`` op is 422 Unprocessable Entity on a real server (kmock says 500)."""
        if not self._stored_metadata(request):
            return
        stored = self._stored_metadata(request).get("resourceVersion")
        for op in ops:
            if (
                op.get("op") == "test"
                and op.get("path") == "/metadata/resourceVersion"
                and op["value"] != stored
            ):
                raise kmock.KubernetesError(
                    status=422, reason="Invalid", message="resourceVersion test failed"
                )


class _Versions:
    """The API server's resourceVersion sequence (one for all kinds, as in etcd)."""

    def __init__(self) -> None:
        self._counter = itertools.count(1)
        self.current = 0

    def next(self) -> str:
        self.current = next(self._counter)
        return str(self.current)


_VERSIONS = _Versions()


class KmockCluster:
    """kmock's Kubernetes emulator in a thread of its own, plus a stand-in garbage collector."""

    def __init__(self) -> None:
        self.url = ""
        self.collected: list[str] = []
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with ApiServerEmulator() as emulator, kmock.Server(emulator) as server:
            for key, (kind, subresources) in RESOURCES.items():
                emulator.resources[key] = kmock.ResourceInfo(
                    kind=kind, namespaced=True, verbs=VERBS, subresources=subresources
                )
            for key, kind in CLUSTER_RESOURCES.items():
                emulator.resources[key] = kmock.ResourceInfo(kind=kind, namespaced=False, verbs=VERBS)
            self.url = str(server.url).rstrip("/")
            self._ready.set()
            async with aiohttp.ClientSession(self.url) as session:
                while not self._stop.is_set():
                    await self._collect_garbage(session)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stop.wait(), 0.2)

    async def _collect_garbage(self, session: aiohttp.ClientSession) -> None:
        async with session.get("/apis/fanout.dev/v1alpha1/fanoutconsumers") as response:
            owners = {item["metadata"].get("uid") for item in (await response.json())["items"]}
        for collection in CHILD_COLLECTIONS:
            async with session.get(collection) as response:
                items = (await response.json())["items"]
            for item in items:
                references = item["metadata"].get("ownerReferences") or []
                if references and not any(reference.get("uid") in owners for reference in references):
                    metadata = item["metadata"]
                    path = collection.replace(
                        "/deployments", f"/namespaces/{metadata['namespace']}/deployments"
                    )
                    if "/namespaces/" not in path:
                        prefix, plural = collection.rsplit("/", 1)
                        path = f"{prefix}/namespaces/{metadata['namespace']}/{plural}"
                    async with session.delete(f"{path}/{metadata['name']}"):
                        self.collected.append(f"{collection}/{metadata['name']}")

    def __enter__(self) -> KmockCluster:
        ApiServerEmulator.calls.clear()
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("kmock did not start")
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def kubeconfig(self, directory: pathlib.Path) -> pathlib.Path:
        path = directory / "kubeconfig"
        path.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "kmock", "cluster": {"server": self.url}}],
                    "users": [{"name": "tester", "user": {"token": "kmock"}}],
                    "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "tester"}}],
                    "current-context": "kmock",
                }
            )
        )
        return path


def permission(method: str, path_and_query: str) -> tuple[str, str, str] | None:
    """(apiGroup, resource[/subresource], verb) an API call needs; None for discovery URLs."""
    path, _, query = path_and_query.partition("?")
    parts = [part for part in path.split("/") if part]
    if parts[:1] == ["api"] and len(parts) >= 3:
        group, rest = "", parts[2:]
    elif parts[:1] == ["apis"] and len(parts) >= 4:
        group, rest = parts[1], parts[3:]
    else:
        return None  # /api, /apis, /version, group discovery: open to every authenticated user
    if rest[:1] == ["namespaces"] and len(rest) >= 3:
        rest = rest[2:]
    resource, name, subresource = (
        rest[0],
        (rest[1] if len(rest) > 1 else None),
        (rest[2] if len(rest) > 2 else None),
    )
    if subresource:
        resource = f"{resource}/{subresource}"
    verb = {
        "GET": "get" if name else ("watch" if "watch=true" in query else "list"),
        "POST": "create",
        "PATCH": "patch",
        "PUT": "update",
        "DELETE": "delete",
    }[method]
    return group, resource, verb


@pytest.fixture(
    params=[
        "kmock",
        pytest.param(
            "cluster",
            marks=[
                pytest.mark.cluster,
                pytest.mark.skipif(not os.environ.get("KUBECONFIG"), reason="KUBECONFIG not set"),
            ],
        ),
    ]
)
def api(
    request: pytest.FixtureRequest, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """'kmock' (KUBECONFIG pointed at a fresh emulator) or 'cluster' (KUBECONFIG as given)."""
    if request.param == "cluster":
        yield "cluster"
        return
    with KmockCluster() as cluster:
        monkeypatch.setenv("KUBECONFIG", str(cluster.kubeconfig(tmp_path)))
        yield "kmock"


@pytest.fixture
async def client(api: str) -> AsyncIterator[kube.KubeClient]:
    info = kopf.login_with_kubeconfig(settings=kopf.OperatorSettings())
    assert info is not None
    kube_client = kube.KubeClient(kube.Credentials(info), user_agent=TEST_AGENT)
    try:
        yield kube_client
    finally:
        await kube_client.close()


@pytest.fixture
async def namespace(api: str, client: kube.KubeClient) -> AsyncIterator[str]:
    name = f"fanout-e2e-{uuid.uuid4().hex[:6]}"
    if api == "kmock":
        yield name  # kmock 0.8 cannot store Namespace objects; namespaced paths work without one
        return
    crds = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
    with contextlib.suppress(kube.Conflict):
        await client.create(crds, crd.build_crd())
    await eventually(lambda: _crd_established(client), "CRD established")
    await client.create(
        "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
    )
    try:
        yield name
    finally:
        await client.delete(f"/api/v1/namespaces/{name}")


async def _crd_established(client: kube.KubeClient) -> bool:
    found = await client.get(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{crd.CRD_NAME}")
    conditions = (found or {}).get("status", {}).get("conditions", [])
    return any(c.get("type") == "Established" and c.get("status") == "True" for c in conditions)


async def eventually(
    check: Callable[[], Awaitable[Any]],
    what: str,
    timeout: float = TIMEOUT,
    context: Callable[[], Awaitable[Any]] | None = None,
) -> Any:
    """Poll ``check`` until it returns something truthy; bounded in time and count."""
    deadline = asyncio.get_running_loop().time() + timeout
    for _ in range(int(timeout / 0.1) + 1):
        result = await check()
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.1)
    seen = await context() if context is not None else None
    raise AssertionError(f"timed out waiting for: {what}; context: {seen!r}")


def _consumer(name: str, namespace: str, queue_url: str) -> dict[str, Any]:
    return {
        "apiVersion": "fanout.dev/v1alpha1",
        "kind": "FanoutConsumer",
        "metadata": {"name": name, "namespace": namespace},
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
    api: str,
    client: kube.KubeClient,
    namespace: str,
    sqs: Any,
    moto_server: aws.MotoServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    name = f"crm-{uuid.uuid4().hex[:6]}"
    queue_url = (await sqs.create_queue(QueueName=name))["QueueUrl"]
    consumers = kube.collection_path("fanout.dev/v1alpha1", "fanoutconsumers", namespace)
    deployment_path = kube.object_path("apps/v1", "deployments", namespace, name)
    config_map_path = kube.object_path("v1", "configmaps", namespace, f"{name}-config")
    monkeypatch.setenv("FANOUT_WORKER_IMAGE", "fanout-consumer:default")
    metrics_port = aws.free_port()
    for variable, value in cli.environment(
        ["--metrics-port", str(metrics_port), "--metrics-address", "127.0.0.1"]
    ).items():
        monkeypatch.setenv(variable, value)

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
            and sample.labels.get("namespace") == namespace
        }

    async def deployment_ready() -> int:
        found = await client.get(deployment_path)
        return int(((found or {}).get("status") or {}).get("readyReplicas") or 0)

    async def replicas() -> int | None:
        found = await client.get(deployment_path)
        return None if found is None else int(found["spec"].get("replicas", 1))

    async def consumer_status() -> dict[str, Any]:
        found = await client.get(f"{consumers}/{name}")
        return dict((found or {}).get("status") or {})

    async def events(reason: str) -> list[dict[str, Any]]:
        items = await client.list(kube.collection_path("v1", "events", namespace))
        return [
            e for e in items if e.get("involvedObject", {}).get("name") == name and e.get("reason") == reason
        ]

    # kmock 0.8 cannot serve the namespaces list kopf reads in --namespace mode, so against it the
    # operator watches cluster-wide (the emulator holds only this test's objects anyway).
    scope = ["--all-namespaces"] if api == "kmock" else ["--namespace", namespace]
    arguments = cli.kopf_arguments([*scope, "--standalone", "--liveness", ""])
    with kopf.testing.KopfRunner(arguments, timeout=30) as runner:
        created = await client.create(consumers, _consumer(name, namespace, queue_url))
        uid = created["metadata"]["uid"]

        # Applying creates the ConfigMap and the Deployment, owned by the FanoutConsumer.
        deployment = await eventually(lambda: client.get(deployment_path), "Deployment created")
        config_map = await eventually(lambda: client.get(config_map_path), "ConfigMap created")
        for child in (deployment, config_map):
            assert [ref["uid"] for ref in child["metadata"]["ownerReferences"]] == [uid]
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        assert container["image"] == "fanout-consumer:e2e"
        assert yaml.safe_load(config_map["data"]["consumer.yaml"])["spec"]["queue"]["url"] == queue_url
        await eventually(lambda: _equals(replicas, 0), "idle fleet at zero")

        # Filling the queue scales the Deployment (35 / 10 per replica → 4) and the replica file.
        await sqs.send_message_batch(
            QueueUrl=queue_url, Entries=[{"Id": str(i), "MessageBody": f"e{i}"} for i in range(10)]
        )
        for start in range(10, 35, 5):
            entries = [{"Id": str(i), "MessageBody": f"e{i}"} for i in range(start, start + 5)]
            await sqs.send_message_batch(QueueUrl=queue_url, Entries=entries)
        await eventually(lambda: _equals(replicas, 4), "scaled up to 4")
        config_map = await client.get(config_map_path)
        assert config_map is not None
        assert config_map["data"]["replicas"] == "4"
        current = await eventually(
            lambda: _status_where(consumer_status, lambda s: s.get("backlog", {}).get("total") == 35),
            "status",
        )
        assert current["replicas"] == 4
        assert current["queue"] == name
        assert current["selector"] == rendering.selector_string(rendering.Owner(name, namespace, uid))
        assert "backlog 35 / target 10 → 4" in current["reason"]
        conditions = {c["type"]: c for c in current["conditions"]}
        assert conditions["Ready"]["status"] == "True"
        assert conditions["Degraded"]["status"] == "False"
        assert current["lastScaleTime"]
        assert await eventually(lambda: events("ScaledUp"), "ScaledUp event")

        # The operator's /metrics tells the same story: backlog, desired and ready replicas.
        async def scaled_up_metrics() -> dict[str, float] | None:
            samples = await scraped()
            wanted = samples.get("fanout_operator_backlog_messages") == 35
            wanted = wanted and samples.get("fanout_operator_desired_replicas") == 4
            return samples if wanted else None

        samples = await eventually(scaled_up_metrics, "backlog and desired replicas scraped", context=scraped)
        assert samples["fanout_operator_actual_replicas"] == await deployment_ready()
        assert samples["fanout_operator_in_flight_messages"] == 0
        assert samples["fanout_operator_scaling_decisions_total/up"] >= 1
        assert "fanout_operator_dead_letter_messages" not in samples  # no spec.deadLetter

        # Draining scales down after the stabilization window, then to zero after the cooldown.
        await _drain(sqs, queue_url, keep=15)
        await eventually(lambda: _equals(replicas, 2), "scaled down to 2", context=consumer_status)
        await _drain(sqs, queue_url, keep=0)
        await eventually(lambda: _equals(replicas, 0), "scaled to zero", context=consumer_status)

        async def scaled_to_zero_events() -> list[dict[str, Any]]:
            return [
                e for e in await events("ScaledDown") if "→ 0" in e["message"] and "cooldown" in e["message"]
            ]

        await eventually(scaled_to_zero_events, "ScaledDown event naming the cooldown")

        # Deleting the resource removes its children (garbage collection through ownerReferences).
        await client.delete(f"{consumers}/{name}")
        await eventually(lambda: _absent(client, f"{consumers}/{name}"), "FanoutConsumer gone")
        await eventually(lambda: _absent(client, deployment_path), "Deployment collected")
        await eventually(lambda: _absent(client, config_map_path), "ConfigMap collected")
        # A deleted consumer leaves no series behind.
        await eventually(lambda: _equals(scraped, {}), "series removed", context=scraped)

    assert runner.exception is None
    assert runner.exit_code == 0

    # Every call the operator (kopf included) made is covered by fanout_operator.rbac, which the
    # chart's ClusterRole is checked against. Only kmock records the calls; a cluster running the
    # operator under that role would have refused anything else.
    if api == "kmock":
        made = {permission(method, path) for _, method, path in ApiServerEmulator.calls}
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


async def _absent(client: kube.KubeClient, path: str) -> bool:
    return await client.get(path) is None


async def test_invalid_spec_is_marked_and_a_fix_is_picked_up(
    api: str, client: kube.KubeClient, namespace: str, moto_server: aws.MotoServer
) -> None:
    name = f"bad-{uuid.uuid4().hex[:6]}"
    consumers = kube.collection_path("fanout.dev/v1alpha1", "fanoutconsumers", namespace)
    deployment_path = kube.object_path("apps/v1", "deployments", namespace, name)
    manifest = _consumer(name, namespace, f"{moto_server.endpoint_url}/123456789012/{name}")
    # Valid field by field (the CRD schema lets it in), invalid as a whole (the model does not).
    manifest["spec"]["scaling"].update({"minReplicas": 4, "maxReplicas": 2})

    async def degraded_reason() -> str | None:
        found = await client.get(f"{consumers}/{name}")
        conditions = {c["type"]: c for c in ((found or {}).get("status") or {}).get("conditions", [])}
        degraded = conditions.get("Degraded")
        return f"{degraded['status']}:{degraded['reason']}:{degraded['message']}" if degraded else None

    scope = ["--all-namespaces"] if api == "kmock" else ["--namespace", namespace]
    with kopf.testing.KopfRunner(cli.kopf_arguments([*scope, "--standalone", "--liveness", ""]), timeout=30):
        await client.create(consumers, manifest)
        marked = await eventually(degraded_reason, "Degraded condition")
        assert marked.startswith("True:InvalidSpec:")
        assert "maxReplicas must be >= minReplicas" in marked
        assert await client.get(deployment_path) is None

        async def warnings() -> list[dict[str, Any]]:
            items = await client.list(kube.collection_path("v1", "events", namespace))
            return [e for e in items if e.get("reason") == "InvalidSpec" and e.get("type") == "Warning"]

        assert await eventually(warnings, "InvalidSpec Warning event")

        await client.merge_patch(f"{consumers}/{name}", {"spec": {"scaling": {"minReplicas": 1}}})
        assert await eventually(lambda: client.get(deployment_path), "Deployment after the fix")
        cleared = await eventually(lambda: _not_invalid(degraded_reason), "Degraded cleared")
        assert cleared.startswith("False:")
        fixed = await client.get(f"{consumers}/{name}")
        assert fixed is not None
        assert fixed["status"]["observedGeneration"] == fixed["metadata"]["generation"] == 2
        await client.delete(f"{consumers}/{name}")
        await eventually(lambda: _absent(client, f"{consumers}/{name}"), "FanoutConsumer gone")


async def _not_invalid(probe: Callable[[], Awaitable[str | None]]) -> str | None:
    value = await probe()
    return value if value and not value.startswith("True:InvalidSpec") else None
