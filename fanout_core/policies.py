"""Resource policies as the topology needs them: who may send to the queue, who may use its key.

``findings`` asks whether a queue policy lets SNS deliver from one topic
(:func:`queue_allows_topic`) and whether a KMS key policy lets SNS use the key
(:func:`key_allows_sns`); ``topology`` builds the statement the operator adds to a queue
policy (:func:`sns_send_statement`). No I/O: policies arrive as the JSON text AWS returns.

This is not IAM's evaluator, it is the part of it these two questions need: ``Allow``
statements whose principal is the SNS service (or everyone), whose actions cover the one
asked, and whose conditions the request from SNS satisfies (``aws:SourceArn`` /
``aws:SourceAccount`` with the equality, ``Like`` and ``Arn`` operators); an explicit
``Deny`` that matches wins. A condition it does not understand makes a statement not count,
so an answer of "allowed" is one SNS's request really gets.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
from collections.abc import Mapping, Sequence
from typing import Any

SNS_SERVICE = "sns.amazonaws.com"
STATEMENT_SID = "FanoutSnsDelivery"
"""The Sid of the statement the operator puts in a queue policy, so it finds its own again."""


@dataclasses.dataclass(frozen=True)
class Request:
    """What SNS's call looks like to a policy: the action and the request context."""

    action: str
    source_arn: str | None
    source_account: str | None


class PolicyUnreadable(ValueError):
    """The policy text is not a JSON policy document."""


def parse(text: str | None) -> list[Mapping[str, Any]]:
    """The statements of a policy document (``[]`` for no policy)."""
    if not text:
        return []
    try:
        document = json.loads(text)
    except ValueError as error:
        raise PolicyUnreadable(f"not JSON: {error}") from error
    if not isinstance(document, Mapping):
        raise PolicyUnreadable("not a JSON object")
    statements = document.get("Statement", [])
    if isinstance(statements, Mapping):
        statements = [statements]
    if not isinstance(statements, list):
        raise PolicyUnreadable("Statement is neither a list nor an object")
    return [statement for statement in statements if isinstance(statement, Mapping)]


def _listed(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [item for item in value if isinstance(item, str)]
    return []


def _covers_action(statement: Mapping[str, Any], action: str) -> bool:
    patterns = _listed(statement.get("Action"))
    return any(fnmatch.fnmatchcase(action.lower(), pattern.lower()) for pattern in patterns)


def _principal_is_sns(statement: Mapping[str, Any]) -> bool:
    principal = statement.get("Principal")
    if principal == "*":
        return True
    if not isinstance(principal, Mapping):
        return False
    return SNS_SERVICE in _listed(principal.get("Service")) or "*" in _listed(principal.get("AWS"))


_STRING_OPERATORS = {
    "StringEquals": False,
    "ArnEquals": False,
    "StringLike": True,
    "ArnLike": True,
}


def _conditions_hold(statement: Mapping[str, Any], request: Request) -> bool | None:
    """True when every condition holds for ``request``; None when one is not understood."""
    conditions = statement.get("Condition", {})
    if not isinstance(conditions, Mapping):
        return None
    context = {"aws:sourcearn": request.source_arn, "aws:sourceaccount": request.source_account}
    for operator, clauses in conditions.items():
        wildcard = _STRING_OPERATORS.get(operator)
        if wildcard is None or not isinstance(clauses, Mapping):
            return None
        for key, expected in clauses.items():
            if key.lower() not in context:
                return None
            actual = context[key.lower()]
            if actual is None:
                return False
            allowed = _listed(expected)
            if wildcard:
                if not any(fnmatch.fnmatchcase(actual, pattern) for pattern in allowed):
                    return False
            elif actual not in allowed:
                return False
    return True


@dataclasses.dataclass(frozen=True)
class Verdict:
    """Whether SNS's request is allowed, and how broadly."""

    allowed: bool
    denied_explicitly: bool = False
    any_source: bool = False
    """Allowed without a condition naming the source: any topic, of any account, may send."""


def evaluate(statements: Sequence[Mapping[str, Any]], request: Request) -> Verdict:
    """What ``statements`` say to SNS's ``request``."""
    allowed = False
    any_source = False
    for statement in statements:
        if not _principal_is_sns(statement) or not _covers_action(statement, request.action):
            continue
        holds = _conditions_hold(statement, request)
        effect = statement.get("Effect")
        if effect == "Deny" and holds is not False:
            return Verdict(allowed=False, denied_explicitly=True)
        if effect == "Allow" and holds is True:
            allowed = True
            any_source = any_source or not statement.get("Condition")
    return Verdict(allowed=allowed, any_source=any_source)


def queue_allows_topic(policy_text: str | None, topic_arn: str) -> Verdict:
    """May SNS deliver from ``topic_arn`` (``sqs:SendMessage``) under this queue policy?"""
    account = topic_arn.split(":")[4] if topic_arn.count(":") >= 5 else None
    request = Request(action="sqs:SendMessage", source_arn=topic_arn, source_account=account)
    return evaluate(parse(policy_text), request)


KMS_ACTIONS_FOR_SNS = ("kms:GenerateDataKey", "kms:Decrypt")
"""What SNS needs of an SQS queue's key to deliver to it."""


def key_allows_sns(policy_text: str | None, topic_arn: str | None) -> list[str]:
    """The actions of :data:`KMS_ACTIONS_FOR_SNS` that the key policy does NOT grant SNS."""
    statements = parse(policy_text)
    account = topic_arn.split(":")[4] if topic_arn and topic_arn.count(":") >= 5 else None
    missing = []
    for action in KMS_ACTIONS_FOR_SNS:
        verdict = evaluate(statements, Request(action=action, source_arn=topic_arn, source_account=account))
        if not verdict.allowed:
            missing.append(action)
    return missing


def sns_send_statement(queue_arn: str, topic_arn: str) -> dict[str, Any]:
    """The queue-policy statement that lets exactly ``topic_arn`` deliver to ``queue_arn``."""
    return {
        "Sid": STATEMENT_SID,
        "Effect": "Allow",
        "Principal": {"Service": SNS_SERVICE},
        "Action": "sqs:SendMessage",
        "Resource": queue_arn,
        "Condition": {"ArnEquals": {"aws:SourceArn": topic_arn}},
    }


def key_statement_for_sns() -> dict[str, Any]:
    """The key-policy statement a user adds so SNS can deliver to queues encrypted with the key."""
    return {
        "Sid": "AllowSnsToUseTheKey",
        "Effect": "Allow",
        "Principal": {"Service": SNS_SERVICE},
        "Action": list(KMS_ACTIONS_FOR_SNS),
        "Resource": "*",
    }


def with_statement(policy_text: str | None, statement: Mapping[str, Any]) -> str | None:
    """``policy_text`` with ``statement`` in it (replacing one with its Sid); ``None`` when it
    is there already, unchanged — the caller then writes nothing."""
    statements = [dict(item) for item in parse(policy_text)]
    sid = statement.get("Sid")
    others = [item for item in statements if item.get("Sid") != sid]
    if len(others) < len(statements) and dict(statement) in statements:
        return None
    document: dict[str, Any] = {}
    if policy_text:
        loaded = json.loads(policy_text)
        document = {key: value for key, value in loaded.items() if key != "Statement"}
    document.setdefault("Version", "2012-10-17")
    document["Statement"] = [*others, dict(statement)]
    return json.dumps(document)
