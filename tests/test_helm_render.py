"""What the chart renders: secure defaults, labels and names, IRSA, image, monitoring, NOTES.

Each test renders with `helm template` and reads the documents, so what is asserted is what
`helm install` would send, not what the templates look like.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from tests import helm_harness as h

REQUIRED_LABELS = (
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/component",
    "app.kubernetes.io/version",
    "app.kubernetes.io/managed-by",
)
SELECTOR_LABELS = {"app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/component"}
ROLE_ARN = "arn:aws:iam::123456789012:role/fanout-worker"
# Resources without a namespace (kubectl api-resources --namespaced=false) the operator may use.
CLUSTER_SCOPED_RESOURCES = {"namespaces", "customresourcedefinitions", "clusterkopfpeerings"}


def _chart() -> dict[str, Any]:
    chart: dict[str, Any] = yaml.safe_load((h.CHART / "Chart.yaml").read_text(encoding="utf-8"))
    return chart


def _operator_pod(documents: list[dict[str, Any]]) -> dict[str, Any]:
    spec: dict[str, Any] = h.one(documents, "Deployment")["spec"]["template"]["spec"]
    return spec


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {item["name"]: item.get("value", item.get("valueFrom")) for item in container.get("env", [])}


@pytest.fixture(scope="module")
def defaults() -> list[dict[str, Any]]:
    return h.render()


@pytest.fixture(scope="module")
def everything() -> list[dict[str, Any]]:
    # Every feature of the operator's side; the front door's objects are tested in test_helm_ingest.py.
    return h.render(values_files=[h.ALL_FEATURES], sets=["ingest.enabled=false"])


def test_operator_pod_is_locked_down_by_default(defaults: list[dict[str, Any]]) -> None:
    pod = _operator_pod(defaults)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] > 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    context = container["securityContext"]
    assert context["allowPrivilegeEscalation"] is False
    assert context["readOnlyRootFilesystem"] is True
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert context.get("privileged", False) is False


def test_operator_has_resources_and_probes(defaults: list[dict[str, Any]]) -> None:
    (container,) = _operator_pod(defaults)["containers"]
    assert container["resources"]["requests"]["cpu"]
    assert container["resources"]["requests"]["memory"]
    assert container["resources"]["limits"]["memory"]
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["port"] in ports
        assert container[probe]["httpGet"]["path"] == "/healthz"
    liveness_flag = [arg for arg in container["args"] if arg.startswith("--liveness=")]
    assert liveness_flag == [f"--liveness=http://0.0.0.0:{ports['health']}/healthz"]


def test_only_the_operator_mounts_a_service_account_token(everything: list[dict[str, Any]]) -> None:
    accounts = h.by_kind(everything, "ServiceAccount")
    assert accounts
    assert all(account["automountServiceAccountToken"] is False for account in accounts)
    assert _operator_pod(everything)["automountServiceAccountToken"] is True


def test_image_tag_defaults_to_app_version_and_feeds_the_workers(defaults: list[dict[str, Any]]) -> None:
    (container,) = _operator_pod(defaults)["containers"]
    assert container["image"] == f"fanout-consumer:{_chart()['appVersion']}"
    assert _env(container)["FANOUT_WORKER_IMAGE"] == container["image"]
    assert container["command"] == ["fanout-operator"]


@pytest.mark.parametrize(
    ("sets", "image"),
    [
        (["image.repository=r.example/fc", "image.tag=9.9.9"], "r.example/fc:9.9.9"),
        (
            ["image.repository=r.example/fc", f"image.digest=sha256:{'a' * 64}"],
            f"r.example/fc@sha256:{'a' * 64}",
        ),
    ],
)
def test_image_tag_or_digest(sets: list[str], image: str) -> None:
    (container,) = _operator_pod(h.render(sets=sets))["containers"]
    assert container["image"] == image
    assert _env(container)["FANOUT_WORKER_IMAGE"] == image


def test_every_resource_carries_the_standard_labels(everything: list[dict[str, Any]]) -> None:
    for document in everything:
        labels = document["metadata"].get("labels", {})
        missing = [label for label in REQUIRED_LABELS if label not in labels]
        assert missing == [], f"{document['kind']}/{document['metadata']['name']}"
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["team"] == "contact-center"  # commonLabels


def test_selectors_use_name_instance_component_only(everything: list[dict[str, Any]]) -> None:
    deployment = h.one(everything, "Deployment")
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert set(selector) == SELECTOR_LABELS
    assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    assert h.one(everything, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"] == selector
    anti = _operator_pod(h.render())["affinity"]["podAntiAffinity"]
    term = anti["preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"]
    assert term["labelSelector"]["matchLabels"] == selector


@pytest.mark.parametrize(
    ("release", "sets"),
    [
        ("r" * 53, []),  # Helm's longest release name
        ("fanout", ["fullnameOverride=" + "f" * 63]),
        ("fanout", ["nameOverride=" + "n" * 63]),
    ],
)
def test_names_and_label_values_stay_within_63_characters(release: str, sets: list[str]) -> None:
    documents = h.render(release=release, sets=[*sets, "metrics.podMonitor.enabled=true"])
    for document in documents:
        assert len(document["metadata"]["name"]) <= 63, document["metadata"]["name"]
        for key, value in document["metadata"].get("labels", {}).items():
            assert len(str(value)) <= 63, f"{key}={value}"
    names = [(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]) for d in documents]
    assert len(names) == len(set(names)), "two resources got the same name"


def test_irsa_role_arns_annotate_the_service_accounts() -> None:
    operator_arn = "arn:aws:iam::123456789012:role/fanout-operator"
    documents = h.render(
        sets=[
            f"operator.serviceAccount.roleArn={operator_arn}",
            f"worker.serviceAccount.roleArn={ROLE_ARN}",
            "worker.serviceAccount.namespaces={contact-center,security}",
        ]
    )
    accounts = {
        (a["metadata"]["namespace"], a["metadata"]["labels"]["app.kubernetes.io/component"]): a
        for a in h.by_kind(documents, "ServiceAccount")
    }
    assert set(accounts) == {(h.NAMESPACE, "operator"), ("contact-center", "worker"), ("security", "worker")}
    annotation = "eks.amazonaws.com/role-arn"
    assert accounts[(h.NAMESPACE, "operator")]["metadata"]["annotations"][annotation] == operator_arn
    assert accounts[("security", "worker")]["metadata"]["annotations"][annotation] == ROLE_ARN
    pod = _operator_pod(documents)
    assert pod["serviceAccountName"] == accounts[(h.NAMESPACE, "operator")]["metadata"]["name"]
    worker_name = accounts[("security", "worker")]["metadata"]["name"]
    assert _env(pod["containers"][0])["FANOUT_WORKER_SERVICE_ACCOUNT"] == worker_name


def test_a_malformed_role_arn_is_rejected() -> None:
    result = h.template_result(sets=["worker.serviceAccount.roleArn=fanout-worker"])
    assert result.returncode != 0


def test_service_accounts_can_be_brought_by_the_user() -> None:
    documents = h.render(
        sets=[
            "operator.serviceAccount.create=false",
            "operator.serviceAccount.name=ops",
            "worker.serviceAccount.create=false",
        ]
    )
    assert h.by_kind(documents, "ServiceAccount") == []
    pod = _operator_pod(documents)
    assert pod["serviceAccountName"] == "ops"
    assert "FANOUT_WORKER_SERVICE_ACCOUNT" not in _env(pod["containers"][0])


def test_operator_pdb_is_optional(defaults: list[dict[str, Any]], everything: list[dict[str, Any]]) -> None:
    assert h.by_kind(defaults, "PodDisruptionBudget") == []
    assert h.one(everything, "PodDisruptionBudget")["spec"]["minAvailable"] == 1


def test_operator_pdb_that_would_block_every_drain_is_refused() -> None:
    result = h.template_result(sets=["operator.podDisruptionBudget.enabled=true", "operator.replicas=1"])
    assert result.returncode != 0
    assert "minAvailable must be below operator.replicas" in result.output
    allowed = h.render(
        sets=["operator.podDisruptionBudget.enabled=true", "operator.podDisruptionBudget.minAvailable=50%"]
    )
    assert h.one(allowed, "PodDisruptionBudget")["spec"]["minAvailable"] == "50%"


def test_monitoring_is_off_by_default(defaults: list[dict[str, Any]]) -> None:
    kinds = {document["kind"] for document in defaults}
    assert not kinds & {"PodMonitor", "PrometheusRule", "ConfigMap", "FanoutConsumer"}


def test_pod_monitor_selects_the_worker_pods_the_operator_renders(everything: list[dict[str, Any]]) -> None:
    from fanout_operator import rendering

    (monitor,) = [m for m in h.by_kind(everything, "PodMonitor") if "any" in m["spec"]["namespaceSelector"]]
    owner = rendering.Owner(name="crm-sync", namespace="contact-center", uid="u")
    worker_labels = rendering.labels(owner)
    assert monitor["spec"]["selector"]["matchLabels"].items() <= worker_labels.items()
    assert monitor["spec"]["namespaceSelector"] == {"any": True}
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    port_names = {
        port["name"]
        for container in rendering.deployment(
            owner,
            _example_spec(),
            rendering.Defaults(),
            1,
        )["spec"]["template"]["spec"]["containers"]
        for port in container["ports"]
    }
    assert endpoint["port"] in port_names
    assert endpoint["path"] == "/metrics"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_operator_pod_monitor_scrapes_the_operators_metrics_port(everything: list[dict[str, Any]]) -> None:
    deployment = h.one(everything, "Deployment")
    pod = deployment["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert f"--metrics-port={ports['metrics']}" in container["args"]
    assert ports["metrics"] != ports["health"]
    (monitor,) = [
        m for m in h.by_kind(everything, "PodMonitor") if "matchNames" in m["spec"]["namespaceSelector"]
    ]
    assert monitor["spec"]["namespaceSelector"]["matchNames"] == [deployment["metadata"]["namespace"]]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] == "metrics"
    assert endpoint["path"] == "/metrics"
    # The series' own `namespace` (the FanoutConsumer's) must survive the scrape.
    assert endpoint["honorLabels"] is True
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_operator_metrics_can_be_turned_off_and_must_not_take_the_health_port() -> None:
    documents = h.render(sets=["metrics.podMonitor.enabled=true", "operator.metricsPort=0"])
    (container,) = _operator_pod(documents)["containers"]
    assert "--metrics-port=0" in container["args"]
    assert "metrics" not in {port["name"] for port in container["ports"]}
    assert len(h.by_kind(documents, "PodMonitor")) == 1  # the workers' only
    clash = h.template_result(sets=["operator.metricsPort=8081"])
    assert clash.returncode != 0
    assert "operator.metricsPort must differ from operator.healthPort" in clash.output


def _example_spec() -> Any:
    from fanout_core import spec

    return spec.load_manifest(h.external_tools.ROOT / "examples" / "dashboard-webhook.yaml").spec


def test_prometheus_rule_is_the_rule_file(everything: list[dict[str, Any]]) -> None:
    rule = h.one(everything, "PrometheusRule")
    source = yaml.safe_load((h.CHART / "files" / "prometheus-rules.yaml").read_text(encoding="utf-8"))
    assert rule["spec"] == source
    assert rule["spec"]["groups"]


def test_grafana_dashboard_configmap_is_picked_up_by_the_sidecar(everything: list[dict[str, Any]]) -> None:
    (dashboard,) = [
        d for d in h.by_kind(everything, "ConfigMap") if d["metadata"]["labels"].get("grafana_dashboard")
    ]
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboard["metadata"]["namespace"] == "monitoring"
    (text,) = dashboard["data"].values()
    source = json.loads((h.CHART / "files" / "grafana-dashboard.json").read_text(encoding="utf-8"))
    assert json.loads(text) == source


def _install_notes(sets: list[str]) -> str:
    """The NOTES `helm install` prints (a client-side dry run)."""
    result = h.helm(
        "install",
        h.RELEASE,
        str(h.CHART),
        "--namespace",
        h.NAMESPACE,
        "--dry-run=client",
        *h.value_args(sets=sets),
    )
    assert result.returncode == 0, result.output
    return result.stdout.split("NOTES:", 1)[1]


def test_notes_tell_the_user_what_to_do_next() -> None:
    notes = _install_notes([])
    assert "kubectl apply" in notes
    assert "rollout status deployment/" in notes
    assert "operator.serviceAccount.roleArn is empty" in notes
    quiet = _install_notes(
        [
            "operator.serviceAccount.roleArn=arn:aws:iam::123456789012:role/op",
            f"worker.serviceAccount.roleArn={ROLE_ARN}",
        ]
    )
    assert "WARNING" not in quiet


# --- the operator's own contracts: RBAC rules and command-line flags ---------------------------


def test_cluster_role_is_exactly_the_operators_required_rules(defaults: list[dict[str, Any]]) -> None:
    from fanout_operator import rbac

    role = h.one(defaults, "ClusterRole")
    assert role["rules"] == rbac.policy_rules(cluster_wide=True)
    binding = h.one(defaults, "ClusterRoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": role["metadata"]["name"],
    }
    account = next(
        a for a in h.by_kind(defaults, "ServiceAccount") if a["metadata"]["name"].endswith("-operator")
    )
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": h.NAMESPACE}
    ]
    assert _operator_pod(defaults)["serviceAccountName"] == account["metadata"]["name"]
    assert h.by_kind(defaults, "Role") == []


def test_watch_namespaces_grants_a_role_in_each_and_only_cluster_scoped_reads_cluster_wide() -> None:
    from fanout_operator import rbac

    documents = h.render(sets=["operator.watchNamespaces={contact-center,security}"])
    roles = {role["metadata"]["namespace"]: role for role in h.by_kind(documents, "Role")}
    assert set(roles) == {"contact-center", "security"}
    expected = rbac.policy_rules(cluster_wide=False)
    # Cluster-scoped resources cannot be granted by a Role: those (and only those) go to a
    # ClusterRole; together they are exactly the operator's rules for a namespaced run.
    cluster_scoped = [rule for rule in expected if rule["resources"][0] in CLUSTER_SCOPED_RESOURCES]
    cluster_roles = h.by_kind(documents, "ClusterRole")
    assert [rule for role in cluster_roles for rule in role["rules"]] == cluster_scoped
    assert len(h.by_kind(documents, "ClusterRoleBinding")) == len(cluster_roles)
    for role in roles.values():
        assert role["rules"] == [rule for rule in expected if rule not in cluster_scoped]
    bindings = {binding["metadata"]["namespace"] for binding in h.by_kind(documents, "RoleBinding")}
    assert bindings == set(roles)
    peerings = {p["metadata"]["namespace"] for p in h.by_kind(documents, "KopfPeering")}
    assert peerings == set(roles)
    assert h.by_kind(documents, "ClusterKopfPeering") == []


def test_rbac_can_be_left_to_the_cluster_administrator() -> None:
    documents = h.render(sets=["rbac.create=false"])
    assert not {d["kind"] for d in documents} & {"ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}


def _operator_settings(documents: list[dict[str, Any]]) -> Any:
    """The settings the operator runs with: its container's args and literal env, parsed by its CLI."""
    from fanout_operator import cli

    (container,) = _operator_pod(documents)["containers"]
    env = {item["name"]: item["value"] for item in container.get("env", []) if "value" in item}
    return cli.parse(container["args"], {**env, "POD_ID": "operator-pod"})


@pytest.mark.parametrize(
    ("sets", "namespaces", "peering_name", "verbose"),
    [
        ([], (), "fanout-fanout-consumer", False),
        (["operator.peering.name=ops", "operator.logLevel=DEBUG"], (), "ops", True),
        (["operator.watchNamespaces={a,b}"], ("a", "b"), "fanout-fanout-consumer", False),
    ],
)
def test_operator_args_mean_what_the_chart_intends_to_the_operators_cli(
    sets: list[str], namespaces: tuple[str, ...], peering_name: str, verbose: bool
) -> None:
    from fanout_operator import settings

    documents = h.render(sets=sets)
    config = _operator_settings(documents)
    assert config.namespaces == namespaces
    # Two replicas need peering, and must never fall back to running unsupervised side by side.
    assert config.peering.mode is settings.PeeringMode.REQUIRED
    assert config.peering.name == peering_name
    assert config.peering.priority is None  # each process picks its own: older wins
    assert config.verbose is verbose
    (container,) = _operator_pod(documents)["containers"]
    port = next(p["containerPort"] for p in container["ports"] if p["name"] == "health")
    assert config.liveness == f"http://0.0.0.0:{port}/healthz"
    assert config.workers.image == container["image"]
    assert config.workers.service_account_name
    assert config.scrape_workers
    assert "POD_ID" in _env(container)  # kopf's peer identity
    # The operator finds the peering object(s) the chart renders: one per watched namespace.
    objects = h.by_kind(documents, "ClusterKopfPeering" if not namespaces else "KopfPeering")
    assert {(o["metadata"]["name"], o["metadata"].get("namespace")) for o in objects} == (
        {(peering_name, namespace) for namespace in namespaces} or {(peering_name, None)}
    )


def test_scrape_workers_off_reaches_the_operator() -> None:
    assert _operator_settings(h.render(sets=["operator.scrapeWorkers=false"])).scrape_workers is False


def test_guardrails_by_default_allow_only_the_operators_own_image_repository() -> None:
    from fanout_operator import guardrails

    config = _operator_settings(h.render(sets=["image.repository=r.example/fc", "image.tag=1.0"]))
    assert config.guardrails == guardrails.Guardrails()
    assert guardrails.allowed_repositories(config.guardrails, config.workers) == ("r.example/fc",)


def test_guardrail_values_reach_the_operators_settings(everything: list[dict[str, Any]]) -> None:
    from fanout_operator import guardrails

    config = _operator_settings(everything)
    assert config.guardrails == guardrails.Guardrails(
        image_repositories=("123456789012.dkr.ecr.us-east-1.amazonaws.com/fanout-*",),
        allow_service_account_name=False,
        allow_iam_role_arn=True,
        identity_namespaces=("contact-center", "security"),
    )
    assert config.resync_seconds == 120
    assert config.peering.lifetime_seconds == 30


def test_pod_identity_drops_the_irsa_annotations_and_prints_the_associations() -> None:
    from fanout_operator import rendering

    operator_arn = "arn:aws:iam::123456789012:role/fanout-operator"
    sets = [
        "awsIdentity=podIdentity",
        f"operator.serviceAccount.roleArn={operator_arn}",
        f"worker.serviceAccount.roleArn={ROLE_ARN}",
        "worker.serviceAccount.namespaces={contact-center,security}",
    ]
    documents = h.render(sets=sets)
    for account in h.by_kind(documents, "ServiceAccount"):
        assert "eks.amazonaws.com/role-arn" not in (account["metadata"].get("annotations") or {})
    assert _operator_settings(documents).workers.aws_identity is rendering.AwsIdentity.POD_IDENTITY
    notes = _install_notes(sets)
    accounts = h.by_kind(documents, "ServiceAccount")
    operator_account = next(
        a["metadata"]["name"]
        for a in accounts
        if a["metadata"]["labels"]["app.kubernetes.io/component"] == "operator"
    )
    worker_account = next(
        a["metadata"]["name"]
        for a in accounts
        if a["metadata"]["labels"]["app.kubernetes.io/component"] == "worker"
    )
    association = "aws eks create-pod-identity-association --cluster-name $CLUSTER"
    operator_line = (
        f"--namespace {h.NAMESPACE} --service-account {operator_account} --role-arn {operator_arn}"
    )
    assert f"{association} {operator_line}" in notes
    for namespace in ("contact-center", "security"):
        assert f"--namespace {namespace} --service-account {worker_account} --role-arn {ROLE_ARN}" in notes
    assert "--service-account <its name>-worker" in notes
