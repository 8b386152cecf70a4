"""Rendering: what the operator creates for a FanoutConsumer, read without a cluster."""

from __future__ import annotations

from typing import Any

import yaml

from fanout_core import spec
from fanout_operator import rendering

OWNER = rendering.Owner(name="crm-sync", namespace="contact-center", uid="0b3c-uid")
DEFAULTS = rendering.Defaults(image="registry.example/fanout:1.2.3", service_account_name="fanout-worker")


def _spec(**overrides: Any) -> spec.FanoutConsumerSpec:
    document: dict[str, Any] = {
        "queue": {"url": "https://sqs.us-east-1.amazonaws.com/123456789012/genesys-crm"},
        "sink": {"type": "webhook", "url": "http://crm.internal/events"},
        "shutdown": {"gracePeriodSeconds": 40},
    }
    document.update(overrides)
    return spec.parse_spec(document)


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    container: dict[str, Any] = containers[0]
    return container


def test_config_map_holds_the_worker_manifest_and_the_replica_count() -> None:
    consumer = _spec(replicas=3)
    children = rendering.render(OWNER, consumer, DEFAULTS, replicas=4)
    data = children.config_map["data"]
    assert data["replicas"] == "4"
    document = yaml.safe_load(data["consumer.yaml"])
    parsed = spec.parse_manifest(document)  # the worker can load it
    assert parsed.metadata.name == "crm-sync"
    assert parsed.spec.queue.url == consumer.queue.url
    assert "replicas" not in document["spec"]  # a pin never rolls the pods
    assert children.config_map["metadata"]["name"] == "crm-sync-config"


def test_deployment_runs_the_worker_with_probes_and_config() -> None:
    deployment = rendering.render(OWNER, _spec(), DEFAULTS, replicas=2).deployment
    assert deployment["spec"]["replicas"] == 2
    container = _container(deployment)
    assert container["image"] == "registry.example/fanout:1.2.3"
    assert [*container["command"], *container["args"]] == [
        "fanout-worker",
        "--config",
        "/etc/fanout/consumer.yaml",
        "--http-port",
        "8080",
    ]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert {"name": "FANOUT_REPLICAS_FILE", "value": "/etc/fanout/replicas"} in container["env"]
    mounts = {mount["mountPath"]: mount for mount in container["volumeMounts"]}
    assert mounts["/etc/fanout"]["readOnly"] is True
    volumes = {volume["name"]: volume for volume in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["config"]["configMap"]["name"] == "crm-sync-config"


def test_termination_grace_exceeds_the_drain_grace() -> None:
    pod = rendering.render(OWNER, _spec(), DEFAULTS, replicas=1).deployment["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] > 40


def test_security_context_is_hardened() -> None:
    pod = rendering.render(OWNER, _spec(), DEFAULTS, replicas=1).deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    container = pod["containers"][0]["securityContext"]
    assert container["readOnlyRootFilesystem"] is True
    assert container["allowPrivilegeEscalation"] is False
    assert container["capabilities"]["drop"] == ["ALL"]


def test_prometheus_annotations_and_owner_reference() -> None:
    deployment = rendering.render(OWNER, _spec(), DEFAULTS, replicas=1).deployment
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == "8080"
    for child in rendering.render(OWNER, _spec(), DEFAULTS, replicas=1).all():
        (reference,) = child["metadata"]["ownerReferences"]
        assert reference["uid"] == "0b3c-uid"
        assert reference["kind"] == "FanoutConsumer"
        assert reference["controller"] is True
        assert child["metadata"]["namespace"] == "contact-center"


def test_spec_change_changes_the_pod_template_but_replicas_do_not() -> None:
    def template_of(consumer: spec.FanoutConsumerSpec, replicas: int) -> Any:
        return rendering.render(OWNER, consumer, DEFAULTS, replicas=replicas).deployment["spec"]["template"]

    base = template_of(_spec(), 1)
    assert template_of(_spec(), 7) == base
    assert template_of(_spec(replicas=5), 1) == base
    changed = template_of(_spec(sink={"type": "webhook", "url": "http://crm.internal/v2"}), 1)
    key = "fanout.dev/config-hash"
    assert changed["metadata"]["annotations"][key] != base["metadata"]["annotations"][key]


def test_selector_is_a_subset_of_the_pod_labels() -> None:
    deployment = rendering.render(OWNER, _spec(), DEFAULTS, replicas=1).deployment
    selector = deployment["spec"]["selector"]["matchLabels"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= pod_labels.items()
    assert rendering.selector_string(OWNER) == ",".join(f"{k}={v}" for k, v in selector.items())


def test_service_account_default_override_and_irsa() -> None:
    def account_of(consumer: spec.FanoutConsumerSpec) -> Any:
        return (
            rendering.render(OWNER, consumer, DEFAULTS, 1)
            .deployment["spec"]["template"]["spec"]
            .get("serviceAccountName")
        )

    assert account_of(_spec()) == "fanout-worker"
    assert account_of(_spec(workload={"serviceAccountName": "crm"})) == "crm"
    arn = "arn:aws:iam::123456789012:role/crm-sync"
    irsa = _spec(workload={"iamRoleArn": arn})
    children = rendering.render(OWNER, irsa, DEFAULTS, 1)
    assert children.service_account is not None
    assert children.service_account["metadata"]["annotations"] == {"eks.amazonaws.com/role-arn": arn}
    assert account_of(irsa) == children.service_account["metadata"]["name"]
    assert rendering.render(OWNER, _spec(), DEFAULTS, 1).service_account is None
    no_default = rendering.render(OWNER, _spec(), rendering.Defaults(image="x"), 1).deployment
    assert "serviceAccountName" not in no_default["spec"]["template"]["spec"]


def test_workload_overrides() -> None:
    consumer = _spec(
        workload={
            "image": "mine:2",
            "imagePullPolicy": "Always",
            "resources": {"limits": {"memory": "1Gi"}},
            "env": [{"name": "EXTRA", "value": "1"}],
            "podAnnotations": {"team": "crm"},
            "nodeSelector": {"pool": "workers"},
        }
    )
    deployment = rendering.render(OWNER, consumer, DEFAULTS, 1).deployment
    container = _container(deployment)
    assert container["image"] == "mine:2"
    assert container["imagePullPolicy"] == "Always"
    assert container["resources"] == {"limits": {"memory": "1Gi"}}
    assert {"name": "EXTRA", "value": "1"} in container["env"]
    assert deployment["spec"]["template"]["metadata"]["annotations"]["team"] == "crm"
    assert deployment["spec"]["template"]["spec"]["nodeSelector"] == {"pool": "workers"}


def test_pdb_only_when_more_than_one_replica_is_possible() -> None:
    assert (
        rendering.render(OWNER, _spec(scaling={"maxReplicas": 1}), DEFAULTS, 1).pod_disruption_budget is None
    )
    pdb = rendering.render(OWNER, _spec(scaling={"maxReplicas": 5}), DEFAULTS, 1).pod_disruption_budget
    assert pdb is not None
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == rendering.selector_labels(OWNER)


def test_long_names_stay_within_label_limits() -> None:
    owner = rendering.Owner(name="x" * 200, namespace="ns", uid="u")
    for value in rendering.labels(owner).values():
        assert len(value) <= 63
    assert rendering.labels(owner) != rendering.labels(
        rendering.Owner(name="x" * 199, namespace="ns", uid="u")
    )


def test_render_is_pure() -> None:
    first = rendering.render(OWNER, _spec(), DEFAULTS, 3)
    first.deployment["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["cpu"] = "9"
    second = rendering.render(OWNER, _spec(), DEFAULTS, 3)
    assert (
        second.deployment["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["cpu"]
        == "100m"
    )
