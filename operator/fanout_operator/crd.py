"""The FanoutConsumer CustomResourceDefinition, generated from the spec model.

``build_crd()`` is the one place the CRD comes from: the chart's CRD template is rendered from it
and a test compares the two, and the operator's tests install it. Its openAPIV3Schema is derived
from ``fanout_core.spec.FanoutConsumerSpec`` (and ``fanout_operator.status``) so the API server
validates exactly what the worker and the operator validate.

Pydantic emits JSON Schema; Kubernetes wants a *structural* OpenAPI v3 schema. The conversion
(:func:`openapi_schema`) therefore inlines every ``$ref``, turns ``anyOf: [X, null]`` into X with
``nullable: true``, moves draft-2020 numeric exclusive bounds to OpenAPI 3.0's boolean form,
drops ``title`` and ``additionalProperties: false`` (the API server prunes unknown fields, and
``kubectl`` rejects them under strict field validation), and marks free-form objects (``Any``)
with ``x-kubernetes-preserve-unknown-fields``. Anything it cannot express raises
:class:`SchemaError` at build time rather than producing a schema the API server refuses.

:func:`json_schema` goes the other way for tests and the chart: it turns the structural schema
into a draft 2020-12 JSON Schema that behaves like the API server with strict field validation
(unknown fields rejected, ``nullable`` honoured), for use with ``jsonschema``.

The output is deterministic: the same model always yields the same dict (key order included).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import pydantic

from fanout_core import spec
from fanout_operator import status

CRD_NAME = f"{spec.PLURAL}.{spec.API_GROUP}"
LIST_KIND = f"{spec.KIND}List"
CATEGORIES = ("fanout",)

# What `kubectl scale fanoutconsumer/x --replicas=N` reads and writes: spec.replicas pins the
# fleet (absent = autoscaled); status.replicas is what the Deployment runs.
SCALE_SPEC_REPLICAS_PATH = ".spec.replicas"
SCALE_STATUS_REPLICAS_PATH = ".status.replicas"
SCALE_LABEL_SELECTOR_PATH = ".status.selector"

_NUMERIC_BOUNDS = (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum"))
_PASSTHROUGH = (
    "type",
    "description",
    "default",
    "enum",
    "pattern",
    "format",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "required",
)
_IGNORED = ("title", "$defs", "additionalProperties", "properties", "items", "$ref", "anyOf", "const")


class SchemaError(Exception):
    """The model uses a construct a structural Kubernetes schema cannot express."""


def _resolve(node: Mapping[str, Any], defs: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Inline ``$ref`` and collapse ``anyOf: [X, null]``; siblings (description, default) win."""
    result = dict(node)
    if "$ref" in result:
        name = str(result.pop("$ref")).rsplit("/", 1)[-1]
        if name not in defs:
            raise SchemaError(f"{where}: unknown $ref {name!r}")
        result = {**_resolve(defs[name], defs, where), **result}
    if "anyOf" in result:
        variants = result.pop("anyOf")
        concrete = [variant for variant in variants if variant != {"type": "null"}]
        if len(concrete) != 1:
            raise SchemaError(f"{where}: anyOf with {len(concrete)} non-null variants is not structural")
        inner = _resolve(concrete[0], defs, where)
        # The outer node's own keys (description, default) describe the field, not the variant.
        result = {**inner, **result}
        if len(concrete) < len(variants):
            result["nullable"] = True
    if "const" in result:
        result["enum"] = [result.pop("const")]
    return result


def _convert(node: Mapping[str, Any], defs: Mapping[str, Any], where: str) -> dict[str, Any]:
    flat = _resolve(node, defs, where)
    for key in ("oneOf", "allOf", "not", "discriminator", "patternProperties"):
        if key in flat:
            raise SchemaError(f"{where}: {key} is not supported in a structural schema")
    out: dict[str, Any] = {}
    free_form = False
    for key in _PASSTHROUGH:
        if key in flat and not (key == "default" and flat[key] is None):
            out[key] = copy.deepcopy(flat[key])
    for exclusive, inclusive in _NUMERIC_BOUNDS:
        if exclusive in flat:
            out[inclusive] = flat[exclusive]
            out[exclusive] = True
    if "properties" in flat:
        out["properties"] = {
            name: _convert(child, defs, f"{where}.{name}") for name, child in flat["properties"].items()
        }
    extra = flat.get("additionalProperties")
    if isinstance(extra, Mapping):
        if extra:
            out["additionalProperties"] = _convert(extra, defs, f"{where}.*")
        else:
            free_form = True
    elif extra is True:
        free_form = True
    if "items" in flat:
        if not flat["items"]:
            raise SchemaError(f"{where}: array items of any type are not structural")
        out["items"] = _convert(flat["items"], defs, f"{where}[]")
    if "type" not in out:
        if flat and set(flat) - {"description", "default", "nullable"}:
            raise SchemaError(f"{where}: no type")
        # `Any`: any JSON value; the closest structural form is a free-form object.
        out["type"] = "object"
        free_form = True
    if free_form:
        out["x-kubernetes-preserve-unknown-fields"] = True
    if flat.get("nullable"):
        out["nullable"] = True
    unknown = set(flat) - set(_PASSTHROUGH) - set(_IGNORED) - {"nullable"} - {e for e, _ in _NUMERIC_BOUNDS}
    if unknown:
        raise SchemaError(f"{where}: unsupported keywords {sorted(unknown)}")
    return out


def openapi_schema(model: type[pydantic.BaseModel], *, keep_defaults: bool = True) -> dict[str, Any]:
    """A structural OpenAPI v3 schema for ``model`` (camelCase field names)."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    converted = _convert(raw, raw.get("$defs", {}), model.__name__)
    return converted if keep_defaults else _without_defaults(converted)


def _without_defaults(node: dict[str, Any]) -> dict[str, Any]:
    result = {key: value for key, value in node.items() if key != "default"}
    if "properties" in result:
        result["properties"] = {
            name: _without_defaults(child) for name, child in result["properties"].items()
        }
    for key in ("items", "additionalProperties"):
        if isinstance(result.get(key), dict):
            result[key] = _without_defaults(result[key])
    return result


def _status_schema() -> dict[str, Any]:
    # The API server must not invent status values, so no defaults here.
    schema = openapi_schema(status.FanoutConsumerStatus, keep_defaults=False)
    conditions = schema["properties"]["conditions"]
    conditions["x-kubernetes-list-type"] = "map"
    conditions["x-kubernetes-list-map-keys"] = ["type"]
    return schema


def resource_schema() -> dict[str, Any]:
    """The whole openAPIV3Schema of the FanoutConsumer resource."""
    return {
        "type": "object",
        "description": "A FanoutConsumer: one SQS queue fanned out to one downstream API by a "
        "fleet of workers the fanout operator runs and scales.",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": openapi_schema(spec.FanoutConsumerSpec),
            "status": _status_schema(),
        },
    }


def printer_columns() -> list[dict[str, Any]]:
    """What `kubectl get fanoutconsumers` shows."""
    return [
        {"name": "Queue", "type": "string", "jsonPath": ".status.queue"},
        {"name": "Sink", "type": "string", "jsonPath": ".spec.sink.type"},
        {"name": "Replicas", "type": "integer", "jsonPath": ".status.replicas"},
        {"name": "Desired", "type": "integer", "jsonPath": ".status.desiredReplicas"},
        {"name": "Backlog", "type": "integer", "jsonPath": ".status.backlog.total"},
        {"name": "Ready", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].status'},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        {"name": "Reason", "type": "string", "jsonPath": ".status.reason", "priority": 1},
    ]


def build_crd() -> dict[str, Any]:
    """The CustomResourceDefinition (apiextensions.k8s.io/v1) for FanoutConsumer."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": CRD_NAME},
        "spec": {
            "group": spec.API_GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": spec.KIND,
                "listKind": LIST_KIND,
                "plural": spec.PLURAL,
                "singular": spec.SINGULAR,
                "shortNames": list(spec.SHORT_NAMES),
                "categories": list(CATEGORIES),
            },
            "versions": [
                {
                    "name": spec.API_VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": resource_schema()},
                    "subresources": {
                        "status": {},
                        "scale": {
                            "specReplicasPath": SCALE_SPEC_REPLICAS_PATH,
                            "statusReplicasPath": SCALE_STATUS_REPLICAS_PATH,
                            "labelSelectorPath": SCALE_LABEL_SELECTOR_PATH,
                        },
                    },
                    "additionalPrinterColumns": printer_columns(),
                }
            ],
        },
    }


def structural_problems(schema: Mapping[str, Any], where: str = "openAPIV3Schema") -> list[str]:
    """Why ``schema`` is not structural (empty when it is): every node typed, no refs or unions."""
    problems: list[str] = []
    if "type" not in schema and not schema.get("x-kubernetes-int-or-string"):
        problems.append(f"{where}: no type")
    for key in ("$ref", "anyOf", "oneOf", "allOf", "not", "$defs", "definitions"):
        if key in schema:
            problems.append(f"{where}: {key} is not allowed here")
    if "properties" in schema and "additionalProperties" in schema:
        problems.append(f"{where}: properties and additionalProperties are mutually exclusive")
    for name, child in schema.get("properties", {}).items():
        problems.extend(structural_problems(child, f"{where}.{name}"))
    for key, suffix in (("items", "[]"), ("additionalProperties", ".*")):
        child = schema.get(key)
        if isinstance(child, Mapping):
            problems.extend(structural_problems(child, where + suffix))
        elif child is not None and key == "additionalProperties" and child is not True:
            problems.append(f"{where}: additionalProperties must be a schema")
    return problems


def json_schema(openapi: Mapping[str, Any]) -> dict[str, Any]:
    """A draft 2020-12 JSON Schema behaving like the API server with strict field validation.

    ``nullable`` becomes a ``null`` type, OpenAPI 3.0 boolean exclusive bounds become numeric,
    and objects that are not free-form reject unknown fields (as `kubectl apply` does by default).
    """
    out: dict[str, Any] = {}
    for key, value in openapi.items():
        if key in ("properties",):
            out[key] = {name: json_schema(child) for name, child in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, Mapping):
            out[key] = json_schema(value)
        elif key in ("exclusiveMinimum", "exclusiveMaximum", "nullable") or key.startswith("x-kubernetes-"):
            continue
        else:
            out[key] = copy.deepcopy(value)
    for exclusive, inclusive in _NUMERIC_BOUNDS:
        if openapi.get(exclusive) is True:
            out[exclusive] = out.pop(inclusive)
    if openapi.get("nullable"):
        out["type"] = [openapi["type"], "null"]
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
    preserve = openapi.get("x-kubernetes-preserve-unknown-fields", False)
    if openapi.get("type") == "object" and "properties" in openapi and not preserve:
        out["additionalProperties"] = False
    return out
