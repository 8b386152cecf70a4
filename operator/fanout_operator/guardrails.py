"""What a FanoutConsumer may ask the operator to run: spec validation plus the admin's limits. Pure.

Whoever may create a FanoutConsumer chooses what the operator then creates for them with its own
rights: the worker image, the ServiceAccount the pods run as, and the IAM role that account is
bound to. In a shared cluster that is privilege escalation through the operator, so a cluster
admin sets limits (chart values → ``fanout-operator`` flags → :class:`Guardrails`):

- ``spec.workload.image`` must come from an allowed repository (default: only the repository of
  the operator's own image, which is also the workers' default image);
- ``spec.workload.serviceAccountName`` and ``spec.workload.iamRoleArn`` may be switched off,
  and limited to some namespaces.

:func:`admit` is the one gate: ``handlers`` (create / update / resume), the scaling loop and the
drift resync all call it before creating or changing anything, so a spec outside the limits is
marked ``Degraded`` / ``InvalidSpec`` with a Warning Event and nothing is created or changed.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from typing import Any

from fanout_core import spec
from fanout_operator import rendering

WHERE_TO_ASK = "a cluster admin sets this with the chart's operator.guardrails values"


class Rejected(Exception):
    """The spec cannot be run: invalid, or outside the operator's guardrails. One line."""


@dataclasses.dataclass(frozen=True)
class Guardrails:
    # fnmatch patterns of image repositories (no tag or digest), e.g. "123456789012.dkr.ecr.
    # us-east-1.amazonaws.com/fanout-*"; empty = only the default worker image's repository.
    image_repositories: tuple[str, ...] = ()
    allow_service_account_name: bool = True
    allow_iam_role_arn: bool = True
    # Namespaces whose consumers may set serviceAccountName / iamRoleArn; empty = every one.
    identity_namespaces: tuple[str, ...] = ()


def repository(image: str) -> str:
    """``registry:5000/team/app:1.2@sha256:…`` → ``registry:5000/team/app``."""
    name = image.split("@", 1)[0]
    slash = name.rfind("/")
    colon = name.rfind(":")
    return name[:colon] if colon > slash else name


def allowed_repositories(rails: Guardrails, defaults: rendering.Defaults) -> tuple[str, ...]:
    return rails.image_repositories or (repository(defaults.image),)


def violations(
    rails: Guardrails, defaults: rendering.Defaults, namespace: str, consumer: spec.FanoutConsumerSpec
) -> list[str]:
    """Why ``consumer`` may not run in ``namespace``: one line per broken limit."""
    found: list[str] = []
    workload = consumer.workload
    if workload.image:
        allowed = allowed_repositories(rails, defaults)
        image_repository = repository(workload.image)
        if not any(fnmatch.fnmatchcase(image_repository, pattern) for pattern in allowed):
            found.append(
                f"spec.workload.image: repository {image_repository!r} is not allowed "
                f"(allowed: {', '.join(allowed)})"
            )
    identity_here = not rails.identity_namespaces or namespace in rails.identity_namespaces
    for field, value, allowed_at_all in (
        ("serviceAccountName", workload.service_account_name, rails.allow_service_account_name),
        ("iamRoleArn", workload.iam_role_arn, rails.allow_iam_role_arn),
    ):
        if not value:
            continue
        if not allowed_at_all:
            found.append(f"spec.workload.{field}: not allowed on this cluster")
        elif not identity_here:
            found.append(f"spec.workload.{field}: not allowed in namespace {namespace!r}")
    return found


def admit(
    raw_spec: Any, namespace: str, rails: Guardrails, defaults: rendering.Defaults
) -> spec.FanoutConsumerSpec:
    """The parsed spec, or :class:`Rejected` saying in one line what is wrong and who can fix it."""
    try:
        consumer = spec.parse_spec(raw_spec)
    except spec.ConfigError as error:
        raise Rejected(f"invalid spec: {error}".replace("\n", "; ")) from error
    found = violations(rails, defaults, namespace, consumer)
    if found:
        raise Rejected(f"not allowed by the operator's guardrails: {'; '.join(found)} ({WHERE_TO_ASK})")
    return consumer
