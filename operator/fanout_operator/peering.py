"""kopf peering: the CRDs and objects operator replicas coordinate through, and making sure they exist.

kopf's peering is priority-based: among operators sharing a peering object, the highest
priority works and the others stand by; equal priorities make *all* of them pause. Each
replica therefore gets a distinct priority by default (older process wins, see
:func:`default_priority`), so a rolling update hands over when the old pod exits.

kopf alone would wait forever, silently, for a peering object nobody created.
:func:`prepare` runs at start-up (``handlers``), before kopf starts watching, and decides by
``settings.Peering.mode``:

- ``auto`` (``fanout-operator`` without ``--peering``): the object is created when missing; if
  that is impossible (the peering CRDs are not installed, or RBAC does not allow it) the
  operator runs standalone and logs ONE warning line saying how to enable peering;
- ``required`` (``--peering NAME``, as the chart runs it): the same, except that it never runs
  standalone next to possible peers: a missing object that cannot be created is an error
  naming the fix, repeated until it is fixed;
- ``standalone`` (``--standalone``): nothing to prepare.

A transient error (API server unreachable, 5xx) is never a reason to go standalone: it raises,
and kopf retries the start-up.

The chart renders :func:`build_peering_crds` (``crds/``) and :func:`peering_object`
(``templates/``), so in an installed release the object already exists and ``prepare`` only
reads it.
"""

from __future__ import annotations

import dataclasses
import json
import random
import time
from typing import Any

from fanout_operator import kube, settings

DEFAULT_PEERING_NAME = settings.DEFAULT_PEERING_NAME
GROUP = "kopf.dev"
CRDS_FILE = "helm/fanout-consumer/crds/kopf-peering.yaml"
VERSION = "v1"
# Priorities must be distinct; start time in seconds (older = higher) then a random tie-break.
_EPOCH_CEILING = 4_000_000_000


def _crd(kind: str, plural: str, scope: str) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}"},
        "spec": {
            "scope": scope,
            "group": GROUP,
            "names": {"kind": kind, "plural": plural, "singular": plural[:-1]},
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
                            },
                        }
                    },
                }
            ],
        },
    }


def build_peering_crds() -> list[dict[str, Any]]:
    """kopf's peering CRDs: ClusterKopfPeering (cluster-wide operators) and KopfPeering."""
    return [
        _crd("ClusterKopfPeering", "clusterkopfpeerings", "Cluster"),
        _crd("KopfPeering", "kopfpeerings", "Namespaced"),
    ]


def peering_object(name: str = DEFAULT_PEERING_NAME, namespace: str | None = None) -> dict[str, Any]:
    """The peering object: cluster-scoped for --all-namespaces, else one per watched namespace."""
    if namespace is None:
        return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ClusterKopfPeering", "metadata": {"name": name}}
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "KopfPeering",
        "metadata": {"name": name, "namespace": namespace},
    }


def default_priority(now: float | None = None, tie_break: int | None = None) -> int:
    """Older processes outrank newer ones (a rolling update hands over when the old one exits)."""
    started = int(now if now is not None else time.time())
    jitter = tie_break if tie_break is not None else random.randrange(1000)
    return (_EPOCH_CEILING - started) * 1000 + jitter


@dataclasses.dataclass(frozen=True)
class Plan:
    """How kopf should run: peered through ``name`` at ``priority``, or standalone."""

    standalone: bool
    name: str = DEFAULT_PEERING_NAME
    priority: int = 0
    lifetime_seconds: int = settings.DEFAULT_PEERING_LIFETIME_SECONDS
    # Set when peering was wanted and could not be had: the one line to log.
    warning: str | None = None


class PeeringUnavailable(Exception):
    """Peering is required, and its object neither exists nor can be created. One line."""


def _path(manifest: dict[str, Any], collection: bool = False) -> str:
    metadata = manifest["metadata"]
    plural = "kopfpeerings" if "namespace" in metadata else "clusterkopfpeerings"
    prefix = f"/apis/{GROUP}/{VERSION}"
    if "namespace" in metadata:
        prefix += f"/namespaces/{metadata['namespace']}"
    return f"{prefix}/{plural}" if collection else f"{prefix}/{plural}/{metadata['name']}"


def _describe(manifest: dict[str, Any]) -> str:
    metadata = manifest["metadata"]
    where = f" in namespace {metadata['namespace']!r}" if "namespace" in metadata else ""
    return f"{manifest['kind']} {metadata['name']!r}{where}"


async def _missing_because(client: kube.KubeClient, manifest: dict[str, Any]) -> str | None:
    """Ensure the object exists; ``None`` when it does, else why it cannot (one phrase)."""
    try:
        if await client.get(_path(manifest)) is not None:
            return None
        await client.create(_path(manifest, collection=True), manifest)
    except kube.Conflict:
        return None  # a peer created it first
    except kube.KubeError as error:
        if error.status == 404:
            return f"the kopf.dev peering CRDs are not installed (kubectl apply -f {CRDS_FILE})"
        if error.status in (401, 403):
            return (
                f"{_describe(manifest)} is missing and this account may not create it ({error}); "
                f"create it: kubectl apply -f - <<< '{json.dumps(manifest)}'"
            )
        raise
    return None


async def prepare(
    client: kube.KubeClient,
    peering: settings.Peering,
    namespaces: tuple[str, ...],
    *,
    priority: int | None = None,
) -> Plan:
    """Make sure the peering object(s) exist; say how kopf should run. Raises on transient errors."""
    chosen = peering.priority if peering.priority is not None else (priority or default_priority())
    peered = Plan(False, peering.name, chosen, peering.lifetime_seconds)
    if peering.mode is settings.PeeringMode.STANDALONE:
        return dataclasses.replace(peered, standalone=True)
    manifests = [peering_object(peering.name, namespace) for namespace in namespaces] or [
        peering_object(peering.name)
    ]
    for manifest in manifests:
        problem = await _missing_because(client, manifest)
        if problem is None:
            continue
        if peering.mode is settings.PeeringMode.REQUIRED:
            raise PeeringUnavailable(f"peering is required (--peering {peering.name}) but {problem}")
        warning = (
            f"peering is off, running standalone (run ONE operator replica): {problem}; "
            "or pass --standalone to run alone without this warning"
        )
        return dataclasses.replace(peered, standalone=True, warning=warning)
    return peered
