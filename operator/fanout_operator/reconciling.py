"""Bring a FanoutConsumer's children in line with its spec, and scale them. The I/O around
``rendering`` and ``ownership``.

``handlers`` calls :func:`reconcile` on create / update / resume; ``resyncing`` calls it on
every drift resync; ``autoscaling`` calls it when the Deployment has gone missing and
:func:`scale` when the decision changes the fleet size.

Each child is created when absent; when present it is patched only if a field the operator owns
has drifted from what the spec renders (``ownership.repair``: deleted, or edited by hand), so a
resync of an unchanged cluster writes nothing, and fields others own (the Deployment's
``spec.replicas``, annotations and labels others add) are never fought over.

Scaling order protects the downstream: going up, the replica-count file changes first so the
running replicas lower their share of the fleet-wide rate before new ones join; going down,
the Deployment shrinks first and the survivors raise their share afterwards.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from typing import Any

from fanout_core import spec
from fanout_operator import kube, ownership, rendering

KINDS: dict[str, tuple[str, str]] = {
    "ConfigMap": ("v1", "configmaps"),
    "Deployment": ("apps/v1", "deployments"),
    "ServiceAccount": ("v1", "serviceaccounts"),
    "PodDisruptionBudget": ("policy/v1", "poddisruptionbudgets"),
}
CONSUMERS = (f"{spec.API_GROUP}/{spec.API_VERSION}", spec.PLURAL)
PODS = ("v1", "pods")


@dataclasses.dataclass(frozen=True)
class Applied:
    """What :func:`reconcile` did: the fleet size, and which children it created or repaired."""

    deployment_replicas: int
    created: tuple[str, ...]
    repaired: tuple[str, ...] = ()

    def summary(self) -> str:
        parts = [f"created {', '.join(self.created)}"] if self.created else []
        if self.repaired:
            parts.append(f"repaired {', '.join(self.repaired)}")
        return "; ".join(parts)


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


class Change(enum.Enum):
    NONE = "none"
    CREATED = "created"
    REPAIRED = "repaired"


async def _apply(client: kube.KubeClient, manifest: Mapping[str, Any]) -> Change:
    path = path_of(manifest)
    existing = await client.get(path)
    if existing is None:
        api_version, plural = KINDS[str(manifest["kind"])]
        collection = kube.collection_path(api_version, plural, manifest["metadata"]["namespace"])
        try:
            await client.create(collection, manifest)
            return Change.CREATED
        except kube.Conflict:
            existing = await client.get(path)
            if existing is None:
                raise
    patch = ownership.repair(existing, manifest)
    if patch is None:
        return Change.NONE
    await client.merge_patch(path, patch)
    return Change.REPAIRED


async def reconcile(
    client: kube.KubeClient,
    owner: rendering.Owner,
    consumer: spec.FanoutConsumerSpec,
    defaults: rendering.Defaults,
    last_known_replicas: int,
) -> Applied:
    """Create missing children and repair drifted ones.

    A new Deployment starts at the pin, else at ``last_known_replicas`` (the status's) within
    the scaling bounds; an existing one keeps its size (the scaler's).
    """
    existing = await client.get(deployment_path(owner))
    replicas = rendering.initial_replicas(consumer, last_known_replicas)
    if existing is not None:
        replicas = int(existing.get("spec", {}).get("replicas", 1))
    children = rendering.render(owner, consumer, defaults, replicas)
    done: dict[Change, list[str]] = {change: [] for change in Change}
    for manifest in children.all():
        done[await _apply(client, manifest)].append(str(manifest["kind"]))
    return Applied(
        deployment_replicas=replicas,
        created=tuple(done[Change.CREATED]),
        repaired=tuple(done[Change.REPAIRED]),
    )


async def scale(client: kube.KubeClient, owner: rendering.Owner, current: int, replicas: int) -> None:
    """Set the fleet size through the Deployment's scale subresource and the replica-count file."""
    file_path = kube.object_path("v1", "configmaps", owner.namespace, rendering.config_map_name(owner))
    if replicas > current:
        await client.merge_patch(file_path, rendering.replicas_patch(replicas))
    await client.merge_patch(deployment_path(owner, "scale"), {"spec": {"replicas": replicas}})
    if replicas <= current:
        await client.merge_patch(file_path, rendering.replicas_patch(replicas))
