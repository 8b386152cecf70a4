"""The generated CRD: structural, deterministic, and as strict as the spec model it comes from."""

from __future__ import annotations

import copy
import pathlib
import re
from typing import Any

import jsonschema
import pytest
import yaml

from fanout_core import spec
from fanout_operator import crd

# The example manifest of docs/contracts.md: the page's first YAML block, read from the page.
CONTRACTS = pathlib.Path(__file__).resolve().parents[1] / "docs" / "contracts.md"


def _openapi() -> dict[str, Any]:
    version = crd.build_crd()["spec"]["versions"][0]
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return schema


def _validator() -> jsonschema.Draft202012Validator:
    schema = crd.json_schema(_openapi())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def _example() -> dict[str, Any]:
    block = re.search(r"```yaml\n(.*?)```", CONTRACTS.read_text(encoding="utf-8"), re.DOTALL)
    assert block, f"{CONTRACTS} has no yaml block"
    document: dict[str, Any] = yaml.safe_load(block.group(1))
    return document


def test_documented_example_is_valid_against_the_crd_and_the_model() -> None:
    document = _example()
    assert list(_validator().iter_errors(document)) == []
    assert spec.parse_manifest(document).spec.sink.rate_limit is not None


@pytest.mark.parametrize(
    ("path", "typo"),
    [
        (("spec",), "sacling"),
        (("spec", "queue"), "waitTimeSecond"),
        (("spec", "sink"), "ratelimit"),
        (("spec", "sink", "rateLimit"), "requestPerSecond"),
        (("spec", "scaling"), "maxReplica"),
    ],
)
def test_a_typo_is_rejected_with_its_name(path: tuple[str, ...], typo: str) -> None:
    document = _example()
    node = document
    for key in path:
        node = node[key]
    node[typo] = 1
    errors = list(_validator().iter_errors(document))
    assert errors, f"{'.'.join(path)}.{typo} was accepted"
    assert any(typo in error.message for error in errors)


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("spec", "sink", "type"), "kafka"),
        (("spec", "queue", "maxMessages"), 11),
        (("spec", "sink", "rateLimit", "requestsPerSecond"), 0),
        (("spec", "scaling", "minReplicas"), -1),
        (("spec", "queue", "url"), ""),
        (("spec", "replicas"), -1),
    ],
)
def test_out_of_range_values_are_rejected_like_the_model_does(path: tuple[str, ...], value: Any) -> None:
    document = _example()
    node = document
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    assert list(_validator().iter_errors(document)), f"{path} = {value!r} was accepted"
    with pytest.raises(spec.ConfigError):
        spec.parse_manifest(document)


def test_null_is_accepted_where_the_model_allows_none() -> None:
    document = _example()
    document["spec"]["queue"]["region"] = None
    document["spec"]["workload"] = {"image": None, "env": [{"name": "A", "value": "b"}]}
    assert list(_validator().iter_errors(document)) == []
    spec.parse_manifest(document)


def test_missing_spec_and_missing_queue_are_rejected() -> None:
    document = _example()
    del document["spec"]["queue"]
    assert list(_validator().iter_errors(document))
    assert list(_validator().iter_errors({"apiVersion": "fanout.dev/v1alpha1", "kind": "FanoutConsumer"}))


def test_schema_is_structural_every_node_typed() -> None:
    assert crd.structural_problems(_openapi()) == []


def test_structural_check_can_fail() -> None:
    broken = copy.deepcopy(_openapi())
    del broken["properties"]["spec"]["properties"]["queue"]["properties"]["url"]["type"]
    broken["properties"]["spec"]["properties"]["sink"]["anyOf"] = [{"type": "object"}]
    problems = crd.structural_problems(broken)
    assert any("queue.url: no type" in problem for problem in problems)
    assert any("sink: anyOf" in problem for problem in problems)


def test_preserve_unknown_fields_only_on_free_form_objects() -> None:
    found: list[str] = []

    def walk(node: dict[str, Any], where: str) -> None:
        if node.get("x-kubernetes-preserve-unknown-fields"):
            found.append(where)
        for name, child in node.get("properties", {}).items():
            walk(child, f"{where}.{name}")
        for key in ("items", "additionalProperties"):
            if isinstance(node.get(key), dict):
                walk(node[key], f"{where}.{key}")

    walk(_openapi(), "")
    assert found == [".spec.workload.env.items", ".spec.topology.subscription.filterPolicy"]


def test_every_spec_field_of_the_model_is_in_the_schema() -> None:
    """Drift check: walk the pydantic model and the schema together."""

    def walk(model: Any, schema: dict[str, Any], where: str) -> None:
        properties = schema["properties"]
        expected = {field.alias or name for name, field in model.model_fields.items()}
        assert set(properties) == expected, where
        for name, field in model.model_fields.items():
            annotation = field.annotation
            field_schema = properties[field.alias or name]
            if getattr(annotation, "__origin__", None) is dict:  # a map: its values' schema
                field_schema = field_schema["additionalProperties"]
                annotation = annotation.__args__[1]
            for candidate in getattr(annotation, "__args__", (annotation,)):
                if isinstance(candidate, type) and issubclass(candidate, spec.SpecModel):
                    walk(candidate, field_schema, f"{where}.{field.alias}")

    walk(spec.FanoutConsumerSpec, _openapi()["properties"]["spec"], "spec")


def test_crd_metadata_subresources_and_columns() -> None:
    built = crd.build_crd()
    assert built["metadata"]["name"] == "fanoutconsumers.fanout.dev"
    names = built["spec"]["names"]
    assert names["shortNames"] == list(spec.SHORT_NAMES)
    assert names["kind"] == "FanoutConsumer"
    version = built["spec"]["versions"][0]
    assert version["name"] == "v1alpha1"
    assert version["subresources"]["status"] == {}
    scale = version["subresources"]["scale"]
    assert scale["specReplicasPath"] == ".spec.replicas"
    assert scale["statusReplicasPath"] == ".status.replicas"
    columns = {column["name"]: column["jsonPath"] for column in version["additionalPrinterColumns"]}
    assert columns["Queue"] == ".status.queue"
    assert columns["Sink"] == ".spec.sink.type"
    assert columns["Backlog"] == ".status.backlog.total"
    assert {"Replicas", "Desired", "Age"} <= set(columns)
    # Every printed path exists in the schema.
    schema = _openapi()
    for column in version["additionalPrinterColumns"]:
        path = column["jsonPath"].split("[")[0].strip(".").split(".")
        node = schema
        for part in path:
            if part == "metadata":
                break
            node = node["properties"][part]


def test_build_crd_is_deterministic() -> None:
    assert yaml.safe_dump(crd.build_crd(), sort_keys=False) == yaml.safe_dump(
        crd.build_crd(), sort_keys=False
    )


def test_unsupported_constructs_are_refused() -> None:
    import pydantic

    class Union(pydantic.BaseModel):
        value: int | str

    with pytest.raises(crd.SchemaError, match="anyOf"):
        crd.openapi_schema(Union)
