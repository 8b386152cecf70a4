"""The operator's topology loop: TopologyReady, status.topology, Events, the metric; and, end to end,
a FanoutConsumer with ``spec.topology.manage: true`` applied to an empty AWS account (a moto
server of its own) ends with a working pipe.

The end-to-end test runs the real operator (``kopf.testing.KopfRunner`` with the console
script's arguments) against kmock's Kubernetes API (tests/test_operator_e2e.py's harness).
kmock runs no pods, so the worker the operator's Deployment would run is run here, in
process, from the same manifest.
"""

from __future__ import annotations

import asyncio
import json
import pathlib
import uuid
from collections.abc import Iterator
from typing import Any

import aiohttp
import kopf
import kopf.testing
import prometheus_client.parser
import pytest

from fanout_core import awsclients, findings, inspecting, topology
from fanout_lab import harness
from fanout_lab.simulators import aws, genesys, webhook
from fanout_operator import assessing, cli, kube, status
from tests import test_operator_e2e as operator_e2e
from workers import running

ACCOUNT = "123456789012"
Reason = findings.Reason


def _finding(reason: Reason, severity: findings.Severity, resource: str = "q") -> findings.Finding:
    return findings.Finding(reason, severity, resource, f"{reason} happened.", "do something.")


def test_no_finding_is_ready_and_provisioning_is_announced_once() -> None:
    created = (topology.Resource(topology.Kind.QUEUE, "q"),)
    done = topology.Provisioned(
        created=created, changes=("created queue q",), queue_arn="a", dead_letter_url="d"
    )
    outcome = assessing.assess(findings.Report(()), provisioned=done, previous=None, now=0)
    assert (outcome.state, outcome.reason) == (True, assessing.VERIFIED)
    assert outcome.announcement == "created queue q"
    assert [(r.kind, r.id) for r in outcome.topology.created] == [("queue", "q")]
    again = assessing.assess(
        findings.Report(()),
        provisioned=topology.Provisioned(created, (), "a", "d"),
        previous=outcome.topology,
        now=1,
    )
    assert again.announcement is None
    assert len(again.topology.created) == 1


def test_the_condition_takes_the_most_severe_reason_and_new_findings_warn_once() -> None:
    report = findings.Report(
        (
            _finding(Reason.FILTER_POLICY_MISSING, findings.Severity.WARNING),
            _finding(Reason.SNS_CANNOT_SEND, findings.Severity.ERROR),
        )
    )
    first = assessing.assess(report, provisioned=None, previous=None, now=0)
    assert (first.state, first.reason) == (False, "SnsCannotSendToQueue")
    assert "FilterPolicyMissing: " in first.message and "Fix: do something." in first.message
    assert [w.reason for w in first.warnings] == ["FilterPolicyMissing", "SnsCannotSendToQueue"]
    assert first.counts == {("FilterPolicyMissing", "warning"): 1, ("SnsCannotSendToQueue", "error"): 1}
    second = assessing.assess(report, provisioned=None, previous=first.topology, now=1)
    assert second.warnings == ()
    unverified = findings.Report((_finding(Reason.READ_DENIED, findings.Severity.UNKNOWN),))
    assert assessing.assess(unverified, provisioned=None, previous=None, now=0).state is None


def test_a_failed_check_is_unknown_and_keeps_the_last_findings_without_repeating_them() -> None:
    report = findings.Report((_finding(Reason.NO_REDRIVE_POLICY, findings.Severity.ERROR),))
    before = assessing.assess(report, provisioned=None, previous=None, now=0)
    failed = assessing.check_failed("sqs:GetQueueAttributes on q failed: Throttling", before.topology)
    assert (failed.state, failed.reason) == (None, assessing.CHECK_FAILED)
    assert failed.topology == before.topology and failed.warnings == ()
    assert failed.counts == {("NoRedrivePolicy", "error"): 1}


def test_unknown_is_a_condition_status_the_status_model_keeps() -> None:
    conditions = status.set_condition(
        [], status.ConditionType.TOPOLOGY_READY, None, "R", "m", now=0, generation=1
    )
    assert conditions[0].status == "Unknown"
    parsed = status.parse({"conditions": [c.model_dump(by_alias=True) for c in conditions]})
    assert parsed.conditions[0].type is status.ConditionType.TOPOLOGY_READY


# ----------------------------------------------------------------------------- end to end


@pytest.fixture
def kmock_api(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    with operator_e2e.KmockCluster() as cluster:
        monkeypatch.setenv("KUBECONFIG", str(cluster.kubeconfig(tmp_path)))
        yield


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
    kmock_api: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    namespace = f"topo-{uuid.uuid4().hex[:6]}"
    metrics_port = aws.free_port()
    for variable, value in cli.environment(
        ["--metrics-port", str(metrics_port), "--metrics-address", "127.0.0.1"]
    ).items():
        monkeypatch.setenv(variable, value)
    monkeypatch.setenv("FANOUT_TOPOLOGY_INTERVAL", "1")
    info = kopf.login_with_kubeconfig(settings=kopf.OperatorSettings())
    assert info is not None
    client = kube.KubeClient(kube.Credentials(info), user_agent=operator_e2e.TEST_AGENT)
    consumers = kube.collection_path("fanout.dev/v1alpha1", "fanoutconsumers", namespace)

    async def topology_condition(name: str) -> dict[str, Any] | None:
        found = await client.get(f"{consumers}/{name}")
        conditions = ((found or {}).get("status") or {}).get("conditions", [])
        return next((c for c in conditions if c["type"] == "TopologyReady"), None)

    async def condition_is(name: str, expected: str, reason: str) -> dict[str, Any] | None:
        found = await topology_condition(name)
        return found if found and (found["status"], found["reason"]) == (expected, reason) else None

    async def events(name: str, reason: str) -> list[dict[str, Any]]:
        items = await client.list(kube.collection_path("v1", "events", namespace))
        return [e for e in items if e["involvedObject"]["name"] == name and e["reason"] == reason]

    try:
        with aws.MotoServer() as server, aws.environment(server.environment()):
            async with awsclients.open_clients() as clients, webhook.WebhookSimulator() as sink:
                topic_arn = str(
                    (await clients.sns_client.create_topic(Name="genesys-interactions"))["TopicArn"]
                )
                queue_url = f"{server.endpoint_url}/{ACCOUNT}/crm-sync"
                managed = {"manage": True, "topicArn": topic_arn, "deletionPolicy": "Delete"}
                document = _manifest("crm-sync", namespace, queue_url, sink.url, managed)
                arguments = cli.kopf_arguments(["--all-namespaces", "--standalone", "--liveness", ""])
                with kopf.testing.KopfRunner(arguments, timeout=60):
                    await client.create(consumers, document)
                    ready = await operator_e2e.eventually(
                        lambda: condition_is("crm-sync", "True", "Verified"), "TopologyReady", timeout=30
                    )
                    assert ready["message"]
                    assert await operator_e2e.eventually(
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

                    assert await operator_e2e.eventually(resubscribed, "subscription repaired")

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
                    broken = await operator_e2e.eventually(
                        lambda: condition_is("siem-audit", "False", "NoRedrivePolicy"), "TopologyReady False"
                    )
                    assert (
                        "NotSubscribed: " in broken["message"]
                        and "SnsCannotSendToQueue: " in broken["message"]
                    )
                    (warning,) = await operator_e2e.eventually(
                        lambda: events("siem-audit", "NoRedrivePolicy"), "Warning Event"
                    )
                    assert (
                        warning["type"] == "Warning"
                        and "Fix: aws sqs set-queue-attributes" in warning["message"]
                    )
                    samples = await operator_e2e.eventually(
                        lambda: _topology_samples(metrics_port, namespace), "the findings metric"
                    )
                    assert samples[("siem-audit", "NoRedrivePolicy", "error")] == 1
                    assert not [key for key in samples if key[0] == "crm-sync"]

                    # deletionPolicy Delete: what the operator created goes with the consumer.
                    await client.delete(f"{consumers}/crm-sync")
                    await operator_e2e.eventually(
                        lambda: operator_e2e._absent(client, f"{consumers}/crm-sync"), "FanoutConsumer gone"
                    )
                    with pytest.raises(awsclients.AwsError):
                        await inspecting.queue_state(clients, queue_url)
                    assert await inspecting.subscriptions_to(clients, queue.arn, topic_arn) == ()
                    # a verify-only consumer never deletes anything
                    await client.delete(f"{consumers}/siem-audit")
                    await operator_e2e.eventually(
                        lambda: operator_e2e._absent(client, f"{consumers}/siem-audit"), "siem-audit gone"
                    )
                    assert (
                        await inspecting.queue_state(clients, f"{server.endpoint_url}/{ACCOUNT}/siem-audit")
                    ).arn
    finally:
        await client.close()


async def _publish_and_consume(clients: awsclients.Clients, topic_arn: str, consumer: Any, sink: Any) -> None:
    source = genesys.Generator(seed=21)
    conversation = source.conversation(start_ms=1_741_964_966_000, length=4)
    other = source.eventbridge(source.conversation(start_ms=1_741_964_966_000, length=1)[0])
    other["detail-type"] = "v2.users.{id}.routingStatus"  # an agent event: the filter policy drops it
    for message in [*(source.eventbridge(event) for event in conversation), other]:
        await clients.sns_client.publish(TopicArn=topic_arn, Message=json.dumps(message))
    wanted = {event.correlation_id for event in conversation}
    stop = asyncio.Event()
    task = asyncio.create_task(running.Worker(consumer, http_port=0).run(stop))
    try:
        assert await harness.wait_until(
            lambda: set(harness.accepted_correlation_ids(sink.accepted)) >= wanted, timeout=30
        ), "the published events did not reach the sink"
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=30)
    assert sorted(harness.accepted_correlation_ids(sink.accepted)) == sorted(wanted)


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
