"""Every topology trap built for real on moto (SNS, SQS, KMS, DynamoDB), inspected and judged.

Each test provisions a consumer's topology with ``provisioning`` (which must leave nothing to
find), breaks one thing the way a hand-built topology gets it wrong, and expects the finding
with its reason from ``inspecting`` + ``findings``. Then provisioning itself: idempotent,
adopting what exists without clobbering it, deleting only what it created.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from fanout_core import awsclients, findings, inspecting, policies, provisioning, spec, topology
from fanout_lab import harness
from fanout_lab.simulators import aws

ACCOUNT = "123456789012"
Reason = findings.Reason


@pytest.fixture
async def clients(moto_server: aws.MotoServer) -> AsyncIterator[awsclients.Clients]:
    async with awsclients.open_clients() as opened:
        yield opened


class Lab:
    """One consumer's names on the moto server, and shortcuts to build, break and judge it."""

    def __init__(self, server: aws.MotoServer, clients: awsclients.Clients, topic_arn: str) -> None:
        self.name = f"topo-{uuid.uuid4().hex[:8]}"
        self.server = server
        self.clients = clients
        self.topic_arn = topic_arn
        self.queue_url = f"{server.endpoint_url}/{ACCOUNT}/{self.name}"

    def consumer(self, **sections: Any) -> spec.FanoutConsumerSpec:
        document = harness.manifest(queue_url=self.queue_url, sink_url="http://127.0.0.1:1/")
        document["spec"]["queue"]["visibilityTimeoutSeconds"] = 10
        document["spec"]["filter"] = {"eventTypes": ["v2.detail.events.conversation.*"]}
        document["spec"]["topology"] = {"manage": True, "topicArn": self.topic_arn}
        document["spec"].update(sections)
        return spec.parse_manifest(document).spec

    def desired(self, consumer: spec.FanoutConsumerSpec) -> topology.Desired:
        return topology.desired(consumer, owner=f"tests/{self.name}", place=self.clients.place)

    async def provision(self, consumer: spec.FanoutConsumerSpec) -> topology.Provisioned:
        return await provisioning.provision(self.clients, self.desired(consumer))

    async def check(self, consumer: spec.FanoutConsumerSpec) -> findings.Report:
        desired = self.desired(consumer)
        return findings.check(consumer, desired, await inspecting.inspect(self.clients, desired))

    async def reasons(self, consumer: spec.FanoutConsumerSpec) -> list[str]:
        return sorted(finding.reason for finding in (await self.check(consumer)).findings)

    async def set_queue(self, url: str, **attributes: str) -> None:
        # moto forgets a queue's policy on any SetQueueAttributes that does not repeat it (SQS
        # keeps it): repeat it, so that a test breaks only the one thing it means to.
        current = await inspecting.queue_state(self.clients, url)
        if "Policy" not in attributes and current.attributes.get("Policy"):
            attributes = {**attributes, "Policy": current.attributes["Policy"]}
        await self.clients.sqs_client.set_queue_attributes(QueueUrl=url, Attributes=attributes)

    async def subscription_arn(self) -> str:
        queue = await inspecting.queue_state(self.clients, self.queue_url)
        (subscription,) = await inspecting.subscriptions_to(self.clients, queue.arn, self.topic_arn)
        return subscription.arn

    async def set_subscription(self, name: str, value: str) -> None:
        await self.clients.sns_client.set_subscription_attributes(
            SubscriptionArn=await self.subscription_arn(), AttributeName=name, AttributeValue=value
        )


@pytest.fixture
async def lab(moto_server: aws.MotoServer, clients: awsclients.Clients) -> Lab:
    topic = await clients.sns_client.create_topic(Name=f"genesys-{uuid.uuid4().hex[:8]}")
    return Lab(moto_server, clients, str(topic["TopicArn"]))


async def test_a_provisioned_topology_has_no_finding_and_a_second_run_changes_nothing(lab: Lab) -> None:
    consumer = lab.consumer(idempotency={"store": "dynamodb", "table": f"{lab.name}-idempotency"})
    first = await lab.provision(consumer)
    assert {resource.kind for resource in first.created} == {"queue", "subscription", "table"}
    report = await lab.check(consumer)
    assert report.ok, [finding.line() for finding in report.findings]
    second = await lab.provision(consumer)
    assert second.changes == ()
    # what a crash between creating and recording would lose is found again by its owner tag
    assert {r.kind for r in second.created} == {"queue", "table"}


async def test_queue_policy_without_the_sns_topic(lab: Lab) -> None:
    consumer = lab.consumer()
    await lab.provision(consumer)
    await lab.set_queue(lab.queue_url, Policy="")
    assert await lab.reasons(consumer) == [Reason.SNS_CANNOT_SEND]
    other = json.dumps({"Statement": [policies.sns_send_statement("*", lab.topic_arn + "-other")]})
    await lab.set_queue(lab.queue_url, Policy=other)
    assert await lab.reasons(consumer) == [Reason.SNS_CANNOT_SEND]


async def test_no_redrive_policy_and_no_dead_letter_queue(lab: Lab) -> None:
    consumer = lab.consumer()
    await lab.provision(consumer)
    await lab.set_queue(lab.queue_url, RedrivePolicy="")
    assert await lab.reasons(consumer) == [Reason.NO_REDRIVE_POLICY]
    await lab.provision(consumer)  # puts it back
    await lab.clients.sqs_client.delete_queue(QueueUrl=lab.queue_url + "-dlq")
    assert await lab.reasons(consumer) == [Reason.DEAD_LETTER_QUEUE_MISSING]


async def test_redrive_before_the_retries_are_used_up(lab: Lab) -> None:
    consumer = lab.consumer(retry={"maxAttempts": 8})
    await lab.provision(consumer)
    target = f"arn:aws:sqs:us-east-1:{ACCOUNT}:{lab.name}-dlq"
    await lab.set_queue(
        lab.queue_url, RedrivePolicy=json.dumps({"deadLetterTargetArn": target, "maxReceiveCount": 3})
    )
    report = await lab.check(consumer)
    (finding,) = report.findings
    assert finding.reason is Reason.REDRIVE_BEFORE_RETRIES_EXHAUSTED
    assert "after 3 receives" in finding.message and "(8)" in finding.message


async def test_visibility_timeout_shorter_than_a_delivery(lab: Lab) -> None:
    consumer = lab.consumer(
        queue={"url": lab.queue_url, "visibilityTimeoutSeconds": 15},
        sink={"type": "webhook", "url": "http://x/", "timeoutSeconds": 30},
    )
    await lab.provision(consumer)
    assert await lab.reasons(consumer) == [Reason.VISIBILITY_TIMEOUT_TOO_SHORT]


async def test_filter_policy_unlike_spec_filter(lab: Lab) -> None:
    consumer = lab.consumer()
    await lab.provision(consumer)
    await lab.set_subscription(
        "FilterPolicy", json.dumps({"detail-type": ["v2.detail.events.conversation.{id}.acw"]})
    )
    assert await lab.reasons(consumer) == [Reason.FILTER_POLICY_DROPS_EVENTS]  # dropped before the queue
    await lab.set_subscription("FilterPolicy", "{}")
    assert await lab.reasons(consumer) == [Reason.FILTER_POLICY_MISSING]  # paid for and discarded
    await lab.set_subscription("FilterPolicy", json.dumps({"detail-type": [{"prefix": "v2."}]}))
    assert await lab.reasons(consumer) == [Reason.FILTER_POLICY_DIFFERS]


async def test_raw_delivery_unlike_what_the_consumer_expects(lab: Lab) -> None:
    consumer = lab.consumer()
    await lab.provision(consumer)
    await lab.set_subscription("RawMessageDelivery", "false")
    assert await lab.reasons(consumer) == [Reason.RAW_DELIVERY_MISMATCH]
    enveloped = lab.consumer(
        topology={"topicArn": lab.topic_arn, "subscription": {"rawMessageDelivery": False}}
    )
    assert await lab.reasons(enveloped) == []


async def test_fifo_topic_into_a_standard_queue(lab: Lab) -> None:
    consumer = lab.consumer()
    await lab.provision(consumer)
    fifo = await lab.clients.sns_client.create_topic(
        Name=f"{lab.name}.fifo", Attributes={"FifoTopic": "true", "ContentBasedDeduplication": "true"}
    )
    fifo_arn = str(fifo["TopicArn"])
    queue = await inspecting.queue_state(lab.clients, lab.queue_url)
    await lab.clients.sns_client.subscribe(
        TopicArn=fifo_arn, Protocol="sqs", Endpoint=queue.arn, Attributes={"RawMessageDelivery": "true"}
    )
    statement = policies.sns_send_statement(queue.arn, fifo_arn)
    await lab.set_queue(
        lab.queue_url,
        Policy=policies.with_statement(queue.attributes["Policy"], {**statement, "Sid": "Fifo"}) or "",
    )
    verify_only = lab.consumer(topology={})  # no topic declared: every subscription found is checked
    report = await lab.check(verify_only)
    mismatches = [f for f in report.findings if f.reason is Reason.FIFO_MISMATCH]
    assert [(f.resource, f.severity) for f in mismatches] == [(fifo_arn, findings.Severity.WARNING)]


async def test_dead_letter_retention_shorter_than_the_source(lab: Lab) -> None:
    consumer = lab.consumer()
    await lab.provision(consumer)
    await lab.set_queue(lab.queue_url + "-dlq", MessageRetentionPeriod="86400")
    assert await lab.reasons(consumer) == [Reason.DEAD_LETTER_RETENTION_TOO_SHORT]


async def test_sse_kms_key_whose_policy_does_not_let_sns_use_it(lab: Lab) -> None:
    root = {
        "Sid": "Root",
        "Effect": "Allow",
        "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:root"},
        "Action": "kms:*",
        "Resource": "*",
    }
    key = await lab.clients.kms_client.create_key(
        Policy=json.dumps({"Version": "2012-10-17", "Statement": [root]})
    )
    key_id = str(key["KeyMetadata"]["KeyId"])
    consumer = lab.consumer(
        topology={"manage": True, "topicArn": lab.topic_arn, "queue": {"kmsMasterKeyId": key_id}}
    )
    await lab.provision(consumer)
    assert await lab.reasons(consumer) == [Reason.KMS_KEY_DENIES_SNS]
    fixed = {"Version": "2012-10-17", "Statement": [root, policies.key_statement_for_sns()]}
    await lab.clients.kms_client.put_key_policy(KeyId=key_id, PolicyName="default", Policy=json.dumps(fixed))
    assert await lab.reasons(consumer) == []
    await lab.set_queue(lab.queue_url, KmsMasterKeyId=findings.AWS_MANAGED_SQS_KEY)
    assert await lab.reasons(consumer) == [Reason.AWS_MANAGED_KEY_BLOCKS_SNS]


async def test_idempotency_table_key_schema_and_ttl(lab: Lab) -> None:
    table = f"{lab.name}-idempotency"
    consumer = lab.consumer(idempotency={"store": "dynamodb", "table": table})
    assert Reason.IDEMPOTENCY_TABLE_MISSING in await lab.reasons(consumer)
    await lab.clients.dynamodb_client.create_table(
        TableName=table,
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        BillingMode="PAY_PER_REQUEST",
    )
    await lab.provision(consumer)  # adopts the table, turns its TTL on, cannot change its key
    assert await lab.reasons(consumer) == [Reason.IDEMPOTENCY_TABLE_KEY_SCHEMA]
    await lab.clients.dynamodb_client.update_time_to_live(
        TableName=table, TimeToLiveSpecification={"Enabled": False, "AttributeName": "expiration"}
    )
    assert await lab.reasons(consumer) == [Reason.IDEMPOTENCY_TABLE_KEY_SCHEMA, Reason.IDEMPOTENCY_TABLE_TTL]


async def test_verify_only_reports_what_manage_would_build(lab: Lab) -> None:
    consumer = lab.consumer(topology={"topicArn": lab.topic_arn})
    assert await lab.reasons(consumer) == [Reason.QUEUE_MISSING]
    await lab.clients.sqs_client.create_queue(QueueName=lab.name)
    assert await lab.reasons(consumer) == [
        Reason.NO_REDRIVE_POLICY,
        Reason.NOT_SUBSCRIBED,
        Reason.SNS_CANNOT_SEND,
    ]


async def test_adopting_an_existing_queue_keeps_its_policy_and_never_deletes_it(lab: Lab) -> None:
    own = {
        "Sid": "TheirOwn",
        "Effect": "Allow",
        "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:root"},
        "Action": "sqs:*",
        "Resource": "*",
    }
    await lab.clients.sqs_client.create_queue(
        QueueName=lab.name, Attributes={"Policy": json.dumps({"Version": "2012-10-17", "Statement": [own]})}
    )
    consumer = lab.consumer(topology={"manage": True, "topicArn": lab.topic_arn, "deletionPolicy": "Delete"})
    desired = lab.desired(consumer)
    done = await provisioning.provision(lab.clients, desired)
    assert sorted(r.kind for r in done.created) == [
        "queue",
        "subscription",
    ]  # the dead-letter queue, the subscription
    assert await lab.reasons(consumer) == []
    queue = await inspecting.queue_state(lab.clients, lab.queue_url)
    sids = [statement["Sid"] for statement in json.loads(queue.attributes["Policy"])["Statement"]]
    assert sids == ["TheirOwn", policies.STATEMENT_SID]
    deleted = await provisioning.delete_created(lab.clients, desired, done.created)
    assert len(deleted) == 2
    assert (await inspecting.queue_state(lab.clients, lab.queue_url)).arn == queue.arn  # adopted: kept
    with pytest.raises(awsclients.AwsError) as gone:
        await inspecting.queue_state(lab.clients, desired.dead_letter.url)
    assert gone.value.kind == "not_found"
    assert await inspecting.subscriptions_to(lab.clients, queue.arn, lab.topic_arn) == ()


async def test_a_queue_recreated_by_hand_under_the_same_name_is_not_deleted(lab: Lab) -> None:
    consumer = lab.consumer()
    desired = lab.desired(consumer)
    done = await provisioning.provision(lab.clients, desired)
    await lab.clients.sqs_client.delete_queue(QueueUrl=lab.queue_url)
    await lab.clients.sqs_client.create_queue(QueueName=lab.name)  # someone else's now, no owner tag
    await provisioning.delete_created(lab.clients, desired, done.created)
    assert (await inspecting.queue_state(lab.clients, lab.queue_url)).url == lab.queue_url
