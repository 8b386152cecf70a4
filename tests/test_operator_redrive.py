"""Declarative redrives: the request annotation's rules (pure), then the operator (in a thread)
running them against kmock's API server (or a cluster) and the moto server — run once,
progress in status and Events, a second request refused while one runs, a bad one reported,
and every Kubernetes call covered by the operator's RBAC rules."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from fanout_lab import harness
from fanout_lab.simulators import aws
from fanout_operator import kube, metrics, rbac, redrive_requests, status
from tests import dead_letters
from tests import operator_harness as h
from tests.test_operator_e2e import _consumer

pytestmark = pytest.mark.timeout(120)

# --- the rules -----------------------------------------------------------------------------


def done(key: str, state: status.RedriveState = status.RedriveState.SUCCEEDED) -> status.RedriveStatus:
    return status.RedriveStatus(request=key, state=state)


def test_a_new_request_starts_and_the_same_one_again_does_nothing() -> None:
    text = json.dumps({"id": "fix-1", "reasonClass": ["permanent"], "olderThan": "10m"})
    decision = redrive_requests.decide(text, None, running=None)
    assert decision.action is redrive_requests.Action.START and decision.key == "fix-1"
    assert decision.request is not None
    selection = decision.request.selection()
    assert selection.reason_classes == frozenset({"permanent"}) and selection.older_than_seconds == 600
    assert (
        redrive_requests.decide(text, done("fix-1"), running=None).action is redrive_requests.Action.NOTHING
    )
    invalid = done("fix-1", status.RedriveState.INVALID)
    assert redrive_requests.decide(text, invalid, running=None).action is redrive_requests.Action.NOTHING
    # Without an id, the text is the identity: the same text is the same request.
    anonymous = '{"reasonClass": ["poison"]}'
    key = redrive_requests.key_of(anonymous)
    assert key.startswith("sha256:") and key == redrive_requests.key_of(anonymous)
    assert (
        redrive_requests.decide(anonymous, done(key), running=None).action is redrive_requests.Action.NOTHING
    )


def test_a_run_left_running_by_a_stopped_operator_starts_again() -> None:
    text = '{"id": "fix-1"}'
    left = done("fix-1", status.RedriveState.RUNNING)
    assert redrive_requests.decide(text, left, running=None).action is redrive_requests.Action.START
    assert redrive_requests.decide(text, left, running="fix-1").action is redrive_requests.Action.NOTHING


def test_a_second_request_while_one_runs_is_refused_and_stays_refused() -> None:
    current = done("first", status.RedriveState.RUNNING)
    decision = redrive_requests.decide('{"id": "second"}', current, running="first")
    assert decision.action is redrive_requests.Action.REFUSE and "first is running" in decision.message
    refused = redrive_requests.refused(current, "second")
    assert (
        redrive_requests.decide('{"id": "second"}', refused, running="first").action
        is redrive_requests.Action.NOTHING
    )
    finished = refused.model_copy(update={"state": status.RedriveState.SUCCEEDED})
    assert (
        redrive_requests.decide('{"id": "second"}', finished, running=None).action
        is redrive_requests.Action.NOTHING
    )
    assert (
        redrive_requests.decide('{"id": "third"}', finished, running=None).action
        is redrive_requests.Action.START
    )


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("not json", "not JSON"),
        ("[1]", "expected a JSON object"),
        ('{"reasonClas": ["poison"]}', "reasonClas"),
        ('{"reasonClass": ["bogus"]}', "unknown reason class bogus"),
        ('{"olderThan": "soon"}', "olderThan"),
        ('{"rate": 0}', "rate"),
        ('{"eventType": "*.acw"}', "does not decode event bodies"),
    ],
)
def test_a_bad_request_is_invalid_and_says_why(text: str, named: str) -> None:
    decision = redrive_requests.decide(text, None, running=None)
    assert decision.action is redrive_requests.Action.INVALID
    assert named in decision.message


def test_other_status_writers_never_carry_the_redrive() -> None:
    """Only the redrive module writes status.redrive: a patch built from a stale copy of the
    status must not put back old progress."""
    current = status.FanoutConsumerStatus(replicas=2, redrive=done("fix-1", status.RedriveState.RUNNING))
    for written in (current, status.FanoutConsumerStatus()):  # nor removes it (a null would)
        patch = status.merge_patch(written)["status"]
        assert isinstance(patch, dict) and "redrive" not in patch
    assert status.parse({"replicas": 2, "redrive": {"request": "x", "state": "Running"}}).redrive is not None


def test_redrive_metrics_count_by_outcome_and_go_with_the_consumer() -> None:
    families = metrics.OperatorMetrics()
    recorder = families.consumer("calls", "crm-sync")
    recorder.redrive_running(True)
    recorder.redriven(metrics.RedriveOutcome.MOVED, 7)
    labels = {"namespace": "calls", "consumer": "crm-sync"}
    sample = families.registry.get_sample_value
    assert sample("fanout_operator_redrive_messages_total", {**labels, "outcome": "moved"}) == 7
    assert sample("fanout_operator_redrive_running", labels) == 1
    recorder.forget()
    assert sample("fanout_operator_redrive_messages_total", {**labels, "outcome": "moved"}) is None
    assert sample("fanout_operator_redrive_running", labels) is None


# --- the operator -----------------------------------------------------------------------------


async def test_the_operator_runs_a_request_once_refuses_a_second_and_reports_a_bad_one(
    kube_api: str, kube_client: kube.KubeClient, kube_namespace: str, sqs: Any, moto_server: aws.MotoServer
) -> None:
    client, namespace, eventually = kube_client, kube_namespace, h.eventually
    name = f"crm-{uuid.uuid4().hex[:6]}"
    source = await aws.create_queue(sqs, name, visibility=5)
    dead = await aws.create_queue(sqs, f"{name}-dlq", visibility=5)
    incident = await dead_letters.incident(
        sqs, dead_letter_url=dead, source_url=source, conversations=3, poison=1
    )
    manifest = _consumer(name, namespace, source)
    manifest["spec"]["deadLetter"] = {"queueUrl": dead}
    consumers = kube.collection_path("fanout.dev/v1alpha1", "fanoutconsumers", namespace)
    path = f"{consumers}/{name}"

    async def redrive_status() -> dict[str, Any]:
        found = await client.get(path)
        return dict(((found or {}).get("status") or {}).get("redrive") or {})

    def request(**fields: Any) -> dict[str, Any]:
        return {"metadata": {"annotations": {redrive_requests.ANNOTATION: json.dumps(fields)}}}

    async def events(reason: str) -> list[dict[str, Any]]:
        items = await client.list(kube.collection_path("v1", "events", namespace))
        return [e for e in items if e.get("reason") == reason]

    async def state_is(key: str, state: str) -> dict[str, Any] | None:
        current = await redrive_status()
        return current if current.get("request") == key and current.get("state") == state else None

    scope = ["--all-namespaces"] if kube_api == "kmock" else ["--namespace", namespace]
    with h.OperatorThread(h.operator_settings(*scope, "--standalone"), timeout=60):
        await client.create(consumers, manifest)

        # 1. Run once: the permanent dead letters go back; status and Events say so.
        await client.merge_patch(path, request(id="fix-1", reasonClass=["permanent"]))
        finished = await eventually(
            lambda: state_is("fix-1", "Succeeded"), "fix-1 succeeded", context=redrive_status
        )
        assert (finished["moved"], finished["skipped"]) == (3, 4)
        assert "half of sink.rateLimit 100/s" in finished["rateWhy"]
        moved = await harness.drain_queue(sqs, source)
        assert sorted(m["Body"] for m in moved) == sorted(item.body for item in incident.of("permanent"))
        assert await eventually(lambda: events("RedriveStarted"), "RedriveStarted event")
        assert await eventually(lambda: events("RedriveFinished"), "RedriveFinished event")

        # The same request again (a re-applied manifest) does nothing.
        await client.merge_patch(path, {"metadata": {"labels": {"touched": "yes"}}})
        await client.merge_patch(path, request(id="fix-1", reasonClass=["permanent"]))
        assert (await redrive_status())["startedAt"] == finished["startedAt"]

        # 2. A slow one runs; a second request meanwhile is refused, and stays refused after it.
        await client.merge_patch(path, request(id="slow", reasonClass=["exhausted"], rate=1))
        await eventually(lambda: state_is("slow", "Running"), "slow running", context=redrive_status)
        await client.merge_patch(path, request(id="second", reasonClass=["poison"]))
        refusal = await eventually(lambda: events("RedriveRefused"), "RedriveRefused event")
        assert refusal[0]["type"] == "Warning" and "slow is running" in refusal[0]["message"]
        slow = await eventually(
            lambda: state_is("slow", "Succeeded"), "slow succeeded", context=redrive_status
        )
        assert slow["moved"] == 3 and slow["refused"] == "second"
        visible, _ = await harness.queue_counts(sqs, dead)
        assert visible == 1  # the poison: the refused request never ran

        # 3. A bad request: reported, nothing moved.
        await client.merge_patch(path, request(id="bad", reasonClass=["bogus"]))
        invalid = await eventually(lambda: state_is("bad", "Invalid"), "bad invalid", context=redrive_status)
        assert "unknown reason class bogus" in invalid["message"]
        assert await eventually(lambda: events("InvalidRedriveRequest"), "InvalidRedriveRequest event")

        await client.delete(path)

    if kube_api == "kmock":
        made = {h.permission(method, p) for _, method, p in h.ApiServerEmulator.calls}
        made.discard(None)
        assert ("fanout.dev", "fanoutconsumers/status", "patch") in made
        assert sorted(p for p in made if p is not None and not rbac.allows(*p)) == []
