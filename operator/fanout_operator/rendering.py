"""What a FanoutConsumer becomes in the cluster: the manifests of its children. Pure.

``reconciling`` calls :func:`render` on every create/update/resume and applies the result; the
tests call it directly. Everything here is a function of (owner, spec, defaults): no API calls,
no clock, so what the operator would create can be read and tested without a cluster.

Children, all owned by the FanoutConsumer (``ownerReferences`` with ``controller: true``, so the
garbage collector removes them with it):

- ConfigMap ``<name>-config``: ``consumer.yaml`` (the manifest the worker runs with
  ``fanout-worker --config``) and ``replicas`` (the fleet size; the sinks divide the fleet-wide
  rate limit by it, read through ``FANOUT_REPLICAS_FILE``).
- Deployment ``<name>``: the workers. Its pod template carries a hash of ``consumer.yaml``, so a
  spec change rolls the pods while a replica-count change (the other key) does not.
- ServiceAccount ``<name>-worker`` (:func:`worker_service_account_name`, deterministic so an admin
  can bind a role to it ahead of time): only when ``workload.iamRoleArn`` is set and no
  ``serviceAccountName`` is given. How the role reaches the pods depends on the cluster
  (:class:`AwsIdentity`): with IRSA the account carries ``eks.amazonaws.com/role-arn``; with EKS
  Pod Identity the binding is a Pod Identity association on (namespace, ``<name>-worker``) that
  the cluster admin creates, and the account only records the intended role in
  ``fanout.dev/iam-role-arn`` (for the admin's script and for ``kubectl describe``).
- PodDisruptionBudget ``<name>``: only when ``maxReplicas > 1``.

``spec.replicas`` (the pin) is left out of ``consumer.yaml`` so ``kubectl scale`` never rolls pods.
"""

from __future__ import annotations

import copy
import dataclasses
import enum
import hashlib
import json
import math
from collections.abc import Mapping
from typing import Any

import yaml

from fanout_core import spec

Manifest = dict[str, Any]

CONFIG_DIR = "/etc/fanout"
CONFIG_FILE = f"{CONFIG_DIR}/consumer.yaml"
REPLICAS_FILE = f"{CONFIG_DIR}/replicas"
CONFIG_KEY = "consumer.yaml"
REPLICAS_KEY = "replicas"
HTTP_PORT = 8080
WORKER_UID = 10001
CONTAINER_NAME = "worker"
# Kill only after the worker's own drain budget has run out, plus time to exit and flush.
TERMINATION_MARGIN_SECONDS = 15

LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_PART_OF = "app.kubernetes.io/part-of"
LABEL_CONSUMER = f"{spec.API_GROUP}/consumer"
ANNOTATION_CONFIG_HASH = f"{spec.API_GROUP}/config-hash"
ANNOTATION_IRSA_ROLE = "eks.amazonaws.com/role-arn"
ANNOTATION_INTENDED_ROLE = f"{spec.API_GROUP}/iam-role-arn"
# On the Deployment: which pod-template annotation and nodeSelector keys the operator put there,
# so a key dropped from the spec is removed while keys others add are left alone.
ANNOTATION_MANAGED_KEYS = f"{spec.API_GROUP}/managed-template-keys"
WORKER_APP_NAME = "fanout-worker"
MANAGER_NAME = "fanout-operator"

DEFAULT_RESOURCES: dict[str, dict[str, str]] = {
    "requests": {"cpu": "100m", "memory": "128Mi"},
    "limits": {"memory": "512Mi"},
}


@dataclasses.dataclass(frozen=True)
class Owner:
    """The FanoutConsumer the children belong to."""

    name: str
    namespace: str
    uid: str


class AwsIdentity(enum.StrEnum):
    """How a pod's ServiceAccount gets its IAM role on this cluster."""

    IRSA = "irsa"  # IAM roles for service accounts: an annotation and the cluster's OIDC provider
    POD_IDENTITY = "pod-identity"  # EKS Pod Identity: an association the admin creates in EKS


@dataclasses.dataclass(frozen=True)
class Defaults:
    """Operator-wide worker settings a spec may override (from the operator's settings)."""

    image: str = "fanout-consumer:latest"
    service_account_name: str | None = None
    aws_identity: AwsIdentity = AwsIdentity.IRSA


@dataclasses.dataclass(frozen=True)
class Children:
    """The rendered manifests of one FanoutConsumer."""

    config_map: Manifest
    deployment: Manifest
    service_account: Manifest | None
    pod_disruption_budget: Manifest | None

    def all(self) -> list[Manifest]:
        optional = [self.service_account, self.pod_disruption_budget]
        return [self.config_map, self.deployment, *[m for m in optional if m is not None]]


def owner_of(body: Mapping[str, Any]) -> Owner:
    """The FanoutConsumer a kopf body (or any object dict) describes."""
    metadata = body.get("metadata", {})
    return Owner(
        name=str(metadata.get("name")),
        namespace=str(metadata.get("namespace")),
        uid=str(metadata.get("uid", "")),
    )


def initial_replicas(consumer: spec.FanoutConsumerSpec, last_known: int) -> int:
    """Where a (re)created Deployment starts: the pin, else the last known size within bounds."""
    if consumer.replicas is not None:
        return consumer.replicas
    return min(max(last_known, consumer.scaling.min_replicas), consumer.scaling.max_replicas)


def _label_value(value: str) -> str:
    """Label values are ≤ 63 characters; long names keep a hash suffix to stay unique."""
    if len(value) <= 63:
        return value
    digest = hashlib.sha256(value.encode()).hexdigest()[:8]
    return f"{value[:54].rstrip('-.')}-{digest}"


def child_name(owner_name: str, suffix: str = "") -> str:
    """A child's object name (≤ 253 characters)."""
    name = f"{owner_name}-{suffix}" if suffix else owner_name
    if len(name) <= 253:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[:244].rstrip('-.')}-{digest}"


def config_map_name(owner: Owner) -> str:
    return child_name(owner.name, "config")


def deployment_name(owner: Owner) -> str:
    return child_name(owner.name)


def selector_labels(owner: Owner) -> dict[str, str]:
    return {LABEL_NAME: WORKER_APP_NAME, LABEL_CONSUMER: _label_value(owner.name)}


def selector_string(owner: Owner) -> str:
    """The worker pods' label selector as the scale subresource wants it (status.selector)."""
    return ",".join(f"{key}={value}" for key, value in selector_labels(owner).items())


def labels(owner: Owner) -> dict[str, str]:
    return {
        **selector_labels(owner),
        LABEL_INSTANCE: _label_value(owner.name),
        LABEL_COMPONENT: "worker",
        LABEL_PART_OF: "fanout-consumer",
        LABEL_MANAGED_BY: MANAGER_NAME,
    }


def owner_reference(owner: Owner) -> dict[str, Any]:
    return {
        "apiVersion": f"{spec.API_GROUP}/{spec.API_VERSION}",
        "kind": spec.KIND,
        "name": owner.name,
        "uid": owner.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _metadata(owner: Owner, name: str) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": owner.namespace,
        "labels": labels(owner),
        "ownerReferences": [owner_reference(owner)],
    }


def worker_manifest(owner: Owner, consumer: spec.FanoutConsumerSpec) -> str:
    """``consumer.yaml``: the FanoutConsumer as the worker reads it (no ``spec.replicas``)."""
    wire = spec.dump_spec(consumer)
    wire.pop("replicas", None)
    document = {
        "apiVersion": f"{spec.API_GROUP}/{spec.API_VERSION}",
        "kind": spec.KIND,
        "metadata": {"name": owner.name, "namespace": owner.namespace},
        "spec": wire,
    }
    return yaml.safe_dump(document, sort_keys=True)


def config_hash(manifest_text: str) -> str:
    return hashlib.sha256(manifest_text.encode()).hexdigest()[:16]


def config_map(owner: Owner, consumer: spec.FanoutConsumerSpec, replicas: int) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(owner, config_map_name(owner)),
        "data": {CONFIG_KEY: worker_manifest(owner, consumer), REPLICAS_KEY: str(replicas)},
    }


def replicas_patch(replicas: int) -> Manifest:
    """The ConfigMap merge patch that only updates the replica-count file."""
    return {"data": {REPLICAS_KEY: str(replicas)}}


def worker_service_account_name(owner: Owner) -> str:
    """The ServiceAccount the operator creates for a consumer's own IAM role: ``<name>-worker``."""
    return child_name(owner.name, "worker")


def service_account_name(owner: Owner, consumer: spec.FanoutConsumerSpec, defaults: Defaults) -> str | None:
    workload = consumer.workload
    if workload.service_account_name:
        return workload.service_account_name
    if workload.iam_role_arn:
        return worker_service_account_name(owner)
    return defaults.service_account_name


def service_account(owner: Owner, consumer: spec.FanoutConsumerSpec, defaults: Defaults) -> Manifest | None:
    workload = consumer.workload
    if workload.service_account_name or not workload.iam_role_arn:
        return None
    metadata = _metadata(owner, worker_service_account_name(owner))
    role_annotation = (
        ANNOTATION_IRSA_ROLE if defaults.aws_identity is AwsIdentity.IRSA else ANNOTATION_INTENDED_ROLE
    )
    metadata["annotations"] = {role_annotation: workload.iam_role_arn}
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": metadata,
        # Workers never call the Kubernetes API; IRSA and Pod Identity mount their own tokens.
        "automountServiceAccountToken": False,
    }


def termination_grace_seconds(consumer: spec.FanoutConsumerSpec) -> int:
    return math.ceil(consumer.shutdown.grace_period_seconds) + TERMINATION_MARGIN_SECONDS


def _container(consumer: spec.FanoutConsumerSpec, defaults: Defaults) -> dict[str, Any]:
    workload = consumer.workload
    env: list[dict[str, Any]] = [
        {"name": "FANOUT_REPLICAS_FILE", "value": REPLICAS_FILE},
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        *(workload.env or []),
    ]
    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": workload.image or defaults.image,
        "command": ["fanout-worker"],
        "args": ["--config", CONFIG_FILE, "--http-port", str(HTTP_PORT)],
        "env": env,
        "ports": [{"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"}],
        "readinessProbe": {
            "httpGet": {"path": "/readyz", "port": "http"},
            "periodSeconds": 5,
            "timeoutSeconds": 2,
            "failureThreshold": 3,
        },
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": "http"},
            "initialDelaySeconds": 10,
            "periodSeconds": 10,
            "timeoutSeconds": 2,
            "failureThreshold": 3,
        },
        "resources": copy.deepcopy(
            workload.resources if workload.resources is not None else DEFAULT_RESOURCES
        ),
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [
            {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    }
    if workload.image_pull_policy:
        container["imagePullPolicy"] = workload.image_pull_policy
    return container


def deployment(
    owner: Owner, consumer: spec.FanoutConsumerSpec, defaults: Defaults, replicas: int
) -> Manifest:
    manifest_text = worker_manifest(owner, consumer)
    annotations = {
        **(consumer.workload.pod_annotations or {}),
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(HTTP_PORT),
        "prometheus.io/path": "/metrics",
        ANNOTATION_CONFIG_HASH: config_hash(manifest_text),
    }
    pod_spec: dict[str, Any] = {
        "automountServiceAccountToken": False,
        "terminationGracePeriodSeconds": termination_grace_seconds(consumer),
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": WORKER_UID,
            "runAsGroup": WORKER_UID,
            "fsGroup": WORKER_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [_container(consumer, defaults)],
        "volumes": [
            {"name": "config", "configMap": {"name": config_map_name(owner)}},
            {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}},
        ],
    }
    account = service_account_name(owner, consumer, defaults)
    if account:
        pod_spec["serviceAccountName"] = account
    if consumer.workload.node_selector:
        pod_spec["nodeSelector"] = dict(consumer.workload.node_selector)
    metadata = _metadata(owner, deployment_name(owner))
    managed = {"annotations": sorted(annotations), "nodeSelector": sorted(pod_spec.get("nodeSelector", {}))}
    metadata["annotations"] = {ANNOTATION_MANAGED_KEYS: json.dumps(managed, sort_keys=True)}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata,
        "spec": {
            "replicas": replicas,
            "revisionHistoryLimit": 3,
            "selector": {"matchLabels": selector_labels(owner)},
            # Keep delivering during a roll: add the new pod before draining an old one.
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 0}},
            "template": {
                "metadata": {"labels": labels(owner), "annotations": annotations},
                "spec": pod_spec,
            },
        },
    }


def pod_disruption_budget(owner: Owner, consumer: spec.FanoutConsumerSpec) -> Manifest | None:
    if consumer.scaling.max_replicas <= 1:
        return None
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(owner, deployment_name(owner)),
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": selector_labels(owner)},
            # A crash-looping worker must not block node drains.
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    }


def render(owner: Owner, consumer: spec.FanoutConsumerSpec, defaults: Defaults, replicas: int) -> Children:
    """Every child of one FanoutConsumer, for a fleet of ``replicas``."""
    return Children(
        config_map=config_map(owner, consumer, replicas),
        deployment=deployment(owner, consumer, defaults, replicas),
        service_account=service_account(owner, consumer, defaults),
        pod_disruption_budget=pod_disruption_budget(owner, consumer),
    )
