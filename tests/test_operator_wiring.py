"""The small pure pieces around the handlers: CLI translation, peering, RBAC data, patches, conditions."""

from __future__ import annotations

from typing import Any

import pytest

from fanout_core import spec
from fanout_operator import cli, handlers, peering, rbac, reconciling, rendering, status


def test_cli_defaults_are_cluster_wide_with_mandatory_peering_and_liveness() -> None:
    arguments = cli.kopf_arguments([], priority=42)
    assert arguments[:3] == ["run", "-m", "fanout_operator.handlers"]
    assert "--all-namespaces" in arguments
    assert arguments[arguments.index("--peering") + 1] == "fanout-operator"
    assert arguments[arguments.index("--priority") + 1] == "42"
    assert arguments[arguments.index("--liveness") + 1] == cli.DEFAULT_LIVENESS
    assert "--standalone" not in arguments


def test_cli_namespaces_standalone_and_no_liveness() -> None:
    arguments = cli.kopf_arguments(["-n", "a", "--namespace", "b", "--standalone", "--liveness", ""])
    assert arguments == [
        "run",
        "-m",
        "fanout_operator.handlers",
        "-m",
        "fanout_operator.topology",
        "--namespace",
        "a",
        "--namespace",
        "b",
        "--standalone",
    ]


def test_cli_rejects_namespace_and_all_namespaces_together() -> None:
    with pytest.raises(SystemExit):
        cli.kopf_arguments(["-n", "a", "-A"])


def test_cli_worker_settings_go_to_the_environment_the_handlers_read(monkeypatch: pytest.MonkeyPatch) -> None:
    env = cli.environment(
        ["--worker-image", "img:1", "--worker-service-account", "sa", "--no-scrape-workers"]
    )
    assert env == {
        handlers.ENV_WORKER_IMAGE: "img:1",
        handlers.ENV_WORKER_SERVICE_ACCOUNT: "sa",
        handlers.ENV_SCRAPE_WORKERS: "false",
        handlers.ENV_METRICS_PORT: "8082",  # always set: the handlers' own default is off
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = handlers.settings_from_environment()
    assert settings.defaults == rendering.Defaults(image="img:1", service_account_name="sa")
    assert settings.scrape_workers is False


def test_default_priority_prefers_older_processes() -> None:
    older = peering.default_priority(now=1_000, tie_break=0)
    newer = peering.default_priority(now=2_000, tie_break=999)
    assert older > newer > 0


def test_peering_manifests() -> None:
    names = [crd["metadata"]["name"] for crd in peering.build_peering_crds()]
    assert names == ["clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev"]
    assert peering.peering_object()["kind"] == "ClusterKopfPeering"
    assert peering.peering_object(namespace="ops")["metadata"] == {
        "name": "fanout-operator",
        "namespace": "ops",
    }


def test_rbac_rules_as_policy_rules() -> None:
    rules = rbac.policy_rules()
    assert {"apiGroups": ["apps"], "resources": ["deployments/scale"], "verbs": ["patch"]} in rules
    assert all(rule["verbs"] == sorted(rule["verbs"]) for rule in rules)
    namespaced = rbac.policy_rules(cluster_wide=False)
    assert not any(rule["resources"] == ["clusterkopfpeerings"] for rule in namespaced)
    assert rbac.allows(spec.API_GROUP, spec.PLURAL, "watch")
    assert not rbac.allows("apps", "deployments", "delete")


def _deployment(annotations: dict[str, str], node_selector: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "kind": "Deployment",
        "metadata": {"name": "d", "namespace": "ns", "labels": {"a": "b"}, "ownerReferences": []},
        "spec": {
            "replicas": 9,
            "template": {
                "metadata": {"annotations": annotations},
                "spec": {"nodeSelector": node_selector} if node_selector is not None else {},
            },
        },
    }


def test_deployment_patch_leaves_replicas_and_removes_dropped_keys() -> None:
    existing = _deployment(
        {"team": "crm", "kubectl.kubernetes.io/restartedAt": "now", "keep": "1"}, {"pool": "old"}
    )
    desired = _deployment({"keep": "2"})
    patch = reconciling.deployment_patch(existing, desired)
    assert "replicas" not in patch["spec"]
    assert patch["spec"]["template"]["metadata"]["annotations"] == {"keep": "2", "team": None}
    assert patch["spec"]["template"]["spec"]["nodeSelector"] == {"pool": None}


def test_set_condition_moves_transition_time_only_on_flips() -> None:
    kind = status.ConditionType.DEGRADED
    first = status.set_condition([], kind, True, "QueueNotFound", "m", now=100, generation=1)
    same = status.set_condition(first, kind, True, "QueueNotFound", "m2", now=200, generation=1)
    flipped = status.set_condition(same, kind, False, "Healthy", "", now=300, generation=1)
    assert first[0].last_transition_time == same[0].last_transition_time == status.rfc3339(100)
    assert same[0].message == "m2"
    assert flipped[0].last_transition_time == status.rfc3339(300)
    ordered = status.set_condition(
        flipped, status.ConditionType.READY, True, "Polling", "", now=1, generation=1
    )
    assert [c.type for c in ordered] == [status.ConditionType.READY, status.ConditionType.DEGRADED]


def test_status_round_trip_and_garbage() -> None:
    current = status.FanoutConsumerStatus(replicas=3, backlog=status.Backlog(visible=1, total=1))
    assert status.parse(status.dump(current)) == current
    assert status.parse("nonsense") == status.FanoutConsumerStatus()
    assert status.parse({"replicas": "many"}) == status.FanoutConsumerStatus()
