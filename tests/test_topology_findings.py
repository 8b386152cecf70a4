"""The topology rules, without AWS: a healthy topology has no finding; each trap has its reason.

Each test starts from :func:`healthy` — what AWS holds after ``provisioning`` built the
spec's topology — and breaks one thing. The same traps are built for real on moto in
tests/test_topology_aws.py; here the rules' edges are pinned (equal values, a policy that
reads an attribute only the publisher knows, an explicit Deny, AccessDenied).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from fanout_core import findings, policies, spec, topology
from fanout_lab import harness

ACCOUNT = "123456789012"
REGION = "us-east-1"
TOPIC = f"arn:aws:sns:{REGION}:{ACCOUNT}:genesys-interactions"
QUEUE_URL = f"https://sqs.{REGION}.amazonaws.com/{ACCOUNT}/genesys-crm"
QUEUE_ARN = f"arn:aws:sqs:{REGION}:{ACCOUNT}:genesys-crm"
DLQ_ARN = f"arn:aws:sqs:{REGION}:{ACCOUNT}:genesys-crm-dlq"
SUBSCRIPTION = f"{TOPIC}:0f0e"
PLACE = topology.Place(REGION)
Reason = findings.Reason


def consumer_spec(**sections: Any) -> spec.FanoutConsumerSpec:
    document = harness.manifest(queue_url=QUEUE_URL, sink_url="http://127.0.0.1:1/")
    document["spec"]["filter"] = {"eventTypes": ["v2.detail.events.conversation.*"]}
    document["spec"]["queue"]["visibilityTimeoutSeconds"] = 10  # twice the sink's timeout
    document["spec"]["topology"] = {"topicArn": TOPIC}
    for name, value in sections.items():
        document["spec"][name] = value
    return spec.parse_manifest(document).spec


def healthy(consumer: spec.FanoutConsumerSpec) -> tuple[topology.Desired, topology.Observed]:
    desired = topology.desired(consumer, owner="contact-center/crm-sync", place=PLACE)
    queue = topology.Queue(
        QUEUE_URL,
        {
            "QueueArn": QUEUE_ARN,
            "MessageRetentionPeriod": str(desired.queue_retention),
            "VisibilityTimeout": str(desired.visibility_timeout),
            "RedrivePolicy": desired.redrive_policy(DLQ_ARN),
            "Policy": desired.queue_policy(None, QUEUE_ARN) or "",
        },
    )
    dlq = topology.Queue(
        QUEUE_URL + "-dlq",
        {"QueueArn": DLQ_ARN, "MessageRetentionPeriod": str(desired.dead_letter_retention)},
    )
    subscription = topology.Subscription(SUBSCRIPTION, TOPIC, desired.subscription_attributes())
    observed = topology.Observed(
        queue=topology.Read.of(queue),
        dead_letter=topology.Read.of(dlq),
        subscriptions=topology.Read.of((subscription,)),
        topics={TOPIC: topology.Read.of(topology.Topic(TOPIC, {"FifoTopic": "false"}))},
    )
    return desired, observed


def reasons(
    consumer: spec.FanoutConsumerSpec, desired: topology.Desired, observed: topology.Observed
) -> list[str]:
    return [finding.reason for finding in findings.check(consumer, desired, observed).findings]


def with_queue_attributes(observed: topology.Observed, **changes: str | None) -> topology.Observed:
    queue = observed.queue.value
    assert queue is not None
    attributes = {**queue.attributes, **changes}
    kept = {name: value for name, value in attributes.items() if value is not None}
    return dataclasses.replace(observed, queue=topology.Read.of(topology.Queue(queue.url, kept)))


def with_subscription(observed: topology.Observed, **changes: str | None) -> topology.Observed:
    (subscription,) = observed.subscriptions.value or ()
    attributes = {**subscription.attributes, **changes}
    kept = {name: value for name, value in attributes.items() if value is not None}
    updated = topology.Subscription(subscription.arn, subscription.topic_arn, kept)
    return dataclasses.replace(observed, subscriptions=topology.Read.of((updated,)))


def test_what_provisioning_builds_has_no_finding() -> None:
    consumer = consumer_spec()
    report = findings.check(consumer, *healthy(consumer))
    assert report.ok, [f.line() for f in report.findings]
    assert report.worst is None


def test_a_queue_policy_without_the_topic_is_an_error_sns_drops_everything() -> None:
    consumer = consumer_spec()
    desired, observed = healthy(consumer)
    other = desired.queue_policy(None, QUEUE_ARN) or ""
    other = other.replace("genesys-interactions", "someone-else")
    for policy in (None, other):
        report = findings.check(consumer, desired, with_queue_attributes(observed, Policy=policy))
        (finding,) = report.findings
        assert (finding.reason, finding.severity) == (Reason.SNS_CANNOT_SEND, findings.Severity.ERROR)
        assert "FanoutSnsDelivery" in finding.fix and TOPIC in finding.fix


def test_an_explicit_deny_beats_the_allow_and_no_condition_is_too_broad() -> None:
    consumer = consumer_spec()
    desired, observed = healthy(consumer)
    allow = policies.sns_send_statement(QUEUE_ARN, TOPIC)
    deny = {**allow, "Sid": "NoSns", "Effect": "Deny", "Condition": {}}
    denied = json.dumps({"Statement": [allow, deny]})
    assert reasons(consumer, desired, with_queue_attributes(observed, Policy=denied)) == [
        Reason.SNS_CANNOT_SEND
    ]
    broad = json.dumps({"Statement": [{**allow, "Condition": {}}]})
    report = findings.check(consumer, desired, with_queue_attributes(observed, Policy=broad))
    assert [(f.reason, f.severity) for f in report.findings] == [
        (Reason.QUEUE_POLICY_ALLOWS_ANY_TOPIC, findings.Severity.WARNING)
    ]
    like = json.dumps(
        {"Statement": [{**allow, "Condition": {"ArnLike": {"aws:SourceArn": "arn:aws:sns:*:*:genesys-*"}}}]}
    )
    assert reasons(consumer, desired, with_queue_attributes(observed, Policy=like)) == []


def test_no_redrive_policy_is_an_error_and_its_fix_names_the_dead_letter_queue() -> None:
    consumer = consumer_spec()
    desired, observed = healthy(consumer)
    report = findings.check(consumer, desired, with_queue_attributes(observed, RedrivePolicy=None))
    (finding,) = report.findings
    assert finding.reason is Reason.NO_REDRIVE_POLICY and finding.severity is findings.Severity.ERROR
    assert DLQ_ARN in finding.fix


def test_a_redrive_target_that_does_not_exist_loses_what_it_moves() -> None:
    consumer = consumer_spec()
    desired, observed = healthy(consumer)
    gone = dataclasses.replace(observed, dead_letter=topology.Read(absent=True))
    assert reasons(consumer, desired, gone) == [Reason.DEAD_LETTER_QUEUE_MISSING]


@pytest.mark.parametrize(("max_receive_count", "expected"), [(4, True), (7, True), (8, False), (20, False)])
def test_max_receive_count_below_max_attempts_cuts_the_retries_short(
    max_receive_count: int, expected: bool
) -> None:
    consumer = consumer_spec()  # harness: retry.maxAttempts 8
    desired, observed = healthy(consumer)
    redrive = json.dumps({"deadLetterTargetArn": DLQ_ARN, "maxReceiveCount": max_receive_count})
    found = reasons(consumer, desired, with_queue_attributes(observed, RedrivePolicy=redrive))
    assert (found == [Reason.REDRIVE_BEFORE_RETRIES_EXHAUSTED]) is expected
    assert (findings.redrive_conflict(max_receive_count, consumer.retry) is not None) is expected


def test_a_declared_max_receive_count_below_max_attempts_is_found_in_the_spec_alone() -> None:
    consumer = consumer_spec(topology={"topicArn": TOPIC, "deadLetter": {"maxReceiveCount": 3}})
    assert [f.reason for f in findings.check_spec(consumer)] == [Reason.REDRIVE_BEFORE_RETRIES_EXHAUSTED]
    assert topology.max_receive_count(consumer_spec()) == 8 + spec.REDRIVE_HEADROOM_RECEIVES


@pytest.mark.parametrize(
    ("visibility", "sink_timeout", "expected"), [(6, 5, True), (9, 5, True), (10, 5, False), (60, 10, False)]
)
def test_visibility_must_hold_two_sink_timeouts(visibility: int, sink_timeout: float, expected: bool) -> None:
    document = harness.manifest(queue_url=QUEUE_URL, sink_url="http://127.0.0.1:1/")
    document["spec"]["queue"]["visibilityTimeoutSeconds"] = visibility
    document["spec"]["sink"]["timeoutSeconds"] = sink_timeout
    consumer = spec.parse_manifest(document).spec
    found = [f.reason for f in findings.check_spec(consumer)]
    assert (found == [Reason.VISIBILITY_TIMEOUT_TOO_SHORT]) is expected


@pytest.mark.parametrize(
    ("source", "dead_letter", "expected"),
    [
        (345_600, 345_600, True),
        (345_600, 86_400, True),
        (345_600, 345_601, False),
        (1_209_600, 1_209_600, False),
    ],
)
def test_dead_letter_retention_must_outlast_the_sources(
    source: int, dead_letter: int, expected: bool
) -> None:
    consumer = consumer_spec()
    desired, observed = healthy(consumer)
    observed = with_queue_attributes(observed, MessageRetentionPeriod=str(source))
    dlq = topology.Queue(
        QUEUE_URL + "-dlq", {"QueueArn": DLQ_ARN, "MessageRetentionPeriod": str(dead_letter)}
    )
    observed = dataclasses.replace(observed, dead_letter=topology.Read.of(dlq))
    assert (reasons(consumer, desired, observed) == [Reason.DEAD_LETTER_RETENTION_TOO_SHORT]) is expected


def test_a_filter_policy_that_drops_kept_events_is_an_error_naming_them() -> None:
    consumer = consumer_spec()
    desired, observed = healthy(consumer)
    narrow = json.dumps({"detail-type": ["v2.detail.events.conversation.{id}.acw"]})
    report = findings.check(consumer, desired, with_subscription(observed, FilterPolicy=narrow))
    (finding,) = report.findings
    assert finding.reason is Reason.FILTER_POLICY_DROPS_EVENTS and finding.severity is findings.Severity.ERROR
    assert "v2.detail.events.conversation." in finding.message
    assert "spec.topology.subscription.filterPolicy" in finding.fix


def test_no_filter_policy_is_paid_for_and_a_wider_one_differs() -> None:
    consumer = consumer_spec()
    desired, observed = healthy(consumer)
    no_policy = with_subscription(observed, FilterPolicy=None, FilterPolicyScope=None)
    assert reasons(consumer, desired, no_policy) == [Reason.FILTER_POLICY_MISSING]
    wider = json.dumps({"detail-type": [{"prefix": "v2."}]})
    assert reasons(consumer, desired, with_subscription(observed, FilterPolicy=wider)) == [
        Reason.FILTER_POLICY_DIFFERS
    ]
    # the same document read in the wrong scope lets nothing through: the kept events are dropped
    wrong_scope = with_subscription(observed, FilterPolicyScope="MessageAttributes")
    assert reasons(consumer, desired, wrong_scope) == [Reason.FILTER_POLICY_DROPS_EVENTS]


def test_a_policy_on_attributes_only_the_publisher_knows_is_judged_only_when_declared() -> None:
    everything = consumer_spec(filter={})
    desired, observed = healthy(everything)
    category = json.dumps({"eventCategory": ["conversation"]})
    observed = with_subscription(observed, FilterPolicy=category, FilterPolicyScope="MessageAttributes")
    # spec.filter keeps everything, so any policy drops something the consumer wants
    assert reasons(everything, desired, observed) == [Reason.FILTER_POLICY_DROPS_EVENTS]
    declared = consumer_spec(
        filter={},
        topology={"topicArn": TOPIC, "subscription": {"filterPolicy": {"eventCategory": ["conversation"]}}},
    )
    desired = topology.desired(declared, owner="contact-center/crm-sync", place=PLACE)
    assert reasons(declared, desired, observed) == []
    # {} declares "no policy": the worker's filter alone decides, so a policy drops what it wants
    none = consumer_spec(topology={"topicArn": TOPIC, "subscription": {"filterPolicy": {}}})
    desired = topology.desired(none, owner="contact-center/crm-sync", place=PLACE)
    assert desired.filter_policy is None
    assert reasons(none, desired, observed) == [Reason.FILTER_POLICY_DROPS_EVENTS]
    # with spec.filter set, a policy on an attribute only the publisher knows cannot be shown to drop
    # kept events: it is a warning that it differs from the derived one, not an error
    filtered = consumer_spec()
    desired = topology.desired(filtered, owner="contact-center/crm-sync", place=PLACE)
    report = findings.check(filtered, desired, observed)
    assert [f.reason for f in report.findings] == [Reason.FILTER_POLICY_DIFFERS]


def test_raw_delivery_unlike_the_spec_is_a_warning_that_says_what_changes() -> None:
    consumer = consumer_spec()
    desired, observed = healthy(consumer)
    report = findings.check(consumer, desired, with_subscription(observed, RawMessageDelivery="false"))
    (finding,) = report.findings
    assert finding.reason is Reason.RAW_DELIVERY_MISMATCH and finding.severity is findings.Severity.WARNING
    assert "envelope" in finding.message and "RawMessageDelivery --attribute-value true" in finding.fix


def test_fifo_topic_into_standard_queue_and_the_reverse() -> None:
    consumer = consumer_spec()
    desired, observed = healthy(consumer)
    fifo_topic = {TOPIC: topology.Read.of(topology.Topic(TOPIC, {"FifoTopic": "true"}))}
    report = findings.check(consumer, desired, dataclasses.replace(observed, topics=fifo_topic))
    assert [(f.reason, f.severity) for f in report.findings] == [
        (Reason.FIFO_MISMATCH, findings.Severity.WARNING)
    ]
    fifo_queue = with_queue_attributes(observed, FifoQueue="true")
    report = findings.check(consumer, desired, fifo_queue)
    assert [(f.reason, f.severity) for f in report.findings] == [
        (Reason.FIFO_MISMATCH, findings.Severity.ERROR)
    ]


def _key_policy(*statements: dict[str, Any]) -> str:
    root = {
        "Sid": "Root",
        "Effect": "Allow",
        "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:root"},
        "Action": "kms:*",
    }
    return json.dumps({"Version": "2012-10-17", "Statement": [root, *statements]})


def test_a_kms_key_sns_may_not_use_is_an_error() -> None:
    consumer = consumer_spec()
    desired, observed = healthy(consumer)
    encrypted = with_queue_attributes(observed, KmsMasterKeyId="alias/fanout")
    key = topology.Key(
        "arn:aws:kms:us-east-1:123456789012:key/k1", "CUSTOMER", topology.Read.of(_key_policy())
    )
    report = findings.check(consumer, desired, dataclasses.replace(encrypted, key=topology.Read.of(key)))
    (finding,) = report.findings
    assert finding.reason is Reason.KMS_KEY_DENIES_SNS
    assert "kms:GenerateDataKey and kms:Decrypt" in finding.message
    fixed = topology.Key(
        key.key_id, "CUSTOMER", topology.Read.of(_key_policy(policies.key_statement_for_sns()))
    )
    assert reasons(consumer, desired, dataclasses.replace(encrypted, key=topology.Read.of(fixed))) == []
    aws_managed = topology.Key("arn:aws:kms:us-east-1:123456789012:key/aws", "AWS", topology.Read())
    found = reasons(consumer, desired, dataclasses.replace(encrypted, key=topology.Read.of(aws_managed)))
    assert found == [Reason.AWS_MANAGED_KEY_BLOCKS_SNS]


def test_the_idempotency_table_key_schema_and_ttl() -> None:
    consumer = consumer_spec(idempotency={"store": "dynamodb", "table": "crm-idempotency"})
    desired, observed = healthy(consumer)
    good = topology.Table("crm-idempotency", (("id", "S", "HASH"),), "expiration")
    assert reasons(consumer, desired, dataclasses.replace(observed, table=topology.Read.of(good))) == []
    keyed = dataclasses.replace(good, key_schema=(("pk", "S", "HASH"), ("sk", "S", "RANGE")))
    no_ttl = dataclasses.replace(good, ttl_attribute=None)
    for table, reason in (
        (keyed, Reason.IDEMPOTENCY_TABLE_KEY_SCHEMA),
        (no_ttl, Reason.IDEMPOTENCY_TABLE_TTL),
    ):
        assert reasons(consumer, desired, dataclasses.replace(observed, table=topology.Read.of(table))) == [
            reason
        ]
    missing = dataclasses.replace(observed, table=topology.Read(absent=True))
    assert reasons(consumer, desired, missing) == [Reason.IDEMPOTENCY_TABLE_MISSING]


def test_not_subscribed_and_a_missing_queue() -> None:
    consumer = consumer_spec()
    desired, observed = healthy(consumer)
    unsubscribed = dataclasses.replace(observed, subscriptions=topology.Read.of(()))
    assert reasons(consumer, desired, unsubscribed) == [Reason.NOT_SUBSCRIBED]
    assert reasons(consumer, desired, topology.Observed(queue=topology.Read(absent=True))) == [
        Reason.QUEUE_MISSING
    ]


def test_access_denied_is_reported_once_and_the_rest_is_still_checked() -> None:
    consumer = consumer_spec()
    desired, observed = healthy(consumer)
    denied = topology.Denied("kms:DescribeKey", "alias/fanout", "AccessDeniedException")
    observed = with_queue_attributes(observed, KmsMasterKeyId="alias/fanout", RedrivePolicy=None)
    report = findings.check(
        consumer, desired, dataclasses.replace(observed, key=topology.Read(denied=denied))
    )
    assert sorted(f.reason for f in report.findings) == [Reason.NO_REDRIVE_POLICY, Reason.READ_DENIED]
    (unknown,) = [f for f in report.findings if f.severity is findings.Severity.UNKNOWN]
    assert "kms:DescribeKey" in unknown.fix and unknown.resource == "alias/fanout"
    assert report.worst is findings.Severity.ERROR
