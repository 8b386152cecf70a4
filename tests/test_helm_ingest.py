"""The chart's front door: off by default; when on, a manifest the gateway accepts, secrets as
mounted files (never in the ConfigMap), probes, HPA, PDB, and an Ingress for the webhook paths only.

(Lint and Kubernetes schema validation of the same values run in tests/test_helm_chart.py, with
ci/all-features-values.yaml, which turns the front door on.)
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from fanout_ingest import config
from tests import helm_harness

ALL_FEATURES = helm_harness.CHART / "ci" / "all-features-values.yaml"


def _ingest_documents(documents: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        document
        for document in documents
        if document["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "ingest"
    ]


def test_the_front_door_is_off_by_default() -> None:
    assert _ingest_documents(helm_harness.render()) == []


def test_the_rendered_front_door_runs_the_manifest_the_gateway_accepts() -> None:
    documents = _ingest_documents(helm_harness.render(values_files=[ALL_FEATURES]))
    kinds = sorted(document["kind"] for document in documents)
    assert kinds == [
        "ConfigMap",
        "Deployment",
        "HorizontalPodAutoscaler",
        "Ingress",
        "PodDisruptionBudget",
        "Service",
        "ServiceAccount",
    ]
    [configmap] = helm_harness.by_kind(documents, "ConfigMap")
    ingest = config.parse(yaml.safe_load(configmap["data"]["ingest.yaml"]))  # the gateway's own model
    assert ingest.spec.topic.arn == "arn:aws:sns:us-east-1:123456789012:genesys-interactions"
    assert ingest.spec.offload is not None and ingest.spec.offload.bucket == "genesys-large-events"
    assert ingest.spec.idempotency.store == "dynamodb" and ingest.spec.idempotency.table == (
        "genesys-ingest-idempotency"
    )
    genesys, open_messaging = ingest.spec.sources
    assert [ref.file for ref in genesys.secrets] == [
        "/etc/fanout-ingest/secrets/genesys/current",
        "/etc/fanout-ingest/secrets/genesys/previous",
    ]
    assert open_messaging.path == "/events/open-messaging"
    assert [scheme.header for scheme in open_messaging.signatures] == ["X-Hub-Signature-256"]
    assert "secret" not in json.dumps(configmap["data"]).replace("secrets", "")  # refs only

    [deployment] = helm_harness.by_kind(documents, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["command"] == ["fanout-ingest"]
    assert "--config=/etc/fanout-ingest/config/ingest.yaml" in container["args"]
    mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    assert volumes[mounts["/etc/fanout-ingest/secrets/genesys"]]["secret"]["secretName"] == "genesys-webhook"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"

    [ingress] = helm_harness.by_kind(documents, "Ingress")
    assert ingress["spec"]["ingressClassName"] == "alb"
    paths = [path["path"] for path in ingress["spec"]["rules"][0]["http"]["paths"]]
    assert paths == ["/events", "/events/open-messaging"], "probes and /metrics stay inside"
    assert ingress["metadata"]["annotations"]["alb.ingress.kubernetes.io/healthcheck-path"] == "/readyz"
    [account] = helm_harness.by_kind(documents, "ServiceAccount")
    assert account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].endswith(":role/fanout-ingest")


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["ingest.enabled=true"], "ingest.topicArn is required"),
        (["ingest.enabled=true", "ingest.topicArn=arn:aws:sqs:us-east-1:123456789012:q"], "topicArn"),
        (["ingest.enabled=true", "ingest.tpoicArn=x"], "tpoicArn"),
    ],
)
def test_bad_front_door_values_fail_the_install(sets: list[str], message: str) -> None:
    result = helm_harness.template_result(sets=sets)
    assert result.returncode != 0 and message in result.output


def test_every_manifest_field_has_a_value_in_the_chart_schema() -> None:
    schema = json.loads((helm_harness.CHART / "values.schema.json").read_text())
    for section, model in (
        ("offload", config.OffloadSpec),
        ("limits", config.LimitsSpec),
        ("publishing", config.PublishingSpec),
    ):
        reference = schema["properties"]["ingest"]["properties"][section]["$ref"]
        definition = schema["definitions"][reference.rsplit("/", 1)[1]]
        aliases = {field.alias or name for name, field in model.model_fields.items()}
        assert set(definition["properties"]) == aliases, section
