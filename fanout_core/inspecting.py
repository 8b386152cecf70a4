"""Read a consumer's topology from AWS into :class:`~fanout_core.topology.Observed`; read-only.

The operator calls :func:`inspect` on every topology check and ``fanout validate --aws`` once;
``findings.check`` judges the result. Only ``Get*``, ``List*`` and ``Describe*`` calls are
made (the operator's read-only policy lists exactly these; tests/test_helm_iam.py holds them
to it). A read AWS refuses (AccessDenied) is recorded as such and the inspection carries on
with the rest, so a role without KMS rights still gets its queue checked; a resource that
does not exist is recorded as absent. Anything else (throttling, an outage, expired
credentials) raises :class:`~fanout_core.awsclients.AwsError`: nothing can be said then, and
the caller tries again later.
"""

from __future__ import annotations

import functools
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from fanout_core import awsclients, awserrors, findings, topology

T = TypeVar("T")
_TOLERATED = (awserrors.Kind.DENIED, awserrors.Kind.NOT_FOUND)


async def _read(fetch: Callable[[], Awaitable[T]]) -> topology.Read[T]:
    try:
        return topology.Read.of(await fetch())
    except awsclients.AwsError as error:
        if error.kind is awserrors.Kind.NOT_FOUND:
            return topology.Read(absent=True)
        if error.kind is awserrors.Kind.DENIED:
            return topology.Read(denied=error.denied())
        raise


async def inspect(clients: awsclients.Clients, desired: topology.Desired) -> topology.Observed:
    """Everything ``findings`` needs to judge ``desired``'s topology, as AWS has it now."""
    queue = await _read(lambda: queue_state(clients, desired.queue.url))
    table = (
        await _read(lambda: table_state(clients, desired.table)) if desired.table else topology.Read[Any]()
    )
    if queue.value is None:
        return topology.Observed(queue=queue, table=table)
    source = queue.value
    redrive = source.redrive()
    dead_letter: topology.Read[topology.Queue] = topology.Read()
    declared: topology.Read[topology.Queue] = topology.Read()
    if redrive is not None:
        target = url_for_arn(desired.queue.url, redrive.target_arn)
        dead_letter = await _read(lambda: queue_state(clients, target))
    if desired.dead_letter_declared and (redrive is None or not _same_queue(redrive.target_arn, desired)):
        declared = await _read(lambda: queue_state(clients, desired.dead_letter.url))
    subscriptions = await _read(lambda: subscriptions_to(clients, source.arn, desired.topic_arn))
    topic_arns = {s.topic_arn for s in subscriptions.value or ()}
    if desired.topic_arn:
        topic_arns.add(desired.topic_arn)
    topics: dict[str, topology.Read[topology.Topic]] = {}
    for topic_arn in sorted(topic_arns):
        topics[topic_arn] = await _read(functools.partial(topic_state, clients, topic_arn))
    key: topology.Read[topology.Key] = topology.Read()
    key_id = source.attributes.get("KmsMasterKeyId")
    if key_id and topic_arns and key_id != findings.AWS_MANAGED_SQS_KEY:
        key = await _read(lambda: key_state(clients, key_id))
    return topology.Observed(
        queue=queue,
        dead_letter=dead_letter,
        declared_dead_letter=declared,
        subscriptions=subscriptions,
        topics=topics,
        key=key,
        table=table,
    )


def _same_queue(arn: str, desired: topology.Desired) -> bool:
    name = arn.rsplit(":", 1)[-1]
    account = arn.split(":")[4] if arn.count(":") >= 5 else None
    return name == desired.dead_letter.name and account in (None, desired.dead_letter.account)


def url_for_arn(beside_url: str, arn: str) -> str:
    """The URL of the queue ``arn`` names, on the endpoint ``beside_url`` uses."""
    parts = arn.split(":")
    account, name = (parts[4], parts[5]) if len(parts) >= 6 else ("", arn)
    split = urllib.parse.urlsplit(beside_url)
    return urllib.parse.urlunsplit((split.scheme, split.netloc, f"/{account}/{name}", "", ""))


async def queue_state(clients: awsclients.Clients, url: str) -> topology.Queue:
    reply = await awsclients.call(
        clients.sqs_client.get_queue_attributes,
        "sqs:GetQueueAttributes",
        url,
        QueueUrl=url,
        AttributeNames=["All"],
    )
    return topology.Queue(url=url, attributes=dict(reply.get("Attributes", {})))


async def subscriptions_to(
    clients: awsclients.Clients, queue_arn: str, topic_arn: str | None
) -> tuple[topology.Subscription, ...]:
    """The SQS subscriptions delivering to ``queue_arn``: of ``topic_arn``, else of any topic."""
    listed: list[dict[str, Any]] = []
    token: str | None = None
    while True:
        paging = {"NextToken": token} if token else {}
        if topic_arn:
            reply = await awsclients.call(
                clients.sns_client.list_subscriptions_by_topic,
                "sns:ListSubscriptionsByTopic",
                topic_arn,
                TopicArn=topic_arn,
                **paging,
            )
        else:
            reply = await awsclients.call(
                clients.sns_client.list_subscriptions, "sns:ListSubscriptions", "*", **paging
            )
        listed.extend(reply.get("Subscriptions", []))
        token = reply.get("NextToken")
        if not token:
            break
    found = []
    for entry in listed:
        if entry.get("Protocol") != "sqs" or entry.get("Endpoint") != queue_arn:
            continue
        arn = str(entry.get("SubscriptionArn", ""))
        if arn in ("PendingConfirmation", ""):
            found.append(topology.Subscription(arn, str(entry["TopicArn"]), {"PendingConfirmation": "true"}))
            continue
        reply = await awsclients.call(
            clients.sns_client.get_subscription_attributes,
            "sns:GetSubscriptionAttributes",
            arn,
            SubscriptionArn=arn,
        )
        found.append(topology.Subscription(arn, str(entry["TopicArn"]), dict(reply.get("Attributes", {}))))
    return tuple(found)


async def topic_state(clients: awsclients.Clients, arn: str) -> topology.Topic:
    reply = await awsclients.call(
        clients.sns_client.get_topic_attributes, "sns:GetTopicAttributes", arn, TopicArn=arn
    )
    return topology.Topic(arn=arn, attributes=dict(reply.get("Attributes", {})))


async def key_state(clients: awsclients.Clients, key_id: str) -> topology.Key:
    reply = await awsclients.call(clients.kms_client.describe_key, "kms:DescribeKey", key_id, KeyId=key_id)
    metadata = reply.get("KeyMetadata", {})
    arn = str(metadata.get("Arn") or key_id)
    manager = str(metadata.get("KeyManager", "CUSTOMER"))

    async def policy() -> str:
        answer = await awsclients.call(
            clients.kms_client.get_key_policy, "kms:GetKeyPolicy", arn, KeyId=arn, PolicyName="default"
        )
        return str(answer.get("Policy", ""))

    policy_read = await _read(policy) if manager != "AWS" else topology.Read[str]()
    return topology.Key(key_id=arn, manager=manager, policy=policy_read)


async def table_state(clients: awsclients.Clients, name: str | None) -> topology.Table:
    assert name is not None
    reply = await awsclients.call(
        clients.dynamodb_client.describe_table, "dynamodb:DescribeTable", name, TableName=name
    )
    description = reply.get("Table", {})
    types = {
        item["AttributeName"]: item["AttributeType"] for item in description.get("AttributeDefinitions", [])
    }
    schema = tuple(
        (item["AttributeName"], types.get(item["AttributeName"], "?"), item["KeyType"])
        for item in description.get("KeySchema", [])
    )
    ttl = await awsclients.call(
        clients.dynamodb_client.describe_time_to_live, "dynamodb:DescribeTimeToLive", name, TableName=name
    )
    ttl_description = ttl.get("TimeToLiveDescription", {})
    enabled = ttl_description.get("TimeToLiveStatus") in ("ENABLED", "ENABLING")
    return topology.Table(
        name=name, key_schema=schema, ttl_attribute=ttl_description.get("AttributeName") if enabled else None
    )
