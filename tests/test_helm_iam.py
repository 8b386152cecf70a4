"""The README's IAM policies grant exactly the AWS calls the code makes (least privilege), and its
roles trust exactly the ServiceAccounts the operator creates, with IRSA and with EKS Pod Identity.

The README shows the worker policy, the operator policy, the operator's provisioning policy and
the front door's policy as JSON. This test finds, in the source each one covers (the stand-ins
that drive the embedded test endpoint live apart, in ``lab/``), every botocore operation reached
through a client object, maps it to the IAM action that authorizes it (the SQS batch calls are
authorized by their single-message actions, SNS's PublishBatch by sns:Publish; creating a queue
or a table with tags also needs the tagging action), and requires the policy's actions to be
that set, no more and no fewer. A new AWS call without a policy update, or a policy line nothing
uses, fails here.

What each policy covers: the worker's, ``workers/`` and the idempotency stores it uses
(``fanout_core/idempotency.py``); the front door's, ``fanout_ingest/`` and the same stores, less
the one call only the worker makes (``forget``, after dead-lettering: ``dynamodb:DeleteItem``); the
operator's, ``operator/`` and the topology reads it makes always (``fanout_core/inspecting.py``,
also what ``fanout validate --aws`` needs); the provisioning policy,
``fanout_core/provisioning.py`` (only for consumers with ``spec.topology.manage: true``).

The README's "Dead letters" section shows the policy of whoever runs ``fanout dlq``: the shared
redrive engine (``fanout_core/redriving.py``) and ``fanout_cli``; the operator's policy also covers
that engine, since the operator runs declarative redrives.

The trust policies (IRSA and Pod Identity) must name the namespace and ServiceAccount the operator
renders for the example consumer, the association command must bind that same account, and moto's
IAM must accept every document as a valid trust or permission policy.
"""

from __future__ import annotations

import ast
import json
import pathlib
import re
from typing import Any

import aiobotocore.session
import botocore.exceptions
import botocore.session
import pytest

from fanout_core import spec
from fanout_operator import rendering
from tests import external_tools

ROOT = external_tools.ROOT
README = ROOT / "README.md"
# IAM has no actions of their own for these: they are authorized by the single-message action.
BATCH_AUTHORIZED_BY = {
    "sqs:DeleteMessageBatch": "sqs:DeleteMessage",
    "sqs:ChangeMessageVisibilityBatch": "sqs:ChangeMessageVisibility",
    "sqs:SendMessageBatch": "sqs:SendMessage",
    "sns:PublishBatch": "sns:Publish",
}
# Tags given on creation are authorized by the tagging action as well (provisioning tags what it
# creates with its owner).
ALSO_NEEDED = {"sqs:CreateQueue": "sqs:TagQueue", "dynamodb:CreateTable": "dynamodb:TagResource"}
SERVICES = ("sqs", "dynamodb", "sns", "kms", "s3")


def _operations() -> dict[str, set[str]]:
    """snake_case client method → the IAM actions it may be (one per service that has it)."""
    session = botocore.session.get_session()
    table: dict[str, set[str]] = {}
    for service in SERVICES:
        model = session.get_service_model(service)
        for operation in model.operation_names:
            snake = re.sub(r"(?<!^)(?=[A-Z])", "_", operation).lower()
            action = f"{service}:{operation}"
            table.setdefault(snake, set()).add(BATCH_AUTHORIZED_BY.get(action, action))
    return table


REDRIVE_ENGINE = "fanout_core/redriving.py"


def _parse(source: str) -> ast.Module:
    """``ast.parse``, again if CPython 3.11 reports its own bookkeeping as broken.

    3.11's AST conversion keeps its recursion depth in state shared by the interpreter's
    threads; a thread another test left running in this process (a server, an executor) can
    make a parse raise ``SystemError: AST constructor recursion depth mismatch``, which says
    nothing about the source. Fixed in later CPython releases.
    """
    for _ in range(4):
        try:
            return ast.parse(source)
        except SystemError:
            continue
    return ast.parse(source)


def _client_calls(*sources: pathlib.Path) -> set[str]:
    """IAM actions of every ``<...sqs_client...>.<operation>`` attribute in the sources (files or
    directories); the service is the one the client's name names, when it names one."""
    operations = _operations()
    actions: set[str] = set()
    paths = [
        path
        for source in sources
        for path in ([source] if source.is_file() else sorted(source.rglob("*.py")))
    ]
    for path in paths:
        for node in ast.walk(_parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Attribute) or node.attr not in operations:
                continue
            owner = node.value
            owner_name = (
                owner.attr if isinstance(owner, ast.Attribute) else getattr(owner, "id", "")
            ).lower()
            if "client" not in owner_name:
                continue
            named = {action for action in operations[node.attr] if action.split(":")[0] in owner_name}
            for action in named or operations[node.attr]:
                actions.add(action)
                if action in ALSO_NEEDED:
                    actions.add(ALSO_NEEDED[action])
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


IDEMPOTENCY = "fanout_core/idempotency.py"

POLICIES = {
    "Worker policy": ("workers", IDEMPOTENCY),
    # The operator verifies topologies (inspecting) and runs declarative redrives (the engine).
    "Operator policy": ("operator", "fanout_core/inspecting.py", REDRIVE_ENGINE),
    "Operator provisioning policy": ("fanout_core/provisioning.py",),
    "fanout dlq policy": (REDRIVE_ENGINE, "fanout_cli"),
    "Front door policy": ("fanout_ingest", IDEMPOTENCY),
}
# Calls a policy's sources contain but its component never reaches: the front door never forgets
# an idempotency record (the worker does, after dead-lettering), the only store call that deletes.
NOT_REACHED = {"Front door policy": {"dynamodb:DeleteItem"}}


def test_the_scanner_sees_the_calls_it_should() -> None:
    # Guard against a scanner that finds nothing and so "agrees" with an empty policy.
    worker_calls = _client_calls(ROOT / "workers")
    assert "sqs:ReceiveMessage" in worker_calls
    assert _client_calls(ROOT / "operator") >= {"sqs:GetQueueAttributes"}
    assert _client_calls(ROOT / "fanout_ingest") >= {"sns:Publish", "s3:PutObject"}
    assert "s3:GetObject" in worker_calls
    assert _client_calls(ROOT / REDRIVE_ENGINE) >= {"sqs:SendMessage", "sqs:DeleteMessage"}
    reads = _client_calls(ROOT / "fanout_core" / "inspecting.py")
    assert {"sns:ListSubscriptionsByTopic", "kms:GetKeyPolicy", "dynamodb:DescribeTimeToLive"} <= reads
    writes = _client_calls(ROOT / "fanout_core" / "provisioning.py")
    assert {"sqs:CreateQueue", "sqs:TagQueue", "sns:Subscribe", "dynamodb:TagResource"} <= writes
    assert not {
        action for action in reads if not action.split(":")[1].startswith(("Get", "List", "Describe"))
    }


def test_what_a_policy_leaves_out_is_not_reached() -> None:
    tree = ast.parse((ROOT / IDEMPOTENCY).read_text(encoding="utf-8"))
    deleting = {
        function.name
        for function in ast.walk(tree)
        if isinstance(function, ast.AsyncFunctionDef | ast.FunctionDef)
        and any(isinstance(node, ast.Attribute) and node.attr == "delete_item" for node in ast.walk(function))
    }
    assert deleting == {"forget"}
    for path in sorted((ROOT / "fanout_ingest").rglob("*.py")):
        assert ".forget(" not in path.read_text(encoding="utf-8"), path


@pytest.mark.parametrize("title", sorted(POLICIES))
def test_readme_policy_is_exactly_what_the_code_calls(title: str) -> None:
    used = _client_calls(*(ROOT / source for source in POLICIES[title])) - NOT_REACHED.get(title, set())
    granted = _policy_actions(title)
    assert sorted(granted - used) == [], "granted but never called"
    assert sorted(used - granted) == [], "called but not granted"


# --- the roles: IRSA and EKS Pod Identity trust the ServiceAccounts the operator creates ------------


def _policy(title: str) -> dict[str, Any]:
    text = README.read_text(encoding="utf-8")
    match = re.search(rf"^{re.escape(title)}:\n\n```json\n(.*?)\n```", text, re.MULTILINE | re.DOTALL)
    assert match, f"README has no '{title}:' JSON block"
    document: dict[str, Any] = json.loads(match.group(1))
    return document


def _example_consumer() -> tuple[rendering.Owner, spec.FanoutConsumerSpec]:
    manifest = spec.load_manifest(ROOT / "examples" / "crm-sync.yaml")
    namespace = manifest.metadata.namespace or "contact-center"
    return rendering.Owner(manifest.metadata.name, namespace, "uid"), manifest.spec


def test_each_mechanism_trusts_exactly_the_account_the_operator_creates() -> None:
    owner, consumer = _example_consumer()
    assert consumer.workload.iam_role_arn is not None
    account = rendering.worker_service_account_name(owner)
    for identity in rendering.AwsIdentity:
        defaults = rendering.Defaults(image="fanout-consumer:1", aws_identity=identity)
        children = rendering.render(owner, consumer, defaults, replicas=1)
        assert children.deployment["spec"]["template"]["spec"]["serviceAccountName"] == account
        assert children.service_account is not None
        annotations = children.service_account["metadata"]["annotations"]
        irsa = identity is rendering.AwsIdentity.IRSA
        assert (annotations.get(rendering.ANNOTATION_IRSA_ROLE) == consumer.workload.iam_role_arn) is irsa

    (irsa_statement,) = _policy("IRSA trust policy")["Statement"]
    assert irsa_statement["Action"] == "sts:AssumeRoleWithWebIdentity"
    provider = irsa_statement["Principal"]["Federated"].split(":oidc-provider/", 1)[1]
    assert irsa_statement["Condition"]["StringEquals"] == {
        f"{provider}:aud": "sts.amazonaws.com",
        f"{provider}:sub": f"system:serviceaccount:{owner.namespace}:{account}",
    }
    (pod_statement,) = _policy("Pod Identity trust policy")["Statement"]
    assert pod_statement["Principal"] == {"Service": "pods.eks.amazonaws.com"}
    assert sorted(pod_statement["Action"]) == ["sts:AssumeRole", "sts:TagSession"]
    assert pod_statement["Condition"]["StringEquals"] == {
        "aws:RequestTag/kubernetes-namespace": owner.namespace,
        "aws:RequestTag/kubernetes-service-account": account,
    }
    role_name = consumer.workload.iam_role_arn.rsplit("/", 1)[1]
    readme = README.read_text(encoding="utf-8")
    assert f"--role-name {role_name} " in readme
    role = f"arn:aws:iam::$ACCOUNT:role/{role_name}"
    association = f"--namespace {owner.namespace} \\\n  --service-account {account} --role-arn {role}"
    assert association in readme


async def test_the_roles_are_valid_iam_for_both_mechanisms(moto_server: Any) -> None:
    """moto's IAM rejects a malformed trust or permission policy, as IAM does."""
    session = aiobotocore.session.get_session()
    async with session.create_client("iam", region_name="us-east-1") as iam:
        for mechanism in ("IRSA", "Pod Identity"):
            name = f"fanout-crm-sync-{mechanism.replace(' ', '-').lower()}"
            trust = _policy(f"{mechanism} trust policy")
            await iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(trust))
            # moto validates a trust policy when it is updated (as IAM does on create and update).
            await iam.update_assume_role_policy(RoleName=name, PolicyDocument=json.dumps(trust))
            for title in ("Worker policy", "Operator policy", "Operator provisioning policy"):
                await iam.put_role_policy(
                    RoleName=name,
                    PolicyName=title.replace(" ", "-"),
                    PolicyDocument=json.dumps(_policy(title)),
                )
            role = (await iam.get_role(RoleName=name))["Role"]
            assert role["AssumeRolePolicyDocument"]["Statement"] == trust["Statement"]
        broken = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sqs:ReceiveMessage"}]}
        with pytest.raises(botocore.exceptions.ClientError, match="MalformedPolicyDocument"):
            await iam.update_assume_role_policy(RoleName=name, PolicyDocument=json.dumps(broken))
