"""Which fields of a child the operator owns, and the patch that puts them back. Pure.

``reconciling`` compares every existing child with what ``rendering`` renders for it, on
create / update / resume and on every drift resync, and patches only when a field the operator
owns differs (:func:`repair` returns ``None`` otherwise, so an unchanged cluster sees no writes).

What the operator owns, and what it leaves to others:

- every child: its labels (merged: others' labels stay) and its ownerReferences; the
  annotations it renders (merged: others' annotations stay);
- ConfigMap: the keys it renders in ``data`` (the worker manifest and the replica-count file);
- ServiceAccount: ``automountServiceAccountToken`` and the role annotations
  (``eks.amazonaws.com/role-arn`` and ``fanout.dev/iam-role-arn``: whichever one the operator
  does not render is removed, so switching IRSA ↔ Pod Identity leaves no stale binding);
- PodDisruptionBudget: its spec;
- Deployment: its spec except ``replicas`` (the scaler's, through the scale subresource, or a
  ``kubectl scale``). In the pod template's annotations and nodeSelector it owns only the keys it
  rendered: they are recorded on the Deployment (``fanout.dev/managed-template-keys``), so a key
  dropped from the spec is removed while ``kubectl rollout restart``'s annotation, or a mutating
  webhook's, is not.

A JSON merge patch merges maps and replaces lists; :func:`contains` compares the same way,
except that list items only need to contain what was rendered (an API server adds defaults, such
as a container's ``terminationMessagePath``, which are not drift).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from fanout_operator import rendering

_TEMPLATE_MAPS: dict[str, tuple[str, ...]] = {
    "annotations": ("spec", "template", "metadata", "annotations"),
    "nodeSelector": ("spec", "template", "spec", "nodeSelector"),
}
_SERVICE_ACCOUNT_ROLE_ANNOTATIONS = (rendering.ANNOTATION_IRSA_ROLE, rendering.ANNOTATION_INTENDED_ROLE)


def _dig(document: Mapping[str, Any], keys: tuple[str, ...]) -> Mapping[str, Any]:
    node: Any = document
    for key in keys:
        node = node.get(key) if isinstance(node, Mapping) else None
    return node if isinstance(node, Mapping) else {}


def _set(document: dict[str, Any], keys: tuple[str, ...], value: Any) -> None:
    node = document
    for key in keys[:-1]:
        node = node.setdefault(key, {})
    node[keys[-1]] = value


def _recorded_template_keys(existing: Mapping[str, Any]) -> dict[str, list[str]]:
    """The pod-template keys the operator put on ``existing`` last time (none if unrecorded)."""
    raw = _dig(existing, ("metadata", "annotations")).get(rendering.ANNOTATION_MANAGED_KEYS)
    try:
        recorded = json.loads(raw) if isinstance(raw, str) else {}
    except ValueError:
        return {}
    if not isinstance(recorded, dict):
        return {}
    return {name: [str(k) for k in keys] for name, keys in recorded.items() if isinstance(keys, list)}


def _metadata_patch(desired: Mapping[str, Any]) -> dict[str, Any]:
    metadata = desired["metadata"]
    patch = {key: metadata[key] for key in ("labels", "ownerReferences", "annotations") if key in metadata}
    return dict(patch)


def _deployment_patch(existing: Mapping[str, Any], desired: Mapping[str, Any]) -> dict[str, Any]:
    patch: dict[str, Any] = {
        "metadata": _metadata_patch(desired),
        "spec": {key: value for key, value in desired["spec"].items() if key != "replicas"},
    }
    recorded = _recorded_template_keys(existing)
    for name, keys in _TEMPLATE_MAPS.items():
        wanted = dict(_dig(desired, keys))
        for key in recorded.get(name, []):
            if key not in wanted and key in _dig(existing, keys):
                wanted[key] = None
        if wanted:
            _set(patch, keys, wanted)
    return patch


def _service_account_patch(desired: Mapping[str, Any]) -> dict[str, Any]:
    patch = {key: value for key, value in desired.items() if key not in ("apiVersion", "kind")}
    metadata = _metadata_patch(desired)
    annotations = dict(metadata.get("annotations") or {})
    for key in _SERVICE_ACCOUNT_ROLE_ANNOTATIONS:
        annotations.setdefault(key, None)
    metadata["annotations"] = annotations
    patch["metadata"] = metadata
    return patch


def owned_patch(existing: Mapping[str, Any], desired: Mapping[str, Any]) -> dict[str, Any]:
    """The merge patch that sets every field the operator owns in ``existing`` to ``desired``."""
    kind = desired["kind"]
    if kind == "Deployment":
        return _deployment_patch(existing, desired)
    if kind == "ServiceAccount":
        return _service_account_patch(desired)
    patch = {key: value for key, value in desired.items() if key not in ("apiVersion", "kind", "metadata")}
    patch["metadata"] = _metadata_patch(desired)
    return patch


def contains(existing: Any, patch: Any) -> bool:
    """Whether applying ``patch`` (a JSON merge patch) to ``existing`` would change nothing."""
    if isinstance(patch, Mapping):
        if not isinstance(existing, Mapping):
            return False
        for key, value in patch.items():
            if value is None:
                if key in existing:
                    return False
            elif key not in existing or not contains(existing[key], value):
                return False
        return True
    if isinstance(patch, list):
        return (
            isinstance(existing, list)
            and len(existing) == len(patch)
            and all(contains(have, want) for have, want in zip(existing, patch, strict=True))
        )
    return bool(existing == patch)


def repair(existing: Mapping[str, Any], desired: Mapping[str, Any]) -> dict[str, Any] | None:
    """The patch that undoes drift in what the operator owns, or ``None`` when there is none."""
    patch = owned_patch(existing, desired)
    return None if contains(existing, patch) else patch
