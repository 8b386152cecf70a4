"""The chart as a whole: lint, Kubernetes schemas, values schema, and its generated parts.

`helm lint --strict` must be clean; `helm template` with the default values and with every
optional feature on (ci/all-features-values.yaml, plus the repository's examples as
`consumers`) must render manifests that validate in strict mode against the Kubernetes
1.30-1.34 schemas shipped by kubernetes-validate. Kinds it has no schema for are skipped only
when listed in NOT_IN_KUBERNETES; a FanoutConsumer is validated against our own CRD instead.
The CRD and the values schema's generated definitions must match their sources
(helm/generate.py), and a typo at any level of the values must fail the render.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate import utils as kv_utils

from fanout_operator import crd, peering
from tests import external_tools
from tests import helm_harness as h

KUBERNETES_VERSIONS = ("1.30.0", "1.31.0", "1.32.0", "1.33.0", "1.34.0")
# Custom resources kubernetes-validate cannot know; nothing else may be skipped.
NOT_IN_KUBERNETES = {
    ("fanout.dev/v1alpha1", "FanoutConsumer"),  # validated against our CRD below
    ("kopf.dev/v1", "ClusterKopfPeering"),  # kopf's; free-form status only
    ("kopf.dev/v1", "KopfPeering"),  # kopf's; free-form status only
    ("monitoring.coreos.com/v1", "PodMonitor"),  # Prometheus Operator
    ("monitoring.coreos.com/v1", "PrometheusRule"),  # Prometheus Operator
}
EXAMPLES = external_tools.ROOT / "examples"
VALUES_SCHEMA = h.CHART / "values.schema.json"


@pytest.fixture(scope="module")
def examples_as_consumers(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """A values file that installs every example FanoutConsumer with the release."""
    consumers = []
    for path in sorted(EXAMPLES.glob("*.yaml")):
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
        consumers.append({"name": document["metadata"]["name"], "spec": document["spec"]})
    path = tmp_path_factory.mktemp("values") / "examples.yaml"
    path.write_text(yaml.safe_dump({"consumers": consumers}), encoding="utf-8")
    return path


def _crd_validator() -> jsonschema.Draft202012Validator:
    openapi = crd.build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return jsonschema.Draft202012Validator(crd.json_schema(openapi))


def _validate(document: dict[str, Any], version: str) -> str | None:
    """None when valid (or an explicitly skipped kind); otherwise the reason."""
    key = (document["apiVersion"], document["kind"])
    if key in NOT_IN_KUBERNETES:
        if document["kind"] == "FanoutConsumer":
            errors = [error.message for error in _crd_validator().iter_errors(document)]
            return "; ".join(errors) or None
        return None
    try:
        kubernetes_validate.validate(document, version, strict=True)
    except kv_utils.SchemaNotFoundError as error:
        return f"no schema, and not listed in NOT_IN_KUBERNETES: {error.message}"
    except kubernetes_validate.ValidationError as error:
        return f"{'.'.join(map(str, error.path))}: {error.message}"
    return None


def test_kubernetes_validate_ships_every_targeted_version() -> None:
    shipped = {kv_utils.major_minor(version) for version in kv_utils.all_versions()}
    assert {kv_utils.major_minor(version) for version in KUBERNETES_VERSIONS} <= shipped


@pytest.mark.parametrize("with_all_features", [False, True], ids=["defaults", "all-features"])
def test_helm_lint_strict_is_clean(with_all_features: bool) -> None:
    values = [h.ALL_FEATURES] if with_all_features else []
    result = h.helm("lint", "--strict", str(h.CHART), *h.value_args(values))
    assert result.returncode == 0, result.output
    assert "[WARNING]" not in result.output, result.output
    assert "[ERROR]" not in result.output, result.output


VARIANTS = {
    "defaults": (False, []),
    "all-features": (True, []),
    "all-features-namespaced": (True, ["operator.watchNamespaces={contact-center,security}"]),
}


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_rendered_manifests_validate_strictly(
    version: str, variant: str, examples_as_consumers: pathlib.Path
) -> None:
    with_all_features, sets = VARIANTS[variant]
    values = [h.ALL_FEATURES, examples_as_consumers] if with_all_features else []
    documents = h.render(values_files=values, sets=sets, include_crds=True)
    problems = {
        f"{document['kind']}/{document['metadata']['name']}": problem
        for document in documents
        if (problem := _validate(document, version)) is not None
    }
    assert problems == {}
    kinds = {document["kind"] for document in documents}
    assert {"CustomResourceDefinition", "Deployment", "ServiceAccount"} <= kinds
    if with_all_features:
        assert {"PodMonitor", "PrometheusRule", "ConfigMap", "PodDisruptionBudget", "FanoutConsumer"} <= kinds
        assert kinds & {"ClusterRole", "Role"}


def test_an_invalid_manifest_is_caught_by_the_validation_itself() -> None:
    deployment = h.one(h.render(), "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolicie"] = "Always"
    assert _validate(deployment, KUBERNETES_VERSIONS[0]) is not None
    assert _validate({"apiVersion": "example.com/v1", "kind": "Gadget", "metadata": {"name": "x"}}, "1.30.0")


# --- generated parts -----------------------------------------------------------------------


def test_generated_files_are_up_to_date() -> None:
    result = subprocess.run(
        [sys.executable, str(h.CHART.parent / "generate.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"run: .venv/bin/python helm/generate.py\n{result.stderr}"


def test_rendered_crd_is_the_operators_crd_and_is_kept() -> None:
    rendered = h.one(h.render(), "CustomResourceDefinition")
    expected = crd.build_crd()
    assert rendered["metadata"]["name"] == expected["metadata"]["name"]
    assert rendered["spec"] == expected["spec"]
    assert rendered["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"


def test_crds_enabled_and_keep_switch_the_crd() -> None:
    assert not h.by_kind(h.render(sets=["crds.enabled=false"]), "CustomResourceDefinition")
    unkept = h.one(h.render(sets=["crds.keep=false"]), "CustomResourceDefinition")
    assert "helm.sh/resource-policy" not in unkept["metadata"].get("annotations", {})


def test_kopf_peering_crds_ship_in_crds_dir_and_the_peering_object_in_templates() -> None:
    documents = h.render(include_crds=True)
    crds = {d["metadata"]["name"]: d for d in h.by_kind(documents, "CustomResourceDefinition")}
    expected = {d["metadata"]["name"]: d for d in peering.build_peering_crds()}
    assert set(crds) == {"fanoutconsumers.fanout.dev", *expected}
    for name, document in expected.items():
        assert crds[name] == document
    # crds/ is installed before templates/ are built, so this object works on a first install.
    peering_object = h.one(documents, "ClusterKopfPeering")
    (container,) = h.one(documents, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert f"--peering={peering_object['metadata']['name']}" in container["args"]
    bare = peering.peering_object(peering_object["metadata"]["name"])
    assert {k: v for k, v in peering_object.items() if k != "metadata"} == {
        k: v for k, v in bare.items() if k != "metadata"
    }


# --- values schema -------------------------------------------------------------------------


def _schema() -> dict[str, Any]:
    schema: dict[str, Any] = json.loads(VALUES_SCHEMA.read_text(encoding="utf-8"))
    return schema


def _object_nodes(node: Any, where: str = "") -> list[tuple[str, dict[str, Any]]]:
    found: list[tuple[str, dict[str, Any]]] = []
    if isinstance(node, dict):
        if "properties" in node:
            found.append((where or "(root)", node))
        for key, value in node.items():
            found.extend(_object_nodes(value, f"{where}/{key}"))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found.extend(_object_nodes(value, f"{where}/{index}"))
    return found


def test_values_schema_rejects_unknown_keys_at_every_level() -> None:
    schema = _schema()
    jsonschema.Draft7Validator.check_schema(schema)
    open_objects = [
        where for where, node in _object_nodes(schema) if node.get("additionalProperties") is not False
    ]
    assert open_objects == []


def test_default_values_are_valid_against_the_schema() -> None:
    values = yaml.safe_load((h.CHART / "values.yaml").read_text(encoding="utf-8"))
    jsonschema.Draft7Validator(_schema()).validate(values)


@pytest.mark.parametrize(
    ("typo", "misspelt"),
    [
        ("operator.replica=3", "replica"),
        ("imag.tag=1.0", "imag"),
        ("image.tagg=1.0", "tagg"),
        ("operator.serviceAccount.rolearn=x", "rolearn"),
        ("operator.livenessProbe.periodSecond=5", "periodSecond"),
        ("operator.securityContext.readOnlyRootFileSystem=true", "readOnlyRootFileSystem"),
        ("metrics.podMonitor.intervall=10s", "intervall"),
        ("worker.serviceAccount.namespace=x", "namespace"),
        ("crds.keepp=true", "keepp"),
        (
            "consumers[0].name=x,consumers[0].spec.queue.url=q,consumers[0].spec.sink.type=webhook,"
            "consumers[0].spec.sink.url=u,consumers[0].spec.sink.ratelimit.burst=1",
            "ratelimit",
        ),
    ],
)
def test_a_values_typo_fails_the_render(typo: str, misspelt: str) -> None:
    result = h.template_result(sets=[typo])
    assert result.returncode != 0, f"accepted: {typo}"
    # helm 4: "additional properties 'x' not allowed"; helm 3: "Additional property x is not allowed"
    assert "not allowed" in result.output, result.output
    assert misspelt in result.output, result.output


@pytest.mark.parametrize(
    "wrong",
    ["operator.replicas=two", "image.pullPolicy=Sometimes", "consumers[0].name=Bad_Name"],
)
def test_a_values_type_error_fails_the_render(wrong: str) -> None:
    result = h.template_result(sets=[wrong])
    assert result.returncode != 0, f"accepted: {wrong}"


def test_consumer_spec_in_values_is_checked_like_the_crd(examples_as_consumers: pathlib.Path) -> None:
    rendered = h.by_kind(h.render(values_files=[examples_as_consumers]), "FanoutConsumer")
    examples = {
        document["metadata"]["name"]: document
        for document in (yaml.safe_load(p.read_text(encoding="utf-8")) for p in EXAMPLES.glob("*.yaml"))
    }
    assert {r["metadata"]["name"] for r in rendered} == set(examples)
    for resource in rendered:
        assert resource["spec"] == examples[resource["metadata"]["name"]]["spec"]
        assert resource["metadata"]["namespace"] == h.NAMESPACE


def _key_lines(text: str) -> dict[tuple[str, ...], int]:
    """values.yaml: the line of each mapping key, by path."""
    lines: dict[tuple[str, ...], int] = {}

    def walk(node: yaml.Node, path: tuple[str, ...]) -> None:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                lines[(*path, key.value)] = key.start_mark.line
                walk(value, (*path, key.value))

    walk(yaml.compose((h.CHART / "values.yaml").read_text(encoding="utf-8")), ())
    return lines


def _own_leaves(
    schema: dict[str, Any], node: dict[str, Any], path: tuple[str, ...] = ()
) -> list[tuple[str, ...]]:
    """Paths of the chart's own values (not inside Kubernetes types or the consumer spec)."""
    leaves: list[tuple[str, ...]] = []
    for name, child in node.get("properties", {}).items():
        if "properties" in child:
            leaves.extend(_own_leaves(schema, child, (*path, name)))
        else:
            leaves.append((*path, name))
    return leaves


def test_every_value_is_in_values_yaml_with_a_comment() -> None:
    text_lines = (h.CHART / "values.yaml").read_text(encoding="utf-8").splitlines()
    key_lines = _key_lines("\n".join(text_lines))
    schema = _schema()
    leaves = [leaf for leaf in _own_leaves(schema, schema) if leaf != ("global",)]
    missing = [".".join(leaf) for leaf in leaves if leaf not in key_lines]
    assert missing == [], "schema keys absent from values.yaml"
    uncommented = []
    for leaf in leaves:
        above = text_lines[key_lines[leaf] - 1].strip() if key_lines[leaf] else ""
        if not above.startswith("#"):
            uncommented.append(".".join(leaf))
    assert uncommented == []
