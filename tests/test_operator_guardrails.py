"""Guardrails: what a FanoutConsumer may ask the operator to run. Pure."""

from __future__ import annotations

from typing import Any

import pytest

from fanout_operator import guardrails, rendering

DEFAULTS = rendering.Defaults(image="123456789012.dkr.ecr.us-east-1.amazonaws.com/fanout-consumer:0.1.0")
ARN = "arn:aws:iam::123456789012:role/crm-sync"


def _spec(**workload: Any) -> dict[str, Any]:
    return {
        "queue": {"url": "https://sqs.us-east-1.amazonaws.com/123456789012/genesys-crm"},
        "sink": {"type": "webhook", "url": "http://crm.internal/events"},
        "workload": workload,
    }


@pytest.mark.parametrize(
    ("image", "repository"),
    [
        ("fanout-consumer", "fanout-consumer"),
        ("fanout-consumer:1.2", "fanout-consumer"),
        ("registry:5000/team/app", "registry:5000/team/app"),
        ("registry:5000/team/app:1.2@sha256:" + "a" * 64, "registry:5000/team/app"),
        ("team/app@sha256:" + "b" * 64, "team/app"),
    ],
)
def test_repository_of_an_image_reference(image: str, repository: str) -> None:
    assert guardrails.repository(image) == repository


def test_by_default_only_the_operators_own_repository_is_allowed() -> None:
    rails = guardrails.Guardrails()
    own = "123456789012.dkr.ecr.us-east-1.amazonaws.com/fanout-consumer:0.2.0"
    assert guardrails.admit(_spec(image=own), "ns", rails, DEFAULTS).workload.image == own
    assert guardrails.admit(_spec(), "ns", rails, DEFAULTS).workload.image is None
    with pytest.raises(guardrails.Rejected, match=r"repository 'docker.io/evil/miner' is not allowed"):
        guardrails.admit(_spec(image="docker.io/evil/miner:latest"), "ns", rails, DEFAULTS)


def test_allowed_repositories_are_patterns() -> None:
    rails = guardrails.Guardrails(image_repositories=("registry.example/fanout-*",))
    guardrails.admit(_spec(image="registry.example/fanout-crm:1"), "ns", rails, DEFAULTS)
    with pytest.raises(guardrails.Rejected):
        guardrails.admit(_spec(image="registry.example/other:1"), "ns", rails, DEFAULTS)


@pytest.mark.parametrize(("field", "value"), [("serviceAccountName", "admin"), ("iamRoleArn", ARN)])
def test_identity_fields_can_be_switched_off_or_limited_to_namespaces(field: str, value: str) -> None:
    flag = {"serviceAccountName": "allow_service_account_name", "iamRoleArn": "allow_iam_role_arn"}[field]
    assert guardrails.admit(_spec(**{field: value}), "ns", guardrails.Guardrails(), DEFAULTS)
    off = guardrails.Guardrails(**{flag: False})  # type: ignore[arg-type]
    with pytest.raises(guardrails.Rejected, match=rf"spec.workload.{field}: not allowed on this cluster"):
        guardrails.admit(_spec(**{field: value}), "ns", off, DEFAULTS)
    limited = guardrails.Guardrails(identity_namespaces=("contact-center",))
    guardrails.admit(_spec(**{field: value}), "contact-center", limited, DEFAULTS)
    with pytest.raises(guardrails.Rejected, match=r"not allowed in namespace 'tenant-a'"):
        guardrails.admit(_spec(**{field: value}), "tenant-a", limited, DEFAULTS)


def test_every_violation_is_named_in_one_line() -> None:
    rails = guardrails.Guardrails(allow_service_account_name=False, allow_iam_role_arn=False)
    with pytest.raises(guardrails.Rejected) as caught:
        guardrails.admit(_spec(image="evil/x", serviceAccountName="a", iamRoleArn=ARN), "ns", rails, DEFAULTS)
    message = str(caught.value)
    assert "\n" not in message
    for field in ("image", "serviceAccountName", "iamRoleArn"):
        assert f"spec.workload.{field}" in message
    assert "operator.guardrails" in message  # who can change it


def test_an_invalid_spec_is_rejected_the_same_way() -> None:
    bad = _spec()
    bad["scaling"] = {"minReplicas": 4, "maxReplicas": 2}
    with pytest.raises(guardrails.Rejected, match=r"invalid spec: .*maxReplicas must be >= minReplicas"):
        guardrails.admit(bad, "ns", guardrails.Guardrails(), DEFAULTS)
