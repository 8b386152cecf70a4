"""Every Kubernetes permission the operator uses, as data.

The chart's ClusterRole is compared with :data:`REQUIRED_RULES` by a test (chart side), and the
operator's own tests check that every API call the operator made against the fake API server is
covered by a rule here. Keep it exact: what ``kube`` / ``reconciling`` / ``autoscaling`` call,
plus what kopf itself needs (peering, CRD discovery, namespaces, Events). kopf lists and watches
namespaces even when restricted to ``--namespace`` (to follow their creation and deletion); it
falls back to assuming they exist when forbidden, so a namespaced install may drop that rule.

Not here, on purpose: ``create`` on the peering objects. The chart creates them; an operator run
by hand tries to create a missing one (``peering.prepare``) and, when refused, runs standalone
and says so. Nor anything on Pod Identity associations: they are the cluster admin's (README,
"Install on EKS").
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from fanout_core import spec

Verb = Literal["get", "list", "watch", "create", "patch", "update", "delete"]


@dataclasses.dataclass(frozen=True)
class Rule:
    api_group: str
    resource: str
    verbs: tuple[Verb, ...]
    why: str
    cluster_wide_only: bool = False


REQUIRED_RULES: tuple[Rule, ...] = (
    # The custom resource: kopf lists/watches it and patches finalizers and its annotations.
    Rule(spec.API_GROUP, spec.PLURAL, ("get", "list", "watch", "patch"), "watch FanoutConsumers"),
    Rule(spec.API_GROUP, f"{spec.PLURAL}/status", ("get", "patch"), "write status"),
    # Children carry ownerReferences with blockOwnerDeletion, which needs update on finalizers.
    Rule(spec.API_GROUP, f"{spec.PLURAL}/finalizers", ("update",), "blockOwnerDeletion on children"),
    Rule("", "configmaps", ("get", "create", "patch"), "worker config and replica-count file"),
    Rule("apps", "deployments", ("get", "create", "patch"), "the worker fleet"),
    Rule("apps", "deployments/scale", ("patch",), "scale the fleet"),
    Rule("", "serviceaccounts", ("get", "create", "patch"), "IRSA service account per consumer"),
    Rule("policy", "poddisruptionbudgets", ("get", "create", "patch"), "PDB when maxReplicas > 1"),
    Rule("", "pods", ("list",), "find worker pods to read their /metrics"),
    Rule("", "events", ("create",), "scale / degradation Events (ours and kopf's)"),
    # kopf itself.
    Rule("kopf.dev", "kopfpeerings", ("get", "list", "watch", "patch"), "kopf peering (namespaced)"),
    Rule(
        "kopf.dev",
        "clusterkopfpeerings",
        ("get", "list", "watch", "patch"),
        "kopf peering (cluster-wide)",
        True,
    ),
    Rule(
        "apiextensions.k8s.io",
        "customresourcedefinitions",
        ("list", "watch"),
        "kopf resource discovery",
        True,
    ),
    Rule("", "namespaces", ("list", "watch"), "kopf namespace observation"),
)


def policy_rules(*, cluster_wide: bool = True) -> list[dict[str, Any]]:
    """REQUIRED_RULES as Kubernetes PolicyRule objects (one per resource, sorted)."""
    rules = [rule for rule in REQUIRED_RULES if cluster_wide or not rule.cluster_wide_only]
    return [
        {"apiGroups": [rule.api_group], "resources": [rule.resource], "verbs": sorted(rule.verbs)}
        for rule in sorted(rules, key=lambda r: (r.api_group, r.resource))
    ]


def allows(api_group: str, resource: str, verb: str) -> bool:
    return any(
        rule.api_group == api_group and rule.resource == resource and verb in rule.verbs
        for rule in REQUIRED_RULES
    )
