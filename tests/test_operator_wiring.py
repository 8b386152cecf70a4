"""The small pure pieces around the handlers: CLI translation, peering, RBAC data, patches, conditions."""

from __future__ import annotations

import pytest

from fanout_core import spec
from fanout_operator import cli, guardrails, peering, rbac, rendering, settings, status


def test_cli_defaults_watch_everything_peer_automatically_and_probe() -> None:
    config = cli.parse([], {"POD_ID": "operator-0"})
    assert config.clusterwide
    assert config.peering == settings.Peering(mode=settings.PeeringMode.AUTO, name="fanout-operator")
    assert config.liveness == settings.DEFAULT_LIVENESS
    assert config.metrics == settings.MetricsEndpoint("0.0.0.0", 8082)
    assert config.identity == "operator-0"
    assert config.workers == rendering.Defaults(image=cli.DEFAULT_WORKER_IMAGE)
    assert config.guardrails == guardrails.Guardrails()
    assert config.scrape_workers
    assert cli.parse([], {}).identity  # hostname-pid without POD_ID


def test_cli_namespaces_standalone_required_peering_and_no_liveness() -> None:
    config = cli.parse(["-n", "a", "--namespace", "b", "--standalone", "--liveness", ""], {})
    assert config.namespaces == ("a", "b")
    assert not config.clusterwide
    assert config.peering.mode is settings.PeeringMode.STANDALONE
    assert config.liveness is None
    required = cli.parse(["--peering", "ops", "--priority", "5", "--peering-lifetime", "7"], {}).peering
    assert required == settings.Peering(settings.PeeringMode.REQUIRED, "ops", 5, 7)


def test_cli_rejects_contradictions_in_one_line() -> None:
    for argv in (["-n", "a", "-A"], ["--standalone", "--peering", "x"], ["--resync-seconds", "0"]):
        with pytest.raises(SystemExit):
            cli.parse(argv, {})


def test_cli_worker_settings_flags_win_over_the_environment() -> None:
    environ = {
        cli.ENV_WORKER_IMAGE: "env-img:1",
        cli.ENV_WORKER_SERVICE_ACCOUNT: "env-sa",
        cli.ENV_SCRAPE_WORKERS: "false",
    }
    from_env = cli.parse([], environ)
    assert from_env.workers == rendering.Defaults(image="env-img:1", service_account_name="env-sa")
    assert from_env.scrape_workers is False
    flags = ["--worker-image", "img:2", "--worker-service-account", "sa", "--aws-identity", "pod-identity"]
    from_flags = cli.parse(flags, environ)
    assert from_flags.workers == rendering.Defaults(
        image="img:2", service_account_name="sa", aws_identity=rendering.AwsIdentity.POD_IDENTITY
    )
    assert cli.parse(["--no-scrape-workers"], {}).scrape_workers is False


def test_cli_guardrail_flags() -> None:
    config = cli.parse(
        [
            "--allowed-image-repository",
            "registry.example/fanout-*",
            "--allowed-image-repository",
            "registry.example/tools/worker",
            "--no-allow-service-account-name",
            "--identity-namespace",
            "contact-center",
        ],
        {},
    )
    assert config.guardrails == guardrails.Guardrails(
        image_repositories=("registry.example/fanout-*", "registry.example/tools/worker"),
        allow_service_account_name=False,
        allow_iam_role_arn=True,
        identity_namespaces=("contact-center",),
    )


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


def test_status_merge_patch_removes_what_is_no_longer_set() -> None:
    current = status.FanoutConsumerStatus(
        replicas=1,
        scaler=status.ScalerMemory(empty_since=None),
        conditions=status.set_condition(
            [], status.ConditionType.READY, True, "Polling", "", now=1, generation=None
        ),
    )
    patch = status.merge_patch(current)["status"]
    assert isinstance(patch, dict)
    assert patch["reason"] is None
    assert patch["scaler"]["emptySince"] is None  # type: ignore[index]
    assert "observedGeneration" not in patch["conditions"][0]  # type: ignore[index]


def test_status_round_trip_and_garbage() -> None:
    current = status.FanoutConsumerStatus(replicas=3, backlog=status.Backlog(visible=1, total=1))
    assert status.parse(status.dump(current)) == current
    assert status.parse("nonsense") == status.FanoutConsumerStatus()
    assert status.parse({"replicas": "many"}) == status.FanoutConsumerStatus()
