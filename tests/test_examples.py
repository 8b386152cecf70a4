"""examples/: one FanoutConsumer per seed use case, each valid where it will be used.

Every example must pass the three gates a real manifest meets: the CRD's own openAPIV3Schema
(what the API server enforces on `kubectl apply`, checked here with jsonschema because
kubernetes-validate does not know custom resources), the spec model (what the worker and the
operator load), and the operator's pure rendering (what it would create). The use cases are
pinned by their defining traits, and the filters are checked against the composed Genesys
events in tests/data, so an example cannot quietly stop showing what it is there to show.
"""

from __future__ import annotations

import pathlib
from typing import Any

import jsonschema
import pytest
import yaml

from fanout_core import spec
from fanout_operator import crd, rendering
from workers import envelopes, filtering

ROOT = pathlib.Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
DATA = pathlib.Path(__file__).resolve().parent / "data"
SEED_USE_CASES = {"crm-sync", "siem-audit", "dashboard-webhook"}


def _paths() -> list[pathlib.Path]:
    return sorted(EXAMPLES.glob("*.yaml"))


def _document(path: pathlib.Path) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(path.read_text(encoding="utf-8"))
    return document


def _crd_validator() -> jsonschema.Draft202012Validator:
    openapi = crd.build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    schema = crd.json_schema(openapi)
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def _kept(manifest: spec.FanoutConsumer) -> set[str]:
    """Which composed events (tests/data) the example's filter delivers."""
    keep = filtering.EventFilter(manifest.spec.filter.event_types)
    return {path.name for path in DATA.glob("*.json") if keep.keep(envelopes.decode(path.read_bytes()))}


def test_there_is_one_example_per_seed_use_case() -> None:
    names = {_document(path)["metadata"]["name"] for path in _paths()}
    assert names == SEED_USE_CASES
    assert {path.stem for path in _paths()} == SEED_USE_CASES


@pytest.mark.parametrize("path", _paths(), ids=lambda path: path.stem)
def test_example_is_valid_against_the_crd_schema(path: pathlib.Path) -> None:
    errors = [
        f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
        for e in _crd_validator().iter_errors(_document(path))
    ]
    assert errors == []


@pytest.mark.parametrize("path", _paths(), ids=lambda path: path.stem)
def test_example_loads_with_the_spec_model_and_renders(path: pathlib.Path) -> None:
    manifest = spec.load_manifest(path)
    owner = rendering.Owner(name=manifest.metadata.name, namespace="contact-center", uid="0" * 8)
    children = rendering.render(owner, manifest.spec, rendering.Defaults(image="fanout-consumer:test"), 1)
    (container,) = children.deployment["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["fanout-worker"]
    # Secrets are referenced, never inline: every SecretRef names an env var the pod gets.
    env_names = {item["name"] for item in container["env"]}
    for reference in _secret_env_names(manifest.spec.sink.model_dump(by_alias=True)):
        assert reference in env_names, f"{reference} is not set on the worker container"


def _secret_env_names(node: Any) -> set[str]:
    if isinstance(node, dict):
        found = {node["env"]} if set(node) == {"env", "file"} and node["env"] else set()
        return found.union(*(_secret_env_names(value) for value in node.values()))
    if isinstance(node, list):
        return set().union(*(_secret_env_names(item) for item in node))
    return set()


def test_a_broken_example_is_caught_by_both_gates() -> None:
    document = _document(EXAMPLES / "crm-sync.yaml")
    document["spec"]["queue"]["visibilityTimeoutSecond"] = 60  # the typo a reviewer would miss
    assert list(_crd_validator().iter_errors(document))
    with pytest.raises(spec.ConfigError, match="visibilityTimeoutSecond"):
        spec.parse_manifest(document)


def test_crm_sync_reads_a_fifo_queue_into_the_crm_exactly_once() -> None:
    manifest = spec.load_manifest(EXAMPLES / "crm-sync.yaml")
    assert manifest.spec.queue.is_fifo
    assert manifest.spec.sink.type is spec.SinkType.CRM
    assert manifest.spec.idempotency.store is spec.IdempotencyStoreType.DYNAMODB
    assert manifest.spec.dead_letter.queue_url is not None
    assert manifest.spec.dead_letter.queue_url.endswith(".fifo")
    assert _kept(manifest) == {
        "acw.eventbridge.json",
        "customer-end.eventbridge.json",
        "customer-start.eventbridge.json",
        "customer-start.sns-envelope.json",
    }


def test_siem_audit_takes_everything_into_the_siem() -> None:
    manifest = spec.load_manifest(EXAMPLES / "siem-audit.yaml")
    assert manifest.spec.sink.type is spec.SinkType.SIEM
    assert manifest.spec.filter.event_types is None
    assert _kept(manifest) == {path.name for path in DATA.glob("*.json")}


def test_dashboard_webhook_filters_to_what_a_wallboard_shows() -> None:
    manifest = spec.load_manifest(EXAMPLES / "dashboard-webhook.yaml")
    assert manifest.spec.sink.type is spec.SinkType.WEBHOOK
    assert manifest.spec.sink.signing_secret is not None
    assert manifest.spec.scaling.min_replicas == 0
    assert _kept(manifest) == {
        "customer-end.eventbridge.json",
        "customer-start.eventbridge.json",
        "customer-start.sns-envelope.json",
        "queue-conversations.eventbridge.json",
    }
