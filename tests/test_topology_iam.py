"""The README's operator policies, enforced: enough for what the topology code does, and what they
leave out is reported (ReadDenied, ProvisioningFailed's action) while the rest is still checked.

A moto server of its own with IAM enforcement on (``/moto-api/reset-auth``): an IAM user gets a
README policy, and the topology code runs with that user's keys. moto evaluates actions, not
resource ARNs, so the policies' resources are widened to ``*`` here; tests/test_helm_iam.py
holds the actions to the code, this test holds the code to the actions.
"""

from __future__ import annotations

import copy
import json
import re
import urllib.request
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiobotocore.session
import pytest

from fanout_core import awsclients, awserrors, findings, inspecting, provisioning, spec, topology
from fanout_lab import harness
from fanout_lab.simulators import aws
from tests import external_tools

ACCOUNT = "123456789012"


def readme_policy(title: str) -> dict[str, Any]:
    text = (external_tools.ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(rf"^{re.escape(title)}:\n\n```json\n(.*?)\n```", text, re.MULTILINE | re.DOTALL)
    assert match, title
    policy: dict[str, Any] = json.loads(match.group(1))
    for statement in policy["Statement"]:
        statement["Resource"] = "*"
    return policy


@pytest.fixture(scope="module")
def server() -> Iterator[aws.MotoServer]:
    with aws.MotoServer() as started:
        yield started


def _enforce(server: aws.MotoServer, from_now: bool) -> None:
    count = b"0" if from_now else b"inf"
    request = urllib.request.Request(
        f"{server.endpoint_url}/moto-api/reset-auth",
        data=count,
        method="POST",
        headers={"Content-Type": "text/plain"},
    )
    with urllib.request.urlopen(request, timeout=10):
        pass


class Account:
    """The enforcing server as the account owner (before enforcement) and as IAM users."""

    def __init__(self, server: aws.MotoServer) -> None:
        self.server = server

    async def user_with(self, name: str, *policies: dict[str, Any]) -> dict[str, str]:
        session = aiobotocore.session.get_session()
        async with session.create_client("iam", region_name="us-east-1") as iam:
            await iam.create_user(UserName=name)
            for index, policy in enumerate(policies):
                await iam.put_user_policy(
                    UserName=name, PolicyName=f"p{index}", PolicyDocument=json.dumps(policy)
                )
            key = (await iam.create_access_key(UserName=name))["AccessKey"]
        return {"AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}


@pytest.fixture
async def account(server: aws.MotoServer, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Account]:
    for name, value in server.environment().items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_ENDPOINT_URL_SQS", "AWS_ENDPOINT_URL_SNS", "AWS_ENDPOINT_URL_DYNAMODB"):
        monkeypatch.delenv(name, raising=False)
    try:
        yield Account(server)
    finally:
        _enforce(server, from_now=False)


def _consumer(
    server: aws.MotoServer, name: str, topic_arn: str, **topology_spec: Any
) -> spec.FanoutConsumerSpec:
    document = harness.manifest(
        queue_url=f"{server.endpoint_url}/{ACCOUNT}/{name}", sink_url="http://127.0.0.1:1/"
    )
    document["spec"]["queue"]["visibilityTimeoutSeconds"] = 10
    document["spec"]["idempotency"] = {"store": "dynamodb", "table": f"{name}-idempotency"}
    document["spec"]["topology"] = {"manage": True, "topicArn": topic_arn, **topology_spec}
    return spec.parse_manifest(document).spec


async def _as(monkeypatch: pytest.MonkeyPatch, keys: dict[str, str]) -> None:
    for name, value in keys.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)


async def test_the_documented_policies_are_enough_to_provision_and_verify(
    account: Account, server: aws.MotoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = await account.user_with(
        "operator", readme_policy("Operator policy"), readme_policy("Operator provisioning policy")
    )
    async with awsclients.open_clients() as owner:
        topic_arn = str((await owner.sns_client.create_topic(Name="genesys-enough"))["TopicArn"])
    consumer = _consumer(server, "enough", topic_arn)
    _enforce(server, from_now=True)
    await _as(monkeypatch, keys)
    async with awsclients.open_clients() as clients:
        desired = topology.desired(consumer, owner="tests/enough", place=clients.place)
        done = await provisioning.provision(clients, desired)
        assert {r.kind for r in done.created} == {"queue", "subscription", "table"}
        report = findings.check(consumer, desired, await inspecting.inspect(clients, desired))
        assert report.ok, [finding.line() for finding in report.findings]
        assert len(await provisioning.delete_created(clients, desired, done.created)) == 4


async def test_what_the_policy_leaves_out_is_reported_and_the_rest_is_checked(
    account: Account, server: aws.MotoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    read_only = readme_policy("Operator policy")
    without_kms = copy.deepcopy(read_only)
    without_kms["Statement"] = [s for s in without_kms["Statement"] if not s["Action"][0].startswith("kms:")]
    readers = await account.user_with("reader", without_kms)
    checker = await account.user_with("checker", read_only)
    async with awsclients.open_clients() as owner:
        topic_arn = str((await owner.sns_client.create_topic(Name="genesys-partial"))["TopicArn"])
        key = await owner.kms_client.create_key()
        consumer = _consumer(
            server, "partial", topic_arn, queue={"kmsMasterKeyId": key["KeyMetadata"]["KeyId"]}
        )
        desired = topology.desired(consumer, owner="tests/partial", place=owner.place)
        await provisioning.provision(owner, desired)
        await owner.sqs_client.set_queue_attributes(
            QueueUrl=desired.queue.url,
            Attributes={
                "RedrivePolicy": "",
                "Policy": (await inspecting.queue_state(owner, desired.queue.url)).attributes["Policy"],
            },
        )
        fresh = _consumer(server, "fresh", topic_arn)
    _enforce(server, from_now=True)

    await _as(monkeypatch, readers)
    async with awsclients.open_clients() as clients:
        report = findings.check(consumer, desired, await inspecting.inspect(clients, desired))
    assert sorted((f.reason, f.severity) for f in report.findings) == [
        (findings.Reason.NO_REDRIVE_POLICY, findings.Severity.ERROR),
        (findings.Reason.READ_DENIED, findings.Severity.UNKNOWN),
    ]
    (denied,) = [f for f in report.findings if f.reason is findings.Reason.READ_DENIED]
    assert "kms:DescribeKey" in denied.fix

    await _as(monkeypatch, checker)
    async with awsclients.open_clients() as clients:
        report = findings.check(consumer, desired, await inspecting.inspect(clients, desired))
        assert [f.reason for f in report.findings] == [
            findings.Reason.NO_REDRIVE_POLICY,
            findings.Reason.KMS_KEY_DENIES_SNS,
        ]
        fresh_desired = topology.desired(fresh, owner="tests/fresh", place=clients.place)
        with pytest.raises(awsclients.AwsError) as refused:
            await provisioning.provision(clients, fresh_desired)
    assert refused.value.kind is awserrors.Kind.DENIED
    assert refused.value.action == "sqs:CreateQueue"
