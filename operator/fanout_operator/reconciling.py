"""Bring a FanoutConsumer's children in line with its spec, and scale them. The I/O around
``rendering``.

``handlers`` calls :func:`reconcile` on create / update / resume; ``autoscaling`` calls it when
the Deployment has gone missing and :func:`scale` when the decision changes the fleet size.

Children are created when absent and JSON-merge-patched when present. The Deployment's
``spec.replicas`` is only ever set at creation and through the ``scale`` subresource, so a spec
change never fights the autoscaler (nor an operator's ``kubectl scale`` of the Deployment).
Map keys the operator set before and no longer renders (pod annotations, node selector) are
removed explicitly, because a merge patch alone would keep them.

Scaling order protects the downstream: going up, the replica-count file changes first so the
running replicas lower their share of the fleet-wide rate before new ones join; going down,
the Deployment shrinks first and the survivors raise their share afterwards.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from typing import Any

from fanout_core import spec
from fanout_operator import kube, rendering, status

KINDS: dict[str, tuple[str, str]] = {
    "ConfigMap": ("v1", "configmaps"),
    "Deployment": ("apps/v1", "deployments"),
    "ServiceAccount": ("v1", "serviceaccounts"),
    "PodDisruptionBudget": ("policy/v1", "poddisruptionbudgets"),
}
CONSUMERS = (f"{spec.API_GROUP}/{spec.API_VERSION}", spec.PLURAL)
PODS = ("v1", "pods")
EVENTS = ("v1", "events")
# Maps inside the Deployment that the operator owns entirely: keys it no longer renders are
# deleted (None in a merge patch). kubectl's own annotations (rollout restart) are left alone.
_OWNED_MAPS = (("spec", "template", "metadata", "annotations"), ("spec", "template", "spec", "nodeSelector"))
_FOREIGN_PREFIXES = ("kubectl.kubernetes.io/", "deployment.kubernetes.io/")


@dataclasses.dataclass(frozen=True)
class Applied:
    """What :func:`reconcile` left in the cluster."""

    deployment_replicas: int
    created: tuple[str, ...]


def path_of(manifest: Mapping[str, Any]) -> str:
    api_version, plural = KINDS[str(manifest["kind"])]
    metadata = manifest["metadata"]
    return kube.object_path(api_version, plural, metadata["namespace"], metadata["name"])


def consumer_path(owner: rendering.Owner, subresource: str = "") -> str:
    return kube.object_path(*CONSUMERS, owner.namespace, owner.name, subresource)


def deployment_path(owner: rendering.Owner, subresource: str = "") -> str:
    return kube.object_path(
        "apps/v1", "deployments", owner.namespace, rendering.deployment_name(owner), subresource
    )


def _dig(document: Mapping[str, Any], keys: tuple[str, ...]) -> Mapping[str, Any]:
    node: Any = document
    for key in keys:
        node = node.get(key) if isinstance(node, Mapping) else None
    return node if isinstance(node, Mapping) else {}


def _set(document: dict[str, Any], keys: tuple[str, ...], value: Any) -> None:
    node = document
    for key in keys[:-1]:
        node = node.setdefault(key, {})
    node[keys[-1]] = value


def deployment_patch(existing: Mapping[str, Any], desired: Mapping[str, Any]) -> dict[str, Any]:
    """The merge patch turning ``existing`` into ``desired``, leaving ``spec.replicas`` alone."""
    patch: dict[str, Any] = {
        "metadata": {key: desired["metadata"][key] for key in ("labels", "ownerReferences")},
        "spec": {key: value for key, value in desired["spec"].items() if key != "replicas"},
    }
    patch["spec"] = dict(patch["spec"])
    for keys in _OWNED_MAPS:
        wanted = dict(_dig(desired, keys))
        for key in _dig(existing, keys):
            if key not in wanted and not key.startswith(_FOREIGN_PREFIXES):
                wanted[key] = None
        if wanted:
            _set(patch, keys, wanted)
    return patch


async def _apply(client: kube.KubeClient, manifest: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
    path = path_of(manifest)
    existing = await client.get(path)
    if existing is None:
        api_version, plural = KINDS[str(manifest["kind"])]
        collection = kube.collection_path(api_version, plural, manifest["metadata"]["namespace"])
        try:
            return await client.create(collection, manifest), True
        except kube.Conflict:
            existing = await client.get(path)
            if existing is None:
                raise
    if manifest["kind"] == "Deployment":
        body = deployment_patch(existing, manifest)
    else:
        body = {key: value for key, value in manifest.items() if key not in ("apiVersion", "kind")}
    return await client.merge_patch(path, body), False


async def reconcile(
    client: kube.KubeClient,
    owner: rendering.Owner,
    consumer: spec.FanoutConsumerSpec,
    defaults: rendering.Defaults,
    initial_replicas: int,
) -> Applied:
    """Create or update every child; a new Deployment starts at ``initial_replicas``."""
    existing = await client.get(deployment_path(owner))
    replicas = initial_replicas
    if existing is not None:
        replicas = int(existing.get("spec", {}).get("replicas", 1))
    children = rendering.render(owner, consumer, defaults, replicas)
    created: list[str] = []
    for manifest in children.all():
        _, was_created = await _apply(client, manifest)
        if was_created:
            created.append(str(manifest["kind"]))
    return Applied(deployment_replicas=replicas, created=tuple(created))


async def scale(client: kube.KubeClient, owner: rendering.Owner, current: int, replicas: int) -> None:
    """Set the fleet size through the Deployment's scale subresource and the replica-count file."""
    file_path = kube.object_path("v1", "configmaps", owner.namespace, rendering.config_map_name(owner))
    if replicas > current:
        await client.merge_patch(file_path, rendering.replicas_patch(replicas))
    await client.merge_patch(deployment_path(owner, "scale"), {"spec": {"replicas": replicas}})
    if replicas <= current:
        await client.merge_patch(file_path, rendering.replicas_patch(replicas))


async def post_event(
    client: kube.KubeClient,
    owner: rendering.Owner,
    *,
    reason: str,
    message: str,
    warning: bool = False,
    now: float | None = None,
) -> None:
    """A core/v1 Event about the FanoutConsumer (named like client-go does: ``<name>.<hex ns>``)."""
    stamp = now if now is not None else time.time()
    moment = status.rfc3339(stamp)
    event = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": f"{owner.name}.{time.time_ns():x}", "namespace": owner.namespace},
        "involvedObject": {
            "apiVersion": f"{spec.API_GROUP}/{spec.API_VERSION}",
            "kind": spec.KIND,
            "name": owner.name,
            "namespace": owner.namespace,
            "uid": owner.uid,
        },
        "reason": reason,
        "message": message[:1024],
        "type": "Warning" if warning else "Normal",
        "source": {"component": rendering.MANAGER_NAME},
        "reportingComponent": rendering.MANAGER_NAME,
        "firstTimestamp": moment,
        "lastTimestamp": moment,
        "count": 1,
    }
    await client.create(kube.collection_path(*EVENTS, owner.namespace), event)
