"""Drift: what the operator puts back in a child, and what it leaves to others. Pure."""

from __future__ import annotations

import copy
from typing import Any

import hypothesis
import hypothesis.strategies as st

from fanout_core import spec
from fanout_operator import ownership, rendering

OWNER = rendering.Owner(name="crm-sync", namespace="contact-center", uid="uid-1")
DEFAULTS = rendering.Defaults(image="registry.example/fanout:1.2.3", service_account_name="fanout-worker")
ARN = "arn:aws:iam::123456789012:role/crm-sync"


def _children(defaults: rendering.Defaults = DEFAULTS, **workload: Any) -> rendering.Children:
    consumer = spec.parse_spec(
        {
            "queue": {"url": "https://sqs.us-east-1.amazonaws.com/123456789012/genesys-crm"},
            "sink": {"type": "webhook", "url": "http://crm.internal/events"},
            "workload": {"iamRoleArn": ARN, **workload},
        }
    )
    return rendering.render(OWNER, consumer, defaults, replicas=2)


def merge(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch, as the API server applies it."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge(result.get(key), value)
    return result


def test_children_as_created_have_no_drift() -> None:
    for manifest in _children().all():
        assert ownership.repair(copy.deepcopy(manifest), manifest) is None, manifest["kind"]


def test_a_hand_edited_deployment_is_put_back_but_its_replicas_are_not() -> None:
    desired = _children().deployment
    existing = copy.deepcopy(desired)
    existing["spec"]["replicas"] = 9  # the scaler's (or a kubectl scale)
    assert ownership.repair(existing, desired) is None
    existing["spec"]["template"]["spec"]["containers"][0]["image"] = "evil/miner:1"
    patch = ownership.repair(existing, desired)
    assert patch is not None
    assert "replicas" not in patch["spec"]
    repaired = merge(existing, patch)
    assert repaired["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.example/fanout:1.2.3"
    assert repaired["spec"]["replicas"] == 9
    assert ownership.repair(repaired, desired) is None


def test_annotations_and_labels_others_add_are_left_alone() -> None:
    desired = _children().deployment
    existing = copy.deepcopy(desired)
    existing["metadata"]["labels"]["team"] = "crm"
    existing["metadata"].setdefault("annotations", {})["deployment.kubernetes.io/revision"] = "4"
    template = existing["spec"]["template"]
    template["metadata"]["annotations"]["kubectl.kubernetes.io/restartedAt"] = "2026-01-01T00:00:00Z"
    template["metadata"]["annotations"]["sidecar.example/inject"] = "false"
    template["spec"]["nodeSelector"] = {"pool": "spot"}
    template["spec"]["tolerations"] = [{"key": "spot", "operator": "Exists"}]
    assert ownership.repair(existing, desired) is None


def test_a_pod_annotation_dropped_from_the_spec_is_removed_a_foreign_one_is_not() -> None:
    before = _children(podAnnotations={"team": "crm", "cost": "a"}, nodeSelector={"pool": "old"}).deployment
    existing = copy.deepcopy(before)
    existing["spec"]["template"]["metadata"]["annotations"]["sidecar.example/inject"] = "false"
    after = _children(podAnnotations={"cost": "b"}).deployment
    patch = ownership.repair(existing, after)
    assert patch is not None
    annotations = patch["spec"]["template"]["metadata"]["annotations"]
    assert annotations["team"] is None
    assert annotations["cost"] == "b"
    assert "sidecar.example/inject" not in annotations
    assert patch["spec"]["template"]["spec"]["nodeSelector"] == {"pool": None}


def test_a_deployment_without_the_record_loses_no_annotation() -> None:
    desired = _children().deployment
    existing = copy.deepcopy(desired)
    del existing["metadata"]["annotations"]
    existing["spec"]["template"]["metadata"]["annotations"]["someone"] = "else"
    patch = ownership.repair(existing, desired)
    assert patch is not None  # the record itself is put back
    assert "someone" not in patch["spec"]["template"]["metadata"]["annotations"]


def test_api_server_defaults_are_not_drift() -> None:
    desired = _children().deployment
    existing = copy.deepcopy(desired)
    container = existing["spec"]["template"]["spec"]["containers"][0]
    container["terminationMessagePath"] = "/dev/termination-log"
    container["readinessProbe"]["successThreshold"] = 1
    existing["spec"]["template"]["spec"]["dnsPolicy"] = "ClusterFirst"
    existing["spec"]["progressDeadlineSeconds"] = 600
    assert ownership.repair(existing, desired) is None
    del container["readinessProbe"]  # but a missing probe is
    assert ownership.repair(existing, desired) is not None


def test_config_map_data_is_put_back_and_foreign_keys_stay() -> None:
    desired = _children().config_map
    existing = copy.deepcopy(desired)
    existing["data"]["consumer.yaml"] = "hacked: true\n"
    existing["data"]["notes"] = "kept"
    repaired = merge(existing, ownership.repair(existing, desired))
    assert repaired["data"]["consumer.yaml"] == desired["data"]["consumer.yaml"]
    assert repaired["data"]["notes"] == "kept"


def test_switching_irsa_to_pod_identity_leaves_no_stale_binding() -> None:
    irsa = _children().service_account
    pod_identity_defaults = rendering.Defaults(
        image=DEFAULTS.image, aws_identity=rendering.AwsIdentity.POD_IDENTITY
    )
    pod_identity = _children(pod_identity_defaults).service_account
    assert irsa is not None
    assert pod_identity is not None
    existing = copy.deepcopy(irsa)
    existing["metadata"]["annotations"]["someone/else"] = "kept"
    repaired = merge(existing, ownership.repair(existing, pod_identity))
    assert repaired["metadata"]["annotations"] == {
        rendering.ANNOTATION_INTENDED_ROLE: ARN,
        "someone/else": "kept",
    }
    assert ownership.repair(repaired, pod_identity) is None


def test_owner_references_are_put_back() -> None:
    desired = _children().pod_disruption_budget
    assert desired is not None
    existing = copy.deepcopy(desired)
    existing["metadata"]["ownerReferences"] = []
    existing["spec"]["maxUnavailable"] = 0
    repaired = merge(existing, ownership.repair(existing, desired))
    assert repaired["metadata"]["ownerReferences"] == desired["metadata"]["ownerReferences"]
    assert repaired["spec"]["maxUnavailable"] == 1


texts = st.text("abcxyz-./", min_size=1, max_size=12)
edits = st.dictionaries(texts, st.one_of(st.none(), texts), max_size=4)


@hypothesis.given(labels=edits, pod_annotations=edits, data=edits)
def test_one_repair_is_enough_whatever_was_edited(
    labels: dict[str, str | None], pod_annotations: dict[str, str | None], data: dict[str, str | None]
) -> None:
    """After the repair patch is applied, nothing is left to repair (the patch converges)."""
    for desired in _children(podAnnotations={"team": "crm"}).all():
        edit: dict[str, Any] = {"metadata": {"labels": labels}}
        if desired["kind"] == "Deployment":
            edit["spec"] = {"template": {"metadata": {"annotations": pod_annotations}}}
        if desired["kind"] == "ConfigMap":
            edit["data"] = data
        existing = merge(copy.deepcopy(desired), edit)
        patch = ownership.repair(existing, desired)
        repaired = merge(existing, patch) if patch is not None else existing
        assert ownership.repair(repaired, desired) is None, desired["kind"]
