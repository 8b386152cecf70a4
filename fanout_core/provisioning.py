"""Create or adopt a consumer's topology (``spec.topology.manage: true``), and delete what was created.

The operator calls :func:`provision` when a FanoutConsumer with ``manage: true`` appears or
changes and on every topology check (so a deleted subscription comes back), the demo calls
it to build its pipes; :func:`delete_created` runs when such a FanoutConsumer is deleted with
``deletionPolicy: Delete``. In order:

1. the dead-letter queue — created (retention ``deadLetter.retentionSeconds``, 14 days by
   default) or adopted (its retention raised above the source's when it is not);
2. the queue — created with the redrive policy, or adopted: its redrive policy set when it
   has none, targets another queue or cuts ``retry.maxAttempts`` short;
3. the queue policy — the statement that lets exactly ``spec.topology.topicArn`` send,
   added beside whatever else the policy says (by its Sid, so it is written once), in the
   same ``SetQueueAttributes`` as the redrive policy when both change;
4. the subscription — created with its filter policy, scope and raw delivery, or adopted
   and set to them;
5. the idempotency table (``store: dynamodb``) — created (``id`` String HASH, on demand,
   TTL on ``expiration``) or adopted (TTL turned on when it is off).

Idempotent: a second run changes nothing and says so. What it creates it tags
``fanout.dev/owner: <namespace>/<name>`` (queues, tables) and reports in
:attr:`~fanout_core.topology.Provisioned.created`; only those are ever deleted, and only when asked. What it
cannot fix (a table keyed differently, a KMS key policy) it leaves for ``findings`` to
report. Each AWS call names its IAM action: the operator's provisioning policy is exactly
these calls (tests/test_helm_iam.py).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from fanout_core import awsclients, awserrors, filterpolicies, inspecting, topology

TABLE_ACTIVE_TIMEOUT_SECONDS = 120.0


class _Run:
    def __init__(self, clients: awsclients.Clients, desired: topology.Desired) -> None:
        self.clients = clients
        self.desired = desired
        self.created: list[topology.Resource] = []
        self.changes: list[str] = []

    def made(self, resource: topology.Resource, change: str) -> None:
        self.created.append(resource)
        self.changes.append(change)


async def provision(
    clients: awsclients.Clients,
    desired: topology.Desired,
    *,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> topology.Provisioned:
    """Make AWS hold ``desired``'s topology; see the module docstring."""
    run = _Run(clients, desired)
    dead_letter = await _dead_letter_queue(run)
    queue = await _queue(run, dead_letter)
    if desired.topic_arn is not None:
        await _subscription(run, queue.arn)
    if desired.table is not None:
        await _table(run, desired.table, sleep)
    return topology.Provisioned(
        created=tuple(run.created),
        changes=tuple(run.changes),
        queue_arn=queue.arn,
        dead_letter_url=dead_letter.url,
    )


async def _existing_queue(run: _Run, url: str) -> topology.Queue | None:
    try:
        return await inspecting.queue_state(run.clients, url)
    except awsclients.AwsError as error:
        if error.kind is awserrors.Kind.NOT_FOUND:
            return None
        raise


async def _create_queue(
    run: _Run, target: topology.QueueTarget, attributes: dict[str, str]
) -> topology.Queue:
    reply = await awsclients.call(
        run.clients.sqs_client.create_queue,
        "sqs:CreateQueue",
        target.url,
        QueueName=target.name,
        Attributes=attributes,
        tags=run.desired.tags(),
    )
    url = str(reply["QueueUrl"])
    created = topology.QueueTarget.from_url(url, target.region)
    if target.account is not None and created.account not in (None, target.account):
        raise awsclients.ProvisioningError(
            f"{target.url} names account {target.account}, but the credentials created the queue in "
            f"account {created.account} ({url}); correct the URL or use credentials of that account"
        )
    run.made(topology.Resource(topology.Kind.QUEUE, target.url), f"created queue {target.name}")
    return await inspecting.queue_state(run.clients, target.url)


async def _owned_queue(run: _Run, queue: topology.Queue) -> None:
    """Adopting a queue we created on an earlier run (a crash lost the record): it is still ours."""
    reply = await awsclients.call(
        run.clients.sqs_client.list_queue_tags, "sqs:ListQueueTags", queue.url, QueueUrl=queue.url
    )
    if reply.get("Tags", {}).get(topology.OWNER_TAG) == run.desired.owner:
        run.created.append(topology.Resource(topology.Kind.QUEUE, queue.url))


async def _set_queue_attributes(
    run: _Run, queue: topology.Queue, attributes: dict[str, str], why: str
) -> None:
    await awsclients.call(
        run.clients.sqs_client.set_queue_attributes,
        "sqs:SetQueueAttributes",
        queue.url,
        QueueUrl=queue.url,
        Attributes=attributes,
    )
    run.changes.append(f"{queue.url}: {why}")


async def _dead_letter_queue(run: _Run) -> topology.Queue:
    desired = run.desired
    queue = await _existing_queue(run, desired.dead_letter.url)
    if queue is None:
        return await _create_queue(run, desired.dead_letter, desired.dead_letter_attributes())
    await _owned_queue(run, queue)
    retention = queue.seconds("MessageRetentionPeriod") or 0
    if retention <= desired.queue_retention and retention < desired.dead_letter_retention:
        retention_attribute = {"MessageRetentionPeriod": str(desired.dead_letter_retention)}
        await _set_queue_attributes(run, queue, retention_attribute, "dead-letter retention raised")
    return queue


async def _queue(run: _Run, dead_letter: topology.Queue) -> topology.Queue:
    desired = run.desired
    queue = await _existing_queue(run, desired.queue.url)
    if queue is None:
        queue = await _create_queue(run, desired.queue, desired.queue_attributes(dead_letter.arn))
    else:
        await _owned_queue(run, queue)
    changes: dict[str, str] = {}
    said: list[str] = []
    redrive = queue.redrive()
    if (
        redrive is None
        or redrive.target_arn != dead_letter.arn
        or redrive.max_receive_count < desired.max_attempts
    ):
        changes["RedrivePolicy"] = desired.redrive_policy(dead_letter.arn)
        said.append("redrive policy set")
    current_policy = queue.attributes.get("Policy")
    policy = desired.queue_policy(current_policy, queue.arn)
    if policy is not None:
        changes["Policy"] = policy
        said.append(f"queue policy lets {desired.topic_arn} send")
    elif changes and current_policy:
        # Repeated as it is: SQS keeps a policy a write does not name, but some of its
        # stand-ins (moto) drop it.
        changes["Policy"] = current_policy
    if changes:
        # One write: the redrive policy and the statement for the topic land together.
        await _set_queue_attributes(run, queue, changes, ", ".join(said))
        queue = await inspecting.queue_state(run.clients, queue.url)
    return queue


async def _subscription(run: _Run, queue_arn: str) -> None:
    desired = run.desired
    assert desired.topic_arn is not None
    existing = await inspecting.subscriptions_to(run.clients, queue_arn, desired.topic_arn)
    wanted = desired.subscription_attributes()
    confirmed = [s for s in existing if not s.pending]
    if not confirmed:
        reply = await awsclients.call(
            run.clients.sns_client.subscribe,
            "sns:Subscribe",
            desired.topic_arn,
            TopicArn=desired.topic_arn,
            Protocol="sqs",
            Endpoint=queue_arn,
            Attributes=wanted,
            ReturnSubscriptionArn=True,
        )
        arn = str(reply["SubscriptionArn"])
        run.made(
            topology.Resource(topology.Kind.SUBSCRIPTION, arn),
            f"subscribed {queue_arn} to {desired.topic_arn}",
        )
        return
    for subscription in confirmed:
        for name, value in _subscription_changes(subscription, wanted):
            await awsclients.call(
                run.clients.sns_client.set_subscription_attributes,
                "sns:SetSubscriptionAttributes",
                subscription.arn,
                SubscriptionArn=subscription.arn,
                AttributeName=name,
                AttributeValue=value,
            )
            run.changes.append(f"{subscription.arn}: {name} set")


def _subscription_changes(
    subscription: topology.Subscription, wanted: dict[str, str]
) -> list[tuple[str, str]]:
    """The attribute writes that make ``subscription`` what ``wanted`` says, in an order SNS accepts."""
    current = subscription.attributes
    changes: list[tuple[str, str]] = []
    if current.get("RawMessageDelivery", "false").lower() != wanted["RawMessageDelivery"]:
        changes.append(("RawMessageDelivery", wanted["RawMessageDelivery"]))
    policy = wanted.get("FilterPolicy")
    actual = subscription.filter_policy()
    if policy is None:
        if actual is not None:
            changes.append(("FilterPolicy", "{}"))
        return changes
    scope = wanted["FilterPolicyScope"]
    same_policy = actual is not None and filterpolicies.canonical(
        actual.document
    ) == filterpolicies.canonical(json.loads(policy))
    same_scope = (current.get("FilterPolicyScope") or "MessageAttributes") == scope
    if same_policy and same_scope:
        return changes
    # A body-shaped policy is only valid with scope MessageBody, so the scope goes first
    # when moving to it, and last when moving away from it.
    if scope == "MessageBody":
        changes += [("FilterPolicyScope", scope), ("FilterPolicy", policy)]
    else:
        changes += [("FilterPolicy", policy), ("FilterPolicyScope", scope)]
    return changes


async def _table(run: _Run, name: str, sleep: Callable[[float], Awaitable[None]]) -> None:
    dynamodb_client = run.clients.dynamodb_client
    try:
        reply = await awsclients.call(
            dynamodb_client.describe_table, "dynamodb:DescribeTable", name, TableName=name
        )
        arn = str(reply["Table"]["TableArn"])
    except awsclients.AwsError as error:
        if error.kind is not awserrors.Kind.NOT_FOUND:
            raise
        reply = await awsclients.call(
            dynamodb_client.create_table,
            "dynamodb:CreateTable",
            name,
            TableName=name,
            AttributeDefinitions=[{"AttributeName": topology.TABLE_KEY, "AttributeType": "S"}],
            KeySchema=[{"AttributeName": topology.TABLE_KEY, "KeyType": "HASH"}],
            BillingMode="PAY_PER_REQUEST",
            Tags=[{"Key": key, "Value": value} for key, value in run.desired.tags().items()],
        )
        arn = str(reply["TableDescription"]["TableArn"])
        run.made(topology.Resource(topology.Kind.TABLE, name), f"created table {name}")
        await _until_active(run, name, sleep)
    else:
        tags = await awsclients.call(
            dynamodb_client.list_tags_of_resource, "dynamodb:ListTagsOfResource", arn, ResourceArn=arn
        )
        if any(
            t.get("Key") == topology.OWNER_TAG and t.get("Value") == run.desired.owner
            for t in tags.get("Tags", [])
        ):
            run.created.append(topology.Resource(topology.Kind.TABLE, name))
    ttl = await awsclients.call(
        dynamodb_client.describe_time_to_live, "dynamodb:DescribeTimeToLive", name, TableName=name
    )
    if ttl.get("TimeToLiveDescription", {}).get("TimeToLiveStatus") in (None, "DISABLED"):
        await awsclients.call(
            dynamodb_client.update_time_to_live,
            "dynamodb:UpdateTimeToLive",
            name,
            TableName=name,
            TimeToLiveSpecification={"Enabled": True, "AttributeName": topology.TABLE_TTL_ATTRIBUTE},
        )
        run.changes.append(f"table {name}: time to live on {topology.TABLE_TTL_ATTRIBUTE}")


async def _until_active(run: _Run, name: str, sleep: Callable[[float], Awaitable[None]]) -> None:
    deadline = time.monotonic() + TABLE_ACTIVE_TIMEOUT_SECONDS
    while True:
        reply = await awsclients.call(
            run.clients.dynamodb_client.describe_table, "dynamodb:DescribeTable", name, TableName=name
        )
        if reply["Table"].get("TableStatus", "ACTIVE") == "ACTIVE":
            return
        if time.monotonic() > deadline:
            raise awsclients.ProvisioningError(
                f"table {name} is not ACTIVE after {TABLE_ACTIVE_TIMEOUT_SECONDS:g}s"
            )
        await sleep(1.0)


# --- deletion -------------------------------------------------------------------------


async def delete_created(
    clients: awsclients.Clients, desired: topology.Desired, created: tuple[topology.Resource, ...]
) -> list[str]:
    """Delete what :func:`provision` created, newest first; the lines say what went.

    A queue or table is deleted only while it still carries this consumer's owner tag (one
    re-created by hand under the same name is not ours); a subscription only when it still
    delivers to one of the queues. Already gone is fine.
    """
    done: list[str] = []
    for resource in reversed(created):
        try:
            if resource.kind is topology.Kind.SUBSCRIPTION:
                await awsclients.call(
                    clients.sns_client.unsubscribe,
                    "sns:Unsubscribe",
                    resource.id,
                    SubscriptionArn=resource.id,
                )
            elif resource.kind is topology.Kind.QUEUE:
                if not await _queue_still_ours(clients, desired, resource.id):
                    continue
                await awsclients.call(
                    clients.sqs_client.delete_queue, "sqs:DeleteQueue", resource.id, QueueUrl=resource.id
                )
            else:
                if not await _table_still_ours(clients, desired, resource.id):
                    continue
                await awsclients.call(
                    clients.dynamodb_client.delete_table,
                    "dynamodb:DeleteTable",
                    resource.id,
                    TableName=resource.id,
                )
        except awsclients.AwsError as error:
            if error.kind is not awserrors.Kind.NOT_FOUND:
                raise
        done.append(f"deleted {resource.kind} {resource.id}")
    return done


async def _queue_still_ours(clients: awsclients.Clients, desired: topology.Desired, url: str) -> bool:
    reply: dict[str, Any] = await awsclients.call(
        clients.sqs_client.list_queue_tags, "sqs:ListQueueTags", url, QueueUrl=url
    )
    return bool(reply.get("Tags", {}).get(topology.OWNER_TAG) == desired.owner)


async def _table_still_ours(clients: awsclients.Clients, desired: topology.Desired, name: str) -> bool:
    reply = await awsclients.call(
        clients.dynamodb_client.describe_table, "dynamodb:DescribeTable", name, TableName=name
    )
    arn = reply["Table"]["TableArn"]
    tags = await awsclients.call(
        clients.dynamodb_client.list_tags_of_resource, "dynamodb:ListTagsOfResource", arn, ResourceArn=arn
    )
    return any(
        t.get("Key") == topology.OWNER_TAG and t.get("Value") == desired.owner for t in tags.get("Tags", [])
    )
