"""Running the operator against a Kubernetes API in tests: kmock's emulator, the operator itself.

Used by tests/test_operator_*.py. A test helper, never imported by the operator.

The Kubernetes API is kmock's emulator (an in-memory API server over HTTP, in its own thread)
by default, or a real cluster when KUBECONFIG is set (``-m cluster``).

What kmock does NOT do, and how the harness makes up for it (honestly, in the open):
- no garbage collector: :class:`KmockCluster` runs a small one that deletes objects whose
  every ownerReference names a uid no live FanoutConsumer has. Children without the right
  owner reference would therefore survive and fail the test, as they would in a cluster.
- no controllers: Deployments never get pods or status; the test checks what the operator
  writes (spec.replicas through the scale subresource, the ConfigMap, status, Events).
- it stores what it is sent: no defaulting, no schema validation, no server-set uid (the test
  sends one; a real API server replaces it and the test reads it back).
- it stores objects of any resource: the emulator answers 404 for resources it was not told
  about, as an API server does for a CRD that is not installed (kopf's peering CRDs are
  installed unless ``KmockCluster(peering=False)``);
- no RBAC: given ``rules`` (``fanout_operator.rbac``'s, as the chart grants them), the
  emulator answers 403 to any operator call they do not allow, as an API server would.

The operator runs either in a thread (:class:`OperatorThread`: ``cli.run`` with a settings
object and a stop flag, like kopf's own KopfRunner) or as the real ``fanout-operator`` console
script in a child process (:class:`OperatorProcess`), when the test needs separate processes
(peering) or the command line itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterator, Mapping, Sequence
from typing import Any, ClassVar

import aiohttp
import kmock
import kopf
import pytest
import yaml

from fanout_lab.simulators import aws
from fanout_operator import cli, crd, kube, settings

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
# kopf's peering CRDs, when the cluster has them installed (the chart's crds/).
PEERING_RESOURCES: dict[str, tuple[str, bool]] = {
    "kopf.dev/v1/clusterkopfpeerings": ("ClusterKopfPeering", False),
    "kopf.dev/v1/kopfpeerings": ("KopfPeering", True),
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
    # (apiGroup, resource, verb) the operator may use; None = everything (no RBAC).
    rules: ClassVar[Collection[tuple[str, str, str]] | None] = None

    async def _handle(self, request: kmock.Request) -> Any:
        agent = str(request.headers.get("User-Agent", ""))
        if agent.startswith(("fanout-operator", "kopf/")):  # not the test, not the stand-in GC
            query = f"?{request.url.query_string}" if request.url.query_string else ""
            method = str(getattr(request.method, "value", request.method)).upper()
            self.calls.append((agent, method, request.url.path + query))
            needed = permission(method, request.url.path + query)
            if self.rules is not None and needed is not None and needed not in self.rules:
                raise kmock.KubernetesError(status=403, reason="Forbidden", message=f"RBAC: {needed} denied")
        method = str(getattr(request.method, "value", request.method)).upper()
        query = f"?{request.url.query_string}" if request.url.query_string else ""
        addressed = permission(method, request.url.path + query)
        known = {(resource.group or "", resource.plural) for resource in self.resources}
        if addressed is not None and (addressed[0], addressed[1].split("/")[0]) not in known:
            # A real API server knows only the resources of its built-ins and installed CRDs.
            raise kmock.KubernetesError(
                status=404, reason="NotFound", message="the server could not find the requested resource"
            )
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

    def __init__(
        self, *, peering: bool = True, rules: Collection[tuple[str, str, str]] | None = None
    ) -> None:
        self.peering = peering
        self.rules = rules
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
            for key, (kind, namespaced) in PEERING_RESOURCES.items() if self.peering else ():
                emulator.resources[key] = kmock.ResourceInfo(kind=kind, namespaced=namespaced, verbs=VERBS)
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
        ApiServerEmulator.rules = self.rules
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("kmock did not start")
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
        ApiServerEmulator.rules = None

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


def calls_by(agent_part: str, methods: Collection[str] = ("POST", "PATCH", "PUT", "DELETE")) -> list[str]:
    """The writes (by default) the emulator saw from User-Agents containing ``agent_part``."""
    return [
        f"{method} {path}"
        for agent, method, path in ApiServerEmulator.calls
        if agent_part in agent and method in methods
    ]


class OperatorThread:
    """``with OperatorThread(config): ...`` runs ``cli.run(config)`` in a thread until the block ends."""

    def __init__(self, config: settings.OperatorSettings, *, timeout: float = 30.0) -> None:
        self.config = config
        self.timeout = timeout
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._target, daemon=True)

    def _target(self) -> None:
        try:
            cli.run(self.config, stop_flag=self._stop)
        except BaseException as error:  # re-raised in the test's thread
            self._error = error

    def __enter__(self) -> OperatorThread:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(self.timeout)
        if self._thread.is_alive():
            raise RuntimeError("the operator did not stop")
        if self._error is not None and exc_info[0] is None:
            raise self._error


def operator_settings(*argv: str, **overrides: Any) -> settings.OperatorSettings:
    """What ``fanout-operator ARGV`` runs with, then ``overrides``.

    No liveness endpoint or metrics port unless ARGV asks (ports are shared with other tests), and
    the workers' default image is ``fanout-consumer:test``, so the guardrails' default allows the
    ``fanout-consumer`` repository the tests' consumers name.
    """
    defaults = ["--liveness", "", "--metrics-port", "0", "--worker-image", "fanout-consumer:test"]
    parsed = cli.parse([*defaults, *argv], {"POD_ID": f"test-{uuid.uuid4().hex[:6]}"})
    return dataclasses.replace(parsed, **overrides)


class OperatorProcess:
    """The ``fanout-operator`` console script as a child process, its output in a file."""

    def __init__(self, argv: Sequence[str], *, env: Mapping[str, str], log: pathlib.Path) -> None:
        self.log = log
        script = pathlib.Path(sys.executable).parent / "fanout-operator"
        self._output = log.open("wb")
        self.process = subprocess.Popen(
            [str(script), *argv], env=dict(env), stdout=self._output, stderr=subprocess.STDOUT
        )

    def text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def kill(self) -> None:
        """A crash: no clean exit, no goodbye to the peers."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self, timeout: float = 20.0) -> int:
        code = aws.stop_process(self.process, timeout=timeout)
        self._output.close()
        return code

    def __enter__(self) -> OperatorProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


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
def kube_api(
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
async def kube_client(kube_api: str) -> AsyncIterator[kube.KubeClient]:
    info = kopf.login_with_kubeconfig(settings=kopf.OperatorSettings())
    assert info is not None
    made = kube.KubeClient(kube.Credentials(info), user_agent=TEST_AGENT)
    try:
        yield made
    finally:
        await made.close()


@pytest.fixture
async def kube_namespace(kube_api: str, kube_client: kube.KubeClient) -> AsyncIterator[str]:
    name = f"fanout-e2e-{uuid.uuid4().hex[:6]}"
    if kube_api == "kmock":
        yield name  # kmock 0.8 cannot store Namespace objects; namespaced paths work without one
        return
    crds = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
    with contextlib.suppress(kube.Conflict):
        await kube_client.create(crds, crd.build_crd())
    await eventually(lambda: _crd_established(kube_client), "CRD established")
    await kube_client.create(
        "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
    )
    try:
        yield name
    finally:
        await kube_client.delete(f"/api/v1/namespaces/{name}")


async def _crd_established(client: kube.KubeClient) -> bool:
    found = await client.get(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{crd.CRD_NAME}")
    conditions = (found or {}).get("status", {}).get("conditions", [])
    return any(c.get("type") == "Established" and c.get("status") == "True" for c in conditions)
