"""A FanoutConsumer with ``spec.topology.manage: true`` on an empty AWS account ends with a working pipe.

A moto server of its own (an account holding only the SNS topic the events are published to);
``provisioning`` builds what the spec asks for — dead-letter queue, queue, redrive and queue
policy, the subscription with the filter policy derived from ``spec.filter``, the idempotency
table — and a worker consumes it. Conversation events and agent events are published to the
topic: the webhook receives exactly the conversation events, and the agent events never reach
the queue (SNS dropped them, the worker filtered nothing). Once with the event type in the
body (EventBridge's ``detail-type``, FilterPolicyScope MessageBody: through the operator, in
tests/test_operator_topology.py), here in a message attribute (scope MessageAttributes).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from fanout_core import awsclients, findings, inspecting, provisioning, topology
from fanout_lab import harness
from fanout_lab.simulators import aws, genesys, webhook
from workers import running

ACCOUNT = "123456789012"


def _agent_event(source: genesys.Generator) -> dict[str, Any]:
    user = source.uuid()
    detail = {
        "topicName": f"v2.users.{user}.routingStatus",
        "version": "2",
        "eventBody": {"id": user, "routingStatus": {"status": "IDLE"}},
        "metadata": {"CorrelationId": source.uuid()},
    }
    return {
        "version": "0",
        "id": source.uuid(),
        "detail-type": "v2.users.{id}.routingStatus",
        "detail": detail,
    }


# The body-scoped variant (EventBridge's detail-type) runs through the operator in
# tests/test_operator_topology.py; here the publisher sets the event type as an attribute.
@pytest.mark.parametrize("event_type_attribute", ["eventType"], ids=["attribute"])
async def test_provisioned_on_an_empty_account_an_sns_publish_reaches_the_sink_filtered(
    event_type_attribute: str | None,
) -> None:
    name = "crm-sync"
    with aws.MotoServer() as server, aws.environment(server.environment()):
        async with awsclients.open_clients() as clients, webhook.WebhookSimulator() as sink:
            topic = await clients.sns_client.create_topic(Name="genesys-interactions")
            topic_arn = str(topic["TopicArn"])
            subscription: dict[str, Any] = {}
            if event_type_attribute:
                subscription["eventTypeAttribute"] = event_type_attribute
            document = harness.manifest(
                queue_url=f"{server.endpoint_url}/{ACCOUNT}/{name}", sink_url=sink.url
            )
            document["spec"]["queue"]["visibilityTimeoutSeconds"] = 10
            document["spec"]["filter"] = {"eventTypes": ["v2.detail.events.conversation.*"]}
            document["spec"]["idempotency"] = {"store": "dynamodb", "table": f"{name}-idempotency"}
            document["spec"]["topology"] = {
                "manage": True,
                "topicArn": topic_arn,
                "subscription": subscription,
            }
            consumer = harness.consumer(document)
            desired = topology.desired(consumer.spec, owner=f"contact-center/{name}", place=clients.place)

            done = await provisioning.provision(clients, desired)
            assert sorted(r.kind for r in done.created) == ["queue", "queue", "subscription", "table"]
            report = findings.check(consumer.spec, desired, await inspecting.inspect(clients, desired))
            assert report.ok, [finding.line() for finding in report.findings]

            source = genesys.Generator(seed=13)
            conversation = source.conversation(start_ms=1_741_964_966_000, length=6)
            publications = [source.eventbridge(event) for event in conversation]
            publications += [_agent_event(source) for _ in range(4)]
            for message in publications:
                attributes = {}
                if event_type_attribute:
                    value = {"DataType": "String", "StringValue": message["detail-type"]}
                    attributes = {event_type_attribute: value}
                await clients.sns_client.publish(
                    TopicArn=topic_arn, Message=json.dumps(message), MessageAttributes=attributes
                )

            worker = running.Worker(consumer, http_port=0)
            stop = asyncio.Event()
            task = asyncio.create_task(worker.run(stop))
            try:
                wanted = {event.correlation_id for event in conversation}
                delivered = await harness.wait_until(
                    lambda: set(harness.accepted_correlation_ids(sink.accepted)) >= wanted, timeout=30
                )
                assert delivered, "the conversation events did not reach the sink"
                assert await harness.wait_until_empty(clients.sqs_client, desired.queue.url, timeout=10)
            finally:
                stop.set()
                await asyncio.wait_for(task, timeout=30)
            assert sorted(harness.accepted_correlation_ids(sink.accepted)) == sorted(wanted)
            # the agent events were dropped by SNS, before the queue: the worker filtered none
            assert worker.metrics.value("fanout_events_filtered_total", queue=name) == 0
            # the worker remembered what it delivered in the table provisioning made
            scan = await clients.dynamodb_client.scan(TableName=f"{name}-idempotency", Select="COUNT")
            assert scan["Count"] == len(wanted)
