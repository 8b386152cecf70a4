"""The operator's topology check: TopologyReady, status.topology, Events, the metric; and, end to
end, a FanoutConsumer with ``spec.topology.manage: true`` applied to an empty AWS account (a moto
server of its own) ends with a working pipe.

The end-to-end test runs the real operator (``cli.run`` in a thread, tests/operator_harness.py)
against kmock's Kubernetes API. kmock runs no pods, so the worker the operator's Deployment would
run is run here, in process, from the same manifest.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import prometheus_client.parser
import pytest

from fanout_core import awsclients, findings, inspecting, topology
from fanout_lab import harness
from fanout_lab.simulators import aws, genesys, webhook
from fanout_operator import conditions, kube, status
from fanout_operator import topology as operator_topology
from tests import operator_harness as h
from workers import running

ACCOUNT = "123456789012"
Reason = findings.Reason


def _finding(reason: str, severity: str, resource: str = "q") -> status.TopologyFinding:
    return status.TopologyFinding(
        reason=reason,
        severity=severity,
        resource=resource,
        message=f"{reason} happened.",
        fix="do something.",
    )


def _apply(previous: status.FanoutConsumerStatus, outcome: conditions.Outcome) -> conditions.Report:
    return conditions.apply(previous, outcome, now=0, generation=1)


def _topology_ready(report: conditions.Report) -> status.Condition:
    found = status.condition(report.status, status.ConditionType.TOPOLOGY_READY)
    assert found is not None
    return found


def test_no_finding_is_verified_and_provisioning_is_announced_once() -> None:
    created = (status.TopologyResource(kind="queue", id="q"),)
    first = _apply(
        status.FanoutConsumerStatus(), conditions.TopologyChecked((), created, ("created queue q",))
    )
    assert (_topology_ready(first).status, _topology_ready(first).reason) == ("True", "Verified")
    assert [(n.reason, n.message, n.warning) for n in first.events] == [
        ("TopologyProvisioned", "created queue q", False)
    ]
    again = _apply(first.status, conditions.TopologyChecked((), created, ()))
    assert again.events == ()
    assert again.status.topology is not None and len(again.status.topology.created) == 1


def test_the_condition_takes_the_most_severe_reason_and_new_findings_warn_once() -> None:
    found = (_finding("FilterPolicyMissing", "warning"), _finding("SnsCannotSendToQueue", "error"))
    first = _apply(status.FanoutConsumerStatus(), conditions.TopologyChecked(found))
    condition = _topology_ready(first)
    assert (condition.status, condition.reason) == ("False", "SnsCannotSendToQueue")
    assert "FilterPolicyMissing: " in condition.message and "Fix: do something." in condition.message
    assert [(n.reason, n.warning) for n in first.events] == [
        ("FilterPolicyMissing", True),
        ("SnsCannotSendToQueue", True),
    ]
    assert _apply(first.status, conditions.TopologyChecked(found)).events == ()
    unverified = _apply(
        status.FanoutConsumerStatus(), conditions.TopologyChecked((_finding("ReadDenied", "unknown"),))
    )
    assert _topology_ready(unverified).status == "Unknown"


def test_a_failed_check_is_unknown_and_keeps_the_last_findings() -> None:
    before = _apply(
        status.FanoutConsumerStatus(), conditions.TopologyChecked((_finding("NoRedrivePolicy", "error"),))
    )
    failed = _apply(
        before.status, conditions.TopologyUnchecked("sqs:GetQueueAttributes on q failed: Throttling")
    )
    condition = _topology_ready(failed)
    assert (condition.status, condition.reason) == ("Unknown", "TopologyCheckFailed")
    assert failed.status.topology == before.status.topology and failed.events == ()


def test_the_other_conditions_are_left_alone() -> None:
    polled = status.set_condition([], status.ConditionType.READY, True, "Polling", "", now=0, generation=1)
    previous = status.FanoutConsumerStatus(conditions=polled, replicas=3)
    after = _apply(previous, conditions.TopologyChecked((_finding("NoRedrivePolicy", "error"),)))
    assert status.condition(after.status, status.ConditionType.READY) == polled[0]
    assert after.status.replicas == 3
    parsed = status.parse(status.dump(after.status))
    assert parsed.conditions == after.status.conditions


def test_the_check_interval_is_a_flag() -> None:
    assert h.operator_settings().topology_seconds == 300
    assert h.operator_settings("--topology-seconds", "30").topology_seconds == 30


def test_only_manage_with_delete_deletes() -> None:
    assert operator_topology.deletes_what_it_created(
        {"topology": {"manage": True, "deletionPolicy": "Delete"}}
    )
    assert not operator_topology.deletes_what_it_created({"topology": {"manage": True}})
    assert not operator_topology.deletes_what_it_created({"topology": {"deletionPolicy": "Delete"}})
    assert not operator_topology.deletes_what_it_created(None)


# ----------------------------------------------------------------------------- end to end


def _manifest(
    name: str, namespace: str, queue_url: str, sink_url: str, topology_spec: dict[str, Any]
) -> dict[str, Any]:
    document = harness.manifest(queue_url=queue_url, sink_url=sink_url, name=name)
    document["metadata"]["namespace"] = namespace
    document["spec"]["queue"]["visibilityTimeoutSeconds"] = 10
    document["spec"]["filter"] = {"eventTypes": ["v2.detail.events.conversation.*"]}
    document["spec"]["topology"] = topology_spec
    document["spec"]["workload"] = {"image": "fanout-consumer:e2e"}
    return document


async def test_applied_with_manage_on_an_empty_account_the_pipe_works_and_problems_are_reported(
    kube_api: str, kube_client: kube.KubeClient, kube_namespace: str
) -> None:
    namespace = kube_namespace
    client = kube_client
    metrics_port = aws.free_port()
    scope = ["--all-namespaces"] if kube_api == "kmock" else ["--namespace", namespace]
    config = h.operator_settings(
        *scope,
        "--standalone",
        "--topology-seconds",
        "1",
        "--metrics-port",
        str(metrics_port),
        "--metrics-address",
        "127.0.0.1",
    )
    consumers = kube.collection_path("fanout.dev/v1alpha1", "fanoutconsumers", namespace)

    async def topology_condition(name: str) -> dict[str, Any] | None:
        found = await client.get(f"{consumers}/{name}")
        conditions_ = ((found or {}).get("status") or {}).get("conditions", [])
        return next((c for c in conditions_ if c["type"] == "TopologyReady"), None)

    async def condition_is(name: str, expected: str, reason: str) -> dict[str, Any] | None:
        found = await topology_condition(name)
        return found if found and (found["status"], found["reason"]) == (expected, reason) else None

    async def events(name: str, reason: str) -> list[dict[str, Any]]:
        items = await client.list(kube.collection_path("v1", "events", namespace))
        return [e for e in items if e["involvedObject"]["name"] == name and e["reason"] == reason]

    with aws.MotoServer() as server, aws.environment(server.environment()):
        async with awsclients.open_clients() as clients, webhook.WebhookSimulator() as sink:
            topic_arn = str((await clients.sns_client.create_topic(Name="genesys-interactions"))["TopicArn"])
            queue_url = f"{server.endpoint_url}/{ACCOUNT}/crm-sync"
            managed = {"manage": True, "topicArn": topic_arn, "deletionPolicy": "Delete"}
            document = _manifest("crm-sync", namespace, queue_url, sink.url, managed)
            with h.OperatorThread(config, timeout=60):
                await client.create(consumers, document)
                ready = await h.eventually(
                    lambda: condition_is("crm-sync", "True", "Verified"), "TopologyReady", timeout=30
                )
                assert ready["message"]
                assert await h.eventually(
                    lambda: events("crm-sync", "TopologyProvisioned"), "provisioning announced"
                )
                found = await client.get(f"{consumers}/crm-sync")
                assert found is not None
                kinds = sorted(r["kind"] for r in found["status"]["topology"]["created"])
                assert kinds == ["queue", "queue", "subscription"]

                # The pipe works: what the topic publishes reaches the sink, filtered as declared.
                await _publish_and_consume(clients, topic_arn, harness.consumer(document), sink)

                # Drift: a subscription deleted by hand is back at the next check.
                desired = topology.desired(
                    harness.consumer(document).spec, owner=f"{namespace}/crm-sync", place=clients.place
                )
                queue = await inspecting.queue_state(clients, desired.queue.url)
                (subscription,) = await inspecting.subscriptions_to(clients, queue.arn, topic_arn)
                await clients.sns_client.unsubscribe(SubscriptionArn=subscription.arn)

                async def resubscribed() -> bool:
                    again = await inspecting.subscriptions_to(clients, queue.arn, topic_arn)
                    return len(again) == 1 and again[0].arn != subscription.arn

                assert await h.eventually(resubscribed, "subscription repaired")

                # Verify only, with a trap: a Warning Event, the condition, the metric.
                await clients.sqs_client.create_queue(QueueName="siem-audit")
                verify_only = {"topicArn": topic_arn}
                siem = _manifest(
                    "siem-audit",
                    namespace,
                    f"{server.endpoint_url}/{ACCOUNT}/siem-audit",
                    sink.url,
                    verify_only,
                )
                await client.create(consumers, siem)
                broken = await h.eventually(
                    lambda: condition_is("siem-audit", "False", "NoRedrivePolicy"), "TopologyReady False"
                )
                assert (
                    "NotSubscribed: " in broken["message"] and "SnsCannotSendToQueue: " in broken["message"]
                )
                (warning,) = await h.eventually(
                    lambda: events("siem-audit", "NoRedrivePolicy"), "Warning Event"
                )
                assert (
                    warning["type"] == "Warning" and "Fix: aws sqs set-queue-attributes" in warning["message"]
                )
                samples = await h.eventually(
                    lambda: _topology_samples(metrics_port, namespace), "the findings metric"
                )
                assert samples[("siem-audit", "NoRedrivePolicy", "error")] == 1
                assert not [key for key in samples if key[0] == "crm-sync"]

                # deletionPolicy Delete: what the operator created goes with the consumer.
                await client.delete(f"{consumers}/crm-sync")
                await h.eventually(lambda: _absent(client, f"{consumers}/crm-sync"), "FanoutConsumer gone")
                with pytest.raises(awsclients.AwsError):
                    await inspecting.queue_state(clients, queue_url)
                assert await inspecting.subscriptions_to(clients, queue.arn, topic_arn) == ()
                # a verify-only consumer never deletes anything
                await client.delete(f"{consumers}/siem-audit")
                await h.eventually(lambda: _absent(client, f"{consumers}/siem-audit"), "siem-audit gone")
                assert (
                    await inspecting.queue_state(clients, f"{server.endpoint_url}/{ACCOUNT}/siem-audit")
                ).arn


async def _absent(client: kube.KubeClient, path: str) -> bool:
    return await client.get(path) is None


async def _publish_and_consume(clients: awsclients.Clients, topic_arn: str, consumer: Any, sink: Any) -> None:
    source = genesys.Generator(seed=21)
    conversation = source.conversation(start_ms=1_741_964_966_000, length=4)
    user = source.uuid()
    other = {  # an agent event: the filter policy drops it
        "version": "0",
        "id": source.uuid(),
        "detail-type": "v2.users.{id}.routingStatus",
        "detail": {
            "topicName": f"v2.users.{user}.routingStatus",
            "version": "2",
            "eventBody": {"id": user, "routingStatus": {"status": "IDLE"}},
            "metadata": {"CorrelationId": source.uuid()},
        },
    }
    for message in [*(source.eventbridge(event) for event in conversation), other]:
        await clients.sns_client.publish(TopicArn=topic_arn, Message=json.dumps(message))
    wanted = {event.correlation_id for event in conversation}
    stop = asyncio.Event()
    worker = running.Worker(consumer, http_port=0)
    task = asyncio.create_task(worker.run(stop))
    try:
        assert await harness.wait_until(
            lambda: set(harness.accepted_correlation_ids(sink.accepted)) >= wanted, timeout=30
        ), "the published events did not reach the sink"
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=30)
    assert sorted(harness.accepted_correlation_ids(sink.accepted)) == sorted(wanted)
    # the agent event was dropped by the subscription's filter policy, not by the worker
    assert worker.metrics.value("fanout_events_filtered_total", queue=consumer.spec.queue.name) == 0


async def _topology_samples(port: int, namespace: str) -> dict[tuple[str, str, str], float]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/metrics") as response,
    ):
        text = await response.text()
    return {
        (sample.labels["consumer"], sample.labels["reason"], sample.labels["severity"]): sample.value
        for family in prometheus_client.parser.text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "fanout_operator_topology_findings" and sample.labels["namespace"] == namespace
    }
