"""The README's IAM policies grant exactly the AWS calls the code makes (least privilege).

The README's "Install on EKS" section shows the worker and the operator policies as JSON. This
test finds, in the source of ``workers/`` and ``operator/`` (the stand-ins that drive the
embedded test endpoint live apart, in ``lab/``), every botocore operation reached through a client
object, maps it to the IAM action that authorizes it (the SQS batch calls are authorized by
their single-message actions), and requires the policy's actions to be that set, no more and
no fewer. A new AWS call without a policy update, or a policy line nothing uses, fails here.
"""

from __future__ import annotations

import ast
import json
import pathlib
import re

import botocore.session
import pytest

from tests import external_tools

ROOT = external_tools.ROOT
README = ROOT / "README.md"
# IAM has no actions of their own for these: they are authorized by the single-message action.
BATCH_AUTHORIZED_BY = {
    "sqs:DeleteMessageBatch": "sqs:DeleteMessage",
    "sqs:ChangeMessageVisibilityBatch": "sqs:ChangeMessageVisibility",
    "sqs:SendMessageBatch": "sqs:SendMessage",
}


def _operations() -> dict[str, str]:
    """snake_case client method → IAM action, for the services the project talks to."""
    session = botocore.session.get_session()
    table: dict[str, str] = {}
    for service, prefix in (("sqs", "sqs"), ("dynamodb", "dynamodb")):
        model = session.get_service_model(service)
        for operation in model.operation_names:
            snake = re.sub(r"(?<!^)(?=[A-Z])", "_", operation).lower()
            action = f"{prefix}:{operation}"
            table[snake] = BATCH_AUTHORIZED_BY.get(action, action)
    return table


def _client_calls(directory: pathlib.Path, *, exclude: tuple[str, ...] = ()) -> set[str]:
    """IAM actions of every ``<...client...>.<operation>`` attribute in the package's source."""
    operations = _operations()
    actions: set[str] = set()
    for path in sorted(directory.rglob("*.py")):
        if any(part in exclude for part in path.relative_to(directory).parts):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Attribute) or node.attr not in operations:
                continue
            owner = node.value
            owner_name = owner.attr if isinstance(owner, ast.Attribute) else getattr(owner, "id", "")
            if "client" in owner_name.lower():
                actions.add(operations[node.attr])
    return actions


def _policy_actions(title: str) -> set[str]:
    """The actions of the JSON block that follows the line ``<title>:`` in the README."""
    text = README.read_text(encoding="utf-8")
    match = re.search(rf"^{re.escape(title)}:\n\n```json\n(.*?)\n```", text, re.MULTILINE | re.DOTALL)
    assert match, f"README has no '{title}:' JSON block"
    policy = json.loads(match.group(1))
    actions: set[str] = set()
    for statement in policy["Statement"]:
        assert statement["Effect"] == "Allow"
        assert "*" not in statement["Resource"].split(":")[2:3], "the service part of the ARN is a wildcard"
        listed = statement["Action"]
        actions.update([listed] if isinstance(listed, str) else listed)
    return actions


def test_the_scanner_sees_the_calls_it_should() -> None:
    # Guard against a scanner that finds nothing and so "agrees" with an empty policy.
    worker_calls = _client_calls(ROOT / "workers")
    assert "sqs:ReceiveMessage" in worker_calls
    assert _client_calls(ROOT / "operator") >= {"sqs:GetQueueAttributes"}


@pytest.mark.parametrize(
    ("title", "source", "exclude"),
    [
        ("Worker policy", "workers", ()),
        ("Operator policy", "operator", ()),
    ],
)
def test_readme_policy_is_exactly_what_the_code_calls(
    title: str, source: str, exclude: tuple[str, ...]
) -> None:
    used = _client_calls(ROOT / source, exclude=exclude)
    granted = _policy_actions(title)
    assert sorted(granted - used) == [], "granted but never called"
    assert sorted(used - granted) == [], "called but not granted"
