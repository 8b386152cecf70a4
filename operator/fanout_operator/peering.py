"""kopf peering, as data: the CRDs and the object two operator replicas coordinate through.

kopf's peering is priority-based: among operators sharing a peering object, the highest
priority works and the others stand by; equal priorities make *all* of them pause. ``cli``
therefore gives each replica a distinct priority by default (older process wins, see
:func:`default_priority`), and ``--peering`` makes the peering mandatory: an operator waits for
its peering object rather than running unsupervised next to a peer.

The chart renders :func:`build_peering_crds` and :func:`peering_object` so they exist before
the operator starts (``--peering`` pauses until they do).
"""

from __future__ import annotations

import random
import time
from typing import Any

DEFAULT_PEERING_NAME = "fanout-operator"
GROUP = "kopf.dev"
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
